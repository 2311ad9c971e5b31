"""The jobs table (DynamoDB): one item per job, status changes as conditional writes.

Every status change names the states it may come from, so a late or duplicate message can never
move a job backwards (see ``jobs.TRANSITIONS``).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from visionq.errors import JobNotFound, TransitionRejected
from visionq.jobs import (
    CLAIM,
    CREATE,
    FAIL,
    REOPEN,
    SUCCEED,
    Job,
    JobError,
    JobStatus,
    ObjectVersion,
    Transition,
    object_id,
    utc_now_iso,
)
from visionq.stores.aws_errors import aws_errors

BY_OBJECT_INDEX = "by_object"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class JobStore(Protocol):
    def create(self, job: Job) -> None: ...
    def get(self, job_id: str) -> Job: ...
    def find_by_object(self, bucket: str, key: str) -> Job: ...
    def claim(
        self, job_id: str, obj: ObjectVersion, *, model: str, expires_at: int, batch_id: str | None = None
    ) -> Job: ...
    def mark_succeeded(self, job_id: str, result: dict[str, Any]) -> Job: ...
    def mark_failed(
        self, job_id: str, error: JobError, *, obj: ObjectVersion | None = None, expires_at: int | None = None
    ) -> Job: ...
    def reopen(self, job_id: str) -> None: ...


class DynamoJobStore:
    """Every state change is ``_apply`` of one of ``jobs.TRANSITIONS``: one conditional UpdateItem."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def create(self, job: Job) -> None:
        assert CREATE.target == job.status
        with aws_errors("create job"):
            self._client.put_item(
                TableName=self._table,
                Item=_to_item(_job_item(job)),
                ConditionExpression="attribute_not_exists(job_id)",
            )

    def get(self, job_id: str) -> Job:
        with aws_errors("read job"):
            response = self._client.get_item(TableName=self._table, Key={"job_id": {"S": job_id}}, ConsistentRead=True)
        if "Item" not in response:
            raise JobNotFound(f"no job with id {job_id!r}")
        return _job_from_item(response["Item"])

    def find_by_object(self, bucket: str, key: str) -> Job:
        """The newest job for an object key (a key overwritten later gets a job of its own)."""
        with aws_errors("find job by object"):
            response = self._client.query(
                TableName=self._table,
                IndexName=BY_OBJECT_INDEX,
                KeyConditionExpression="object_id = :oid",
                ExpressionAttributeValues={":oid": {"S": object_id(bucket, key)}},
                ScanIndexForward=False,
                Limit=1,
            )
        items = response.get("Items", [])
        if not items:
            raise JobNotFound(f"no job for object {key!r}")
        # The index projects keys only; read the item itself for a consistent, complete view.
        return self.get(items[0]["job_id"]["S"])

    def claim(
        self, job_id: str, obj: ObjectVersion, *, model: str, expires_at: int, batch_id: str | None = None
    ) -> Job:
        """A worker takes the object: the job becomes RUNNING, created first if the object was put
        into the bucket directly. One conditional write, so one request per image. ``model`` is the
        model to record if the job names none yet; the returned job says which model it gets.
        ``batch_id``: the batch a direct upload's key joins (kept if the job already has one).

        Returns the job as it now stands; a job already finished (a duplicate or redelivered
        event) is returned unchanged, for the caller to acknowledge without running it again.
        """
        try:
            attributes = self._apply(
                CLAIM,
                job_id,
                _object_fields(obj),
                expires_at=expires_at,
                # The model named when the job was created (through the API) stands; a direct upload's
                # record gets the one its key names.
                # A direct upload that joins a batch announces its end: the batch may have a webhook
                # waiting for its last member (the worker does not read the batch to find out).
                if_absent={"model": model, **({"batch_id": batch_id, "notify": True} if batch_id else {})},
                return_new=True,
            )
        except TransitionRejected:
            return self.get(job_id)
        assert attributes is not None
        return _job_from_item(attributes)

    def mark_succeeded(self, job_id: str, result: dict[str, Any]) -> Job:
        """SUCCEEDED with ``result``; the job as it now stands (whether its end must be announced)."""
        return self._ended(self._apply(SUCCEED, job_id, {"result": json.dumps(result, separators=(",", ":"))}))

    def mark_failed(
        self, job_id: str, error: JobError, *, obj: ObjectVersion | None = None, expires_at: int | None = None
    ) -> Job:
        """FAILED with ``error``. Given the object, a job with no record yet gets one, so an object
        whose job could never be claimed still ends in a record a client can find."""
        fields: dict[str, Any] = {"error_code": error.code, "error_message": error.message}
        if obj is None:
            return self._ended(self._apply(FAIL, job_id, fields, may_create=False))
        return self._ended(self._apply(FAIL, job_id, {**fields, **_object_fields(obj)}, expires_at=expires_at))

    @staticmethod
    def _ended(attributes: dict[str, Any] | None) -> Job:
        assert attributes is not None
        return _job_from_item(attributes)

    def reopen(self, job_id: str) -> None:
        """FAILED (``poison_message``) -> QUEUED: the one backward move, an operator's redrive."""
        # The FAILED job's notice (its webhook record) goes too: the rerun's end is announced anew.
        remove = ("error_code", "error_message", "webhook", "webhook_attempts")
        self._apply(REOPEN, job_id, {}, remove=remove, return_new=False)

    def _apply(
        self,
        transition: Transition,
        job_id: str,
        fields: dict[str, Any],
        *,
        expires_at: int | None = None,
        may_create: bool = True,
        remove: tuple[str, ...] = (),
        if_absent: dict[str, Any] | None = None,
        return_new: bool = True,
    ) -> dict[str, Any] | None:
        """Move ``job_id`` along ``transition`` if its current state allows; else TransitionRejected."""
        now = utc_now_iso()
        names = {"#status": "status"}
        values: dict[str, Any] = {":target": str(transition.target), ":now": now}
        sets = ["#status = :target", "updated_at = :now"]
        for i, (name, value) in enumerate(fields.items()):
            names[f"#f{i}"] = name
            values[f":f{i}"] = value
            sets.append(f"#f{i} = :f{i}")
        for i, (name, value) in enumerate((if_absent or {}).items()):
            names[f"#a{i}"] = name
            values[f":a{i}"] = value
            sets.append(f"#a{i} = if_not_exists(#a{i}, :a{i})")
        creates = transition.creates and may_create
        if creates:
            values[":ttl"] = expires_at if expires_at is not None else 0
            sets += ["created_at = if_not_exists(created_at, :now)", "expires_at = if_not_exists(expires_at, :ttl)"]
        for i, state in enumerate(sorted(transition.sources)):
            values[f":p{i}"] = str(state)
        condition = "#status IN (" + ", ".join(f":p{i}" for i in range(len(transition.sources))) + ")"
        if transition.requires_error is not None:
            values[":error"] = transition.requires_error
            condition += " AND error_code = :error"
        condition = ("attribute_not_exists(job_id) OR " if creates else "attribute_exists(job_id) AND ") + (
            f"({condition})"
        )
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(remove) if remove else "")
        # Plain conditional writes, not TransactWriteItems: a transaction is all-or-nothing, and
        # moto's emulation of one rolls back by restoring a copy of the whole table, silently
        # undoing concurrent writes (seen as lost jobs under the fault-injection suite).
        with aws_errors(f"{transition.name} job"):
            response = self._client.update_item(
                TableName=self._table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=_to_values(values),
                ReturnValues="ALL_NEW" if return_new else "NONE",
            )
        attributes: dict[str, Any] | None = response.get("Attributes")
        return attributes


