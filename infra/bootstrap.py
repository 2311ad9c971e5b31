"""Create visionq's resources; idempotent, safe to re-run, any endpoint (moto, LocalStack, AWS).

Bucket ─(s3:ObjectCreated:* on the upload prefix)─▶ queue ─(maxReceiveCount)─▶ dead-letter queue;
the jobs table (on-demand, TTL, by-object index, point-in-time recovery); the PostgreSQL schema, by
applying the pending migrations of ``infra/migrations/`` (``visionq.stores.migrations``).

The settings of these resources (notification events and prefix, redrive, visibility timeout,
retention, the table's keys, indexes and TTL) are read from ``template.yaml``, the AWS deployment
(``infra/template_settings.py``): one definition for the local stack and the cloud. A caller may
override the prefix, redrive and visibility timeout (the tests shorten them); names are its own.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from infra.template_settings import TemplateSettings, template_settings
from visionq.stores.migrations import Migration, current_version, discover_migrations, migrate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackNames:
    bucket: str
    queue: str
    jobs_table: str
    # Defaults: what template.yaml declares.
    upload_prefix: str = field(default_factory=lambda: template_settings().upload_prefix)
    max_receive_count: int = field(default_factory=lambda: template_settings().max_receive_count)
    visibility_timeout: int = field(default_factory=lambda: template_settings().visibility_timeout)

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}-dlq"

    @property
    def notify_queue(self) -> str:
        return f"{self.queue}-notify"


@dataclass(frozen=True)
class StackResources:
    bucket: str
    queue_url: str
    dead_letter_queue_url: str
    jobs_table: str
    notify_queue_url: str


def bootstrap_aws(
    names: StackNames, *, s3: Any, sqs: Any, dynamodb: Any, settings: TemplateSettings | None = None
) -> StackResources:
    """Create (or bring up to date) the bucket, its notification, the queues and the jobs table as
    ``settings`` (default: template.yaml's) declare them, under ``names``."""
    tpl = settings or template_settings()
    encryption = {"SqsManagedSseEnabled": "true"} if tpl.sqs_managed_sse else {}
    dlq_url = _ensure_queue(
        sqs, names.dead_letter_queue, {"MessageRetentionPeriod": str(tpl.dead_letter_retention_seconds), **encryption}
    )
    dlq_arn = _queue_arn(sqs, dlq_url)
    queue_url = _ensure_queue(
        sqs,
        names.queue,
        {
            "VisibilityTimeout": str(names.visibility_timeout),
            "MessageRetentionPeriod": str(tpl.queue_retention_seconds),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": names.max_receive_count}),
            **encryption,
        },
    )
    queue_arn = _queue_arn(sqs, queue_url)
    sqs.set_queue_attributes(
        QueueUrl=queue_url, Attributes={"Policy": json.dumps(queue_policy(queue_arn, names.bucket))}
    )
    _ensure_bucket(s3, names.bucket)
    if tpl.cors_rules:  # the console's browser uploads (PUT replaces the rules: idempotent)
        s3.put_bucket_cors(Bucket=names.bucket, CORSConfiguration={"CORSRules": [dict(r) for r in tpl.cors_rules]})
    s3.put_bucket_notification_configuration(
        Bucket=names.bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "visionq-uploads",
                    "QueueArn": queue_arn,
                    "Events": list(tpl.notification_events),
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": names.upload_prefix}]}},
                }
            ]
        },
    )
    notify_url = _ensure_queue(
        sqs,
        names.notify_queue,
        {
            "VisibilityTimeout": str(tpl.notify_visibility_timeout),
            "MessageRetentionPeriod": str(tpl.notify_retention_seconds),
            **encryption,
        },
    )
    ensure_jobs_table(dynamodb, names.jobs_table, tpl)
    return StackResources(
        bucket=names.bucket,
        queue_url=queue_url,
        dead_letter_queue_url=dlq_url,
        jobs_table=names.jobs_table,
        notify_queue_url=notify_url,
    )


def _add_missing_indexes(dynamodb: Any, table: str, tpl: TemplateSettings) -> None:
    """A table made by an older version gets the indexes the template has added since (one per
    UpdateTable call, as DynamoDB requires; each is built in the background)."""
    existing = {
        index["IndexName"]
        for index in dynamodb.describe_table(TableName=table)["Table"].get("GlobalSecondaryIndexes", [])
    }
    for index in tpl.table.global_secondary_indexes:
        if index["IndexName"] in existing:
            continue
        dynamodb.update_table(
            TableName=table,
            AttributeDefinitions=[dict(a) for a in tpl.table.attribute_definitions],
            GlobalSecondaryIndexUpdates=[{"Create": dict(index)}],
        )
        _wait_for_index(dynamodb, table, index["IndexName"])


def _wait_for_index(dynamodb: Any, table: str, name: str, *, timeout: float = 1800) -> None:
    """DynamoDB builds one new index at a time: the next UpdateTable waits until this one is ACTIVE."""
    deadline = time.monotonic() + timeout
    while True:
        indexes = dynamodb.describe_table(TableName=table)["Table"].get("GlobalSecondaryIndexes", [])
        status = next((i.get("IndexStatus") for i in indexes if i["IndexName"] == name), None)
        if status in (None, "ACTIVE"):  # None: an emulator that reports no status
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the jobs table's index {name} was not built within {timeout:.0f} s")
        time.sleep(5)


def queue_policy(queue_arn: str, bucket: str) -> dict[str, Any]:
    """The work queue's policy, as template.yaml's JobQueuePolicy: S3 may send to it from this
    bucket of this account only (on AWS, S3 checks it when the notification is configured)."""
    partition, account = queue_arn.split(":")[1], queue_arn.split(":")[4]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "UploadBucketOnly",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {
                    "ArnLike": {"aws:SourceArn": f"arn:{partition}:s3:::{bucket}"},
                    "StringEquals": {"aws:SourceAccount": account},
                },
            },
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "sqs:*",
                "Resource": queue_arn,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
        ],
    }


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


def ensure_jobs_table(dynamodb: Any, table: str, tpl: TemplateSettings | None = None) -> None:
    """The jobs table as the template declares it (unit tests make it in moto's in-process mock)."""
    tpl = tpl or template_settings()
    try:
        dynamodb.create_table(TableName=table, **tpl.table.create_table_kwargs())
        dynamodb.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
        _add_missing_indexes(dynamodb, table, tpl)
    if tpl.table.ttl_attribute:
        ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            dynamodb.update_time_to_live(
                TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": tpl.table.ttl_attribute}
            )
    if tpl.table.point_in_time_recovery:
        backups = dynamodb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
        pitr = backups.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus")
        if pitr != "ENABLED":
            dynamodb.update_continuous_backups(
                TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
            )
