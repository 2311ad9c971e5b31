"""The resource settings that ``template.yaml`` (the AWS deployment) declares, for the bootstrap.

``infra/bootstrap.py`` (``visionq up``, ``visionq bootstrap``, the tests) creates the bucket's
notification, the queues and the jobs table from these, so the local stack and the deployed one
cannot drift: the template is the one place they are written. Values given as ``!Ref Parameter``
resolve to the parameter's default and ``!FindInMap`` to the mapping's value; anything else that
depends on a deployment (an ARN, a name) is not a setting and is not read here.

The template is looked for at ``$VISIONQ_TEMPLATE``, then beside this module (where a wheel puts
it), then at the repository root.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Functions whose short form takes a sequence or mapping, and those that take a scalar.
_INTRINSICS = (
    "And",
    "Base64",
    "Cidr",
    "Equals",
    "FindInMap",
    "GetAZs",
    "If",
    "ImportValue",
    "Join",
    "Length",
    "Not",
    "Or",
    "Select",
    "Split",
    "Sub",
    "ToJsonString",
    "Transform",
)


class TemplateError(ValueError):
    """The template lacks a setting the bootstrap needs, or declares it in a form it cannot read."""


class CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (``!Ref X`` -> ``{"Ref": "X"}``, ``!Sub s`` ->
    ``{"Fn::Sub": s}``, ``!GetAtt A.B`` -> ``{"Fn::GetAtt": ["A", "B"]}``)."""


def _construct(tag: str) -> Any:
    key = "Ref" if tag == "Ref" else "Condition" if tag == "Condition" else f"Fn::{tag}"

    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        value: Any
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if tag == "GetAtt":
                value = str(value).split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        elif isinstance(node, yaml.MappingNode):
            value = loader.construct_mapping(node, deep=True)
        else:  # pragma: no cover - yaml has no other node kinds
            raise TemplateError(f"unexpected YAML node for !{tag}")
        return {key: value}

    return construct


for _tag in (*_INTRINSICS, "Ref", "GetAtt", "Condition"):
    CloudFormationLoader.add_constructor(f"!{_tag}", _construct(_tag))


def template_path() -> Path:
    candidates = [
        Path(__file__).resolve().parent / "template.yaml",
        Path(__file__).resolve().parents[1] / "template.yaml",
    ]
    if os.environ.get("VISIONQ_TEMPLATE"):
        candidates.insert(0, Path(os.environ["VISIONQ_TEMPLATE"]))
    for path in candidates:
        if path.is_file():
            return path
    raise TemplateError("template.yaml not found (looked at " + ", ".join(str(p) for p in candidates) + ")")


def load_template(path: Path | None = None) -> dict[str, Any]:
    """The template as plain data, short-form tags turned into their long form."""
    with (path or template_path()).open(encoding="utf-8") as f:
        document = yaml.load(f, Loader=CloudFormationLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise TemplateError("not a CloudFormation template: no Resources")
    return document


@dataclass(frozen=True)
class TableSettings:
    """The jobs table, in the shapes DynamoDB's CreateTable takes (CloudFormation's are the same)."""

    billing_mode: str
    attribute_definitions: tuple[dict[str, str], ...]
    key_schema: tuple[dict[str, str], ...]
    global_secondary_indexes: tuple[dict[str, Any], ...]
    ttl_attribute: str
    point_in_time_recovery: bool

    def create_table_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "BillingMode": self.billing_mode,
            "AttributeDefinitions": [dict(a) for a in self.attribute_definitions],
            "KeySchema": [dict(k) for k in self.key_schema],
        }
        if self.global_secondary_indexes:
            kwargs["GlobalSecondaryIndexes"] = [dict(i) for i in self.global_secondary_indexes]
        return kwargs


@dataclass(frozen=True)
class TemplateSettings:
    upload_prefix: str
    notification_events: tuple[str, ...]
    max_receive_count: int
    visibility_timeout: int  # the work queue's default (the poller sets its own on every receive)
    queue_retention_seconds: int
    dead_letter_retention_seconds: int
    sqs_managed_sse: bool
    lambda_worker_timeout: int  # the Lambda worker's; the visibility timeout is at least 6 x this
    table: TableSettings
    cors_rules: tuple[dict[str, Any], ...] = ()  # the bucket's, in the S3 API's shape (PutBucketCors)
    notify_retention_seconds: int = 86400  # the notifications queue's (NotifyQueue)
    notify_visibility_timeout: int = 180