def _object_fields(obj: ObjectVersion) -> dict[str, Any]:
    return {
        "bucket": obj.bucket,
        "object_key": obj.key,
        "object_id": object_id(obj.bucket, obj.key),
        "etag": obj.version,
    }


def _job_item(job: Job) -> dict[str, Any]:
    """A new job's record (None values are left out)."""
    return {
        "job_id": job.job_id,
        "status": str(job.status),
        "bucket": job.bucket,
        "object_key": job.key,
        "object_id": object_id(job.bucket, job.key),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "expires_at": job.expires_at,
        "model": job.model,
        "filename": job.filename,
        "content_type": job.content_type,
        "owner": job.owner,
        # What ties a job to its batch and to its notifier.
        "batch_id": job.batch_id,
        "meta": json.dumps(job.meta, separators=(",", ":")) if job.meta else None,
        "webhook_url": job.webhook_url,
        "notify": True if job.notify else None,
    }


def _to_item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in values.items() if v is not None}


def _to_values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in values.items()}


def _job_from_item(item: dict[str, Any]) -> Job:
    data = {k: _deserializer.deserialize(v) for k, v in item.items()}
    error = None
    if data.get("error_code"):
        error = JobError(code=str(data["error_code"]), message=str(data.get("error_message", "")))
    return Job(
        job_id=str(data["job_id"]),
        status=JobStatus(str(data["status"])),
        bucket=str(data["bucket"]),
        key=str(data["object_key"]),
        created_at=str(data["created_at"]),
        updated_at=str(data["updated_at"]),
        expires_at=int(data.get("expires_at", 0)),
        model=data.get("model"),
        etag=data.get("etag"),
        filename=data.get("filename"),
        content_type=data.get("content_type"),
        result=json.loads(data["result"]) if data.get("result") else None,
        error=error,
        owner=data.get("owner"),
        batch_id=data.get("batch_id"),
        meta=json.loads(data["meta"]) if data.get("meta") else None,
        webhook_url=data.get("webhook_url"),
        notify=bool(data.get("notify")),
        webhook=json.loads(data["webhook"]) if data.get("webhook") else None,
    )
