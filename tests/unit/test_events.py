from __future__ import annotations

import json

import pytest

from visionq.events import MalformedEvent, parse_s3_event


def s3_event(key: str, *, name: str = "ObjectCreated:Put", etag: str = "abc123") -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventName": name,
                    "eventTime": "2026-11-22T06:16:09.852Z",
                    "s3": {
                        "bucket": {"name": "bkt"},
                        "object": {"key": key, "size": 10, "eTag": etag},
                    },
                }
            ]
        }
    )


def test_keys_arrive_url_encoded_and_are_decoded_once() -> None:
    [obj] = parse_s3_event(s3_event("uploads%2Fmy+photo%2B1%25.jpg"))
    assert obj.key == "uploads/my photo+1%.jpg"
    assert obj.bucket == "bkt"
    assert obj.etag == "abc123"
    assert obj.size == 10
    assert obj.event_time == pytest.approx(1795328169.852)


def test_version_id_is_the_object_version_when_present() -> None:
    body = json.loads(s3_event("uploads/a.jpg"))
    body["Records"][0]["s3"]["object"]["versionId"] = "v7"
    [obj] = parse_s3_event(json.dumps(body))
    assert obj.version == "v7"
    assert parse_s3_event(s3_event("uploads/a.jpg"))[0].version == "abc123"


def test_test_event_is_recognised_and_yields_nothing() -> None:
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "bkt"})
    assert parse_s3_event(body) == []


def test_non_create_events_are_ignored() -> None:
    assert parse_s3_event(s3_event("uploads/a.jpg", name="ObjectRemoved:Delete")) == []


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        json.dumps({"Records": "nope"}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}),
    ],
)
def test_malformed_bodies_raise_a_permanent_error(body: str) -> None:
    with pytest.raises(MalformedEvent):
        parse_s3_event(body)


def test_a_record_without_etag_is_malformed() -> None:
    with pytest.raises(MalformedEvent):
        parse_s3_event(s3_event("uploads/a.jpg", etag=""))