class _Resolver:
    def __init__(self, template: dict[str, Any]) -> None:
        self.parameters: dict[str, Any] = template.get("Parameters") or {}
        self.mappings: dict[str, Any] = template.get("Mappings") or {}

    def __call__(self, value: Any, where: str) -> Any:
        if isinstance(value, dict) and len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self._parameter(arg, where)
            if key == "Fn::FindInMap":
                name, top, second = (self(v, where) for v in arg)
                try:
                    return self.mappings[name][top][second]
                except KeyError as exc:
                    raise TemplateError(f"{where}: no mapping {name}.{top}.{second}") from exc
            if key.startswith("Fn::") or key == "Condition":
                raise TemplateError(f"{where}: {key} depends on the deployment; not a setting")
        if isinstance(value, dict):
            return {k: self(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    def _parameter(self, name: str, where: str) -> Any:
        parameter = self.parameters.get(name)
        if parameter is None or "Default" not in parameter:
            raise TemplateError(f"{where}: !Ref {name} is not a parameter with a default")
        default = parameter["Default"]
        return int(default) if parameter.get("Type") == "Number" else default


def _resource(template: dict[str, Any], logical_id: str, type_: str) -> dict[str, Any]:
    resource = template["Resources"].get(logical_id)
    if not isinstance(resource, dict) or resource.get("Type") != type_:
        raise TemplateError(f"template.yaml: no {type_} named {logical_id}")
    properties: dict[str, Any] = resource.get("Properties") or {}
    return properties


def _int(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise TemplateError(f"{where}: {value!r} is not a number") from exc


def settings_from_template(template: dict[str, Any]) -> TemplateSettings:
    resolve = _Resolver(template)
    queue = _resource(template, "JobQueue", "AWS::SQS::Queue")
    dlq = _resource(template, "DeadLetterQueue", "AWS::SQS::Queue")
    bucket = _resource(template, "UploadBucket", "AWS::S3::Bucket")
    table = _resource(template, "JobsTable", "AWS::DynamoDB::Table")
    worker = _resource(template, "LambdaWorkerFunction", "AWS::Serverless::Function")
    notify = _resource(template, "NotifyQueue", "AWS::SQS::Queue")
    cors = (bucket.get("CorsConfiguration") or {}).get("CorsRules") or []

    (notification,) = bucket["NotificationConfiguration"]["QueueConfigurations"]
    rules = notification["Filter"]["S3Key"]["Rules"]
    prefixes = [resolve(r["Value"], "UploadBucket prefix rule") for r in rules if r["Name"] == "prefix"]
    if len(prefixes) != 1:
        raise TemplateError("UploadBucket: the notification needs exactly one prefix rule")
    events = notification["Event"]
    redrive = resolve(queue["RedrivePolicy"].get("maxReceiveCount"), "JobQueue.RedrivePolicy")
    ttl = table.get("TimeToLiveSpecification") or {}
    pitr = table.get("PointInTimeRecoverySpecification") or {}
    return TemplateSettings(
        upload_prefix=str(prefixes[0]),
        notification_events=tuple(events) if isinstance(events, list) else (str(events),),
        max_receive_count=_int(redrive, "JobQueue.RedrivePolicy.maxReceiveCount"),
        visibility_timeout=_int(resolve(queue["VisibilityTimeout"], "JobQueue"), "JobQueue.VisibilityTimeout"),
        queue_retention_seconds=_int(resolve(queue["MessageRetentionPeriod"], "JobQueue"), "JobQueue retention"),
        dead_letter_retention_seconds=_int(
            resolve(dlq["MessageRetentionPeriod"], "DeadLetterQueue"), "DeadLetterQueue retention"
        ),
        cors_rules=tuple(_cors_rule(resolve(rule, "UploadBucket CORS")) for rule in cors),
        sqs_managed_sse=all(bool(q.get("SqsManagedSseEnabled")) for q in (queue, dlq, notify)),
        notify_retention_seconds=_int(
            resolve(notify["MessageRetentionPeriod"], "NotifyQueue"), "NotifyQueue retention"
        ),
        notify_visibility_timeout=_int(resolve(notify["VisibilityTimeout"], "NotifyQueue"), "NotifyQueue visibility"),
        lambda_worker_timeout=_int(resolve(worker["Timeout"], "LambdaWorkerFunction"), "LambdaWorkerFunction.Timeout"),
        table=TableSettings(
            billing_mode=str(table["BillingMode"]),
            attribute_definitions=tuple(resolve(table["AttributeDefinitions"], "JobsTable")),
            key_schema=tuple(resolve(table["KeySchema"], "JobsTable")),
            global_secondary_indexes=tuple(resolve(table.get("GlobalSecondaryIndexes") or [], "JobsTable")),
            ttl_attribute=str(ttl["AttributeName"]) if ttl.get("Enabled") else "",
            point_in_time_recovery=bool(pitr.get("PointInTimeRecoveryEnabled")),
        ),
    )


def _cors_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A CloudFormation CorsRule as S3's PutBucketCors takes it (two names differ)."""
    renamed = {"Id": "ID", "MaxAge": "MaxAgeSeconds"}
    return {renamed.get(key, key): value for key, value in rule.items()}


@functools.cache
def template_settings() -> TemplateSettings:
    """The settings of the deployment template (read once)."""
    return settings_from_template(load_template())
