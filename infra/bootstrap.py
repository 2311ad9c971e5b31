"""Create visionq's resources; idempotent, safe to re-run, any endpoint (moto, LocalStack, AWS).

Bucket ─(s3:ObjectCreated:* on the upload prefix)─▶ queue ─(maxReceiveCount)─▶ dead-letter queue;
the jobs table (on-demand, TTL, by-object index); the PostgreSQL schema, by applying the pending
migrations of ``infra/migrations/`` (``visionq.stores.migrations``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from visionq.config import DEFAULT_MAX_RECEIVE_COUNT, DEFAULT_UPLOAD_PREFIX, DEFAULT_VISIBILITY_TIMEOUT
from visionq.stores.job_store import BY_OBJECT_INDEX
from visionq.stores.migrations import Migration, current_version, discover_migrations, migrate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackNames:
    bucket: str
    queue: str
    jobs_table: str
    upload_prefix: str = DEFAULT_UPLOAD_PREFIX
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}-dlq"


@dataclass(frozen=True)
class StackResources:
    bucket: str
    queue_url: str
    dead_letter_queue_url: str
    jobs_table: str


def bootstrap_aws(names: StackNames, *, s3: Any, sqs: Any, dynamodb: Any) -> StackResources:
    dlq_url = _ensure_queue(sqs, names.dead_letter_queue, {"MessageRetentionPeriod": "1209600"})
    dlq_arn = _queue_arn(sqs, dlq_url)
    queue_url = _ensure_queue(
        sqs,
        names.queue,
        {
            "VisibilityTimeout": str(names.visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": names.max_receive_count}),
        },
    )
    queue_arn = _queue_arn(sqs, queue_url)
    # On AWS, S3 may only send to the queue if its policy allows the bucket to.
    sqs.set_queue_attributes(
        QueueUrl=queue_url,
        Attributes={
            "Policy": json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "s3.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": queue_arn,
                            "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{names.bucket}"}},
                        }
                    ],
                }
            )
        },
    )
    _ensure_bucket(s3, names.bucket)
    s3.put_bucket_notification_configuration(
        Bucket=names.bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "visionq-uploads",
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": names.upload_prefix}]}},
                }
            ]
        },
    )
    _ensure_jobs_table(dynamodb, names.jobs_table)
    return StackResources(
        bucket=names.bucket, queue_url=queue_url, dead_letter_queue_url=dlq_url, jobs_table=names.jobs_table
    )


@dataclass(frozen=True)
class SchemaReport:
    """What :func:`bootstrap_database` did: the migrations it applied, and the version now."""

    applied: list[Migration] = field(default_factory=list)
    version: int = 0

    def __str__(self) -> str:
        if not self.applied:
            return f"PostgreSQL schema: up to date at version {self.version}"
        names = ", ".join(m.filename.removesuffix(".sql") for m in self.applied)
        return f"PostgreSQL schema: applied {names}; now at version {self.version}"


def bootstrap_database(database_url: str) -> SchemaReport:
    """Bring the results database to the newest schema (the pending migrations); safe to run
    concurrently and again."""
    by_version = {m.version: m for m in discover_migrations()}
    applied = migrate(database_url)
    report = SchemaReport([by_version[v] for v in applied], current_version(database_url))
    logger.info("%s", report)
    return report


def _ensure_queue(sqs: Any, name: str, attributes: dict[str, str]) -> str:
    try:
        url: str = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except ClientError as exc:
        # Exists with other attributes: adopt it and bring its attributes to what we want.
        if exc.response["Error"]["Code"] not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def _queue_arn(sqs: Any, url: str) -> str:
    arn: str = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return arn


def _ensure_bucket(s3: Any, bucket: str) -> None:
    region = s3.meta.region_name
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def _ensure_jobs_table(dynamodb: Any, table: str) -> None:
    try:
        dynamodb.create_table(
            TableName=table,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "job_id", "AttributeType": "S"},
                {"AttributeName": "object_id", "AttributeType": "S"},
                {"AttributeName": "created_at", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": BY_OBJECT_INDEX,
                    "KeySchema": [
                        {"AttributeName": "object_id", "KeyType": "HASH"},
                        {"AttributeName": "created_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
        )
        dynamodb.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        dynamodb.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
        )
