"""What ``infra/bootstrap.py`` creates (the local stack) is what ``template.yaml`` declares (AWS).

The template is read here on its own (raw YAML, parameters' defaults), not through
``infra.template_settings``, and compared with what the bootstrap actually made in moto (in-process).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.bootstrap import StackNames, bootstrap_aws
from infra.template_settings import load_template, template_settings
from visionq import config
from visionq.stores.job_store import BY_OBJECT_INDEX

TEMPLATE = load_template()
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
PARAMETERS: dict[str, Any] = TEMPLATE["Parameters"]


def props(logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = RESOURCES[logical_id]["Properties"]
    return properties


def default(ref: dict[str, Any]) -> Any:
    parameter = PARAMETERS[ref["Ref"]]
    return int(parameter["Default"]) if parameter["Type"] == "Number" else parameter["Default"]


def in_map(value: Any) -> Any:
    if isinstance(value, dict) and "Fn::FindInMap" in value:
        name, top, key = value["Fn::FindInMap"]
        return TEMPLATE["Mappings"][name][top][key]
    return value


@pytest.fixture
def created() -> Iterator[dict[str, Any]]:
    with mock_aws():
        region = "us-east-1"
        s3, sqs, dynamodb = (boto3.client(n, region_name=region) for n in ("s3", "sqs", "dynamodb"))
        names = StackNames(bucket="parity-uploads", queue="parity-jobs", jobs_table="parity-jobs")
        resources = bootstrap_aws(names, s3=s3, sqs=sqs, dynamodb=dynamodb)
        # Twice: idempotent, and the second run must not change anything.
        bootstrap_aws(names, s3=s3, sqs=sqs, dynamodb=dynamodb)
        yield {
            "names": names,
            "queue": sqs.get_queue_attributes(QueueUrl=resources.queue_url, AttributeNames=["All"])["Attributes"],
            "dlq": sqs.get_queue_attributes(QueueUrl=resources.dead_letter_queue_url, AttributeNames=["All"])[
                "Attributes"
            ],
            "notification": s3.get_bucket_notification_configuration(Bucket=names.bucket),
            "cors": s3.get_bucket_cors(Bucket=names.bucket)["CORSRules"],
            "table": dynamodb.describe_table(TableName=names.jobs_table)["Table"],
            "ttl": dynamodb.describe_time_to_live(TableName=names.jobs_table)["TimeToLiveDescription"],
            "backups": dynamodb.describe_continuous_backups(TableName=names.jobs_table)["ContinuousBackupsDescription"],
        }


def test_queues_as_declared(created: dict[str, Any]) -> None:
    queue, dlq = created["queue"], created["dlq"]
    declared = props("JobQueue")
    assert int(queue["VisibilityTimeout"]) == declared["VisibilityTimeout"]
    assert int(queue["MessageRetentionPeriod"]) == declared["MessageRetentionPeriod"]
    redrive = json.loads(queue["RedrivePolicy"])
    assert redrive["maxReceiveCount"] == default(declared["RedrivePolicy"]["maxReceiveCount"])
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert declared["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert int(dlq["MessageRetentionPeriod"]) == props("DeadLetterQueue")["MessageRetentionPeriod"]
    for attributes, logical_id in ((queue, "JobQueue"), (dlq, "DeadLetterQueue")):
        assert (attributes.get("SqsManagedSseEnabled") == "true") is props(logical_id)["SqsManagedSseEnabled"]


def test_queue_policy_as_declared(created: dict[str, Any]) -> None:
    """moto's CloudFormation skips queue policies: compare the statements' shape here."""
    policy = json.loads(created["queue"]["Policy"])
    declared = props("JobQueuePolicy")["PolicyDocument"]["Statement"]
    assert [s["Sid"] for s in policy["Statement"]] == [s["Sid"] for s in declared]
    for made, written in zip(policy["Statement"], declared, strict=True):
        assert (made["Effect"], made["Action"], made["Principal"]) == (
            written["Effect"],
            written["Action"],
            written["Principal"],
        )
        assert {k: sorted(v) for k, v in made.get("Condition", {}).items()} == {
            k: sorted(v) for k, v in written.get("Condition", {}).items()
        }
    allow = policy["Statement"][0]["Condition"]
    assert allow["ArnLike"]["aws:SourceArn"] == f"arn:aws:s3:::{created['names'].bucket}"
    assert allow["StringEquals"]["aws:SourceAccount"] == created["queue"]["QueueArn"].split(":")[4]


def test_notification_as_declared(created: dict[str, Any]) -> None:
    (made,) = created["notification"]["QueueConfigurations"]
    (declared,) = props("UploadBucket")["NotificationConfiguration"]["QueueConfigurations"]
    assert made["QueueArn"] == created["queue"]["QueueArn"]
    assert made["Events"] == [declared["Event"]] == ["s3:ObjectCreated:*"]
    (rule,) = declared["Filter"]["S3Key"]["Rules"]
    assert made["Filter"]["Key"]["FilterRules"] == [{"Name": rule["Name"], "Value": default(rule["Value"])}]


def test_bucket_cors_as_declared(created: dict[str, Any]) -> None:
    declared = TEMPLATE["Resources"]["UploadBucket"]["Properties"]["CorsConfiguration"]["CorsRules"]
    assert len(created["cors"]) == len(declared) == 1
    (rule,), (want,) = created["cors"], declared
    assert (rule["ID"], rule["AllowedOrigins"], rule["AllowedMethods"]) == (
        want["Id"],
        want["AllowedOrigins"],
        want["AllowedMethods"],
    )
    assert rule["MaxAgeSeconds"] == want["MaxAge"]


def test_table_as_declared(created: dict[str, Any]) -> None:
    table, declared = created["table"], props("JobsTable")
    assert table["BillingModeSummary"]["BillingMode"] == declared["BillingMode"] == "PAY_PER_REQUEST"
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(declared["AttributeDefinitions"], key=str)
    assert table["KeySchema"] == declared["KeySchema"]
    made_indexes = {
        i["IndexName"]: {"KeySchema": i["KeySchema"], "Projection": i["Projection"]}
        for i in table["GlobalSecondaryIndexes"]
    }
    declared_indexes = {
        i["IndexName"]: {"KeySchema": i["KeySchema"], "Projection": i["Projection"]}
        for i in declared["GlobalSecondaryIndexes"]
    }
    assert made_indexes == declared_indexes
    assert BY_OBJECT_INDEX in declared_indexes  # the index the job store queries
    assert created["ttl"]["TimeToLiveStatus"] in ("ENABLED", "ENABLING")
    assert created["ttl"]["AttributeName"] == declared["TimeToLiveSpecification"]["AttributeName"] == "expires_at"
    assert declared["TimeToLiveSpecification"]["Enabled"] is True
    pitr = created["backups"]["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"]
    assert (pitr == "ENABLED") is declared["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def test_stack_names_default_to_the_template() -> None:
    names = StackNames(bucket="b", queue="q", jobs_table="t")
    settings = template_settings()
    assert names.upload_prefix == default({"Ref": "UploadPrefix"}) == settings.upload_prefix
    assert names.max_receive_count == default({"Ref": "MaxReceiveCount"}) == settings.max_receive_count
    assert names.visibility_timeout == props("JobQueue")["VisibilityTimeout"] == settings.visibility_timeout


def test_code_defaults_agree_with_the_template() -> None:
    settings = template_settings()
    assert settings.upload_prefix == config.DEFAULT_UPLOAD_PREFIX
    assert settings.max_receive_count == config.DEFAULT_MAX_RECEIVE_COUNT
    # A job reaches its terminal state before SQS parks its message.
    assert settings.max_receive_count > config.DEFAULT_MAX_ATTEMPTS


def test_visibility_timeout_covers_six_lambda_timeouts() -> None:
    timeout = in_map(props("LambdaWorkerFunction")["Timeout"])
    assert timeout == template_settings().lambda_worker_timeout
    assert props("JobQueue")["VisibilityTimeout"] >= 6 * timeout


def test_environment_names_are_settings() -> None:
    """Every VISIONQ_* / DATABASE_URL the template sets is a name src/visionq/config.py reads."""
    known = config.environment_names()
    api = props("HttpApiFunction")["Environment"]["Variables"]
    lam = props("LambdaWorkerFunction")["Environment"]["Variables"]
    container = props("GpuTaskDefinition")["ContainerDefinitions"][0]
    # An optional variable is ``!If [Condition, {Name, Value}, !Ref AWS::NoValue]``.
    entries = [e["Fn::If"][1] if "Fn::If" in e else e for e in container["Environment"]]
    ecs = {e["Name"] for e in entries} | {s["Name"] for s in container["Secrets"]}
    for where, variables in (("api", set(api)), ("lambda worker", set(lam)), ("ecs worker", ecs)):
        ours = {v for v in variables if v.startswith("VISIONQ_") or v == "DATABASE_URL"}
        assert ours <= known, f"{where}: {sorted(ours - known)} are read by no setting"
    required = {"VISIONQ_QUEUE_URL", "VISIONQ_JOBS_TABLE", "DATABASE_URL", "VISIONQ_MODEL"}
    assert required <= set(lam)
    assert required | {"VISIONQ_DLQ_URL"} <= ecs
    assert {"VISIONQ_BUCKET", "VISIONQ_JOBS_TABLE", "VISIONQ_UPLOAD_PREFIX"} <= set(api)
    assert str(lam["VISIONQ_WEIGHTS_CACHE"]).startswith("/tmp/")  # only /tmp is writable on Lambda


def test_short_form_tags_load_as_their_long_form(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "Resources:\n"
        "  A:\n"
        "    Type: X\n"
        "    Properties:\n"
        "      Arn: !GetAtt Queue.Arn\n"
        "      Name: !Sub ['${N}-x', {N: !Ref P}]\n"
        "      Pick: !If [C, !FindInMap [M, a, b], !Ref AWS::NoValue]\n",
        encoding="utf-8",
    )
    properties = load_template(path)["Resources"]["A"]["Properties"]
    assert properties["Arn"] == {"Fn::GetAtt": ["Queue", "Arn"]}
    assert properties["Name"] == {"Fn::Sub": ["${N}-x", {"N": {"Ref": "P"}}]}
    assert properties["Pick"] == {"Fn::If": ["C", {"Fn::FindInMap": ["M", "a", "b"]}, {"Ref": "AWS::NoValue"}]}


def test_a_setting_that_depends_on_the_deployment_is_refused() -> None:
    from infra.template_settings import TemplateError, settings_from_template

    template = load_template()
    template["Resources"]["JobQueue"]["Properties"]["VisibilityTimeout"] = {"Fn::GetAtt": ["X", "Y"]}
    with pytest.raises(TemplateError, match="JobQueue"):
        settings_from_template(template)
