"""Model weights from S3, against the real moto server: fetched once, checked, shared, never half-read.

Requests are counted on the resolving client (``count_requests``); a second resolve of the same
ETag must send a HEAD (or, for a directory, a LIST) and no GET.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from visionq.aws import boto3_client, count_requests
from visionq.config import AwsSettings
from visionq.errors import ModelUnavailable
from visionq.models.weights import resolve_weights

pytestmark = pytest.mark.integration

BUCKET = "visionq-test-weights"
FILE_KEY = "models/detector/best.pt"
DIR_PREFIX = "models/captioner/"
DIR_FILES = {
    "config.json": b'{"model_type": "blip"}',
    "model.safetensors": os.urandom(300_000),
    "preprocessor_config.json": b'{"image_size": 384}',
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\na\ncat\n",
}


def client_for(endpoint: str) -> Any:
    return boto3_client("s3", AwsSettings(aws_endpoint_url=endpoint, aws_region="us-east-1"))


@pytest.fixture
def s3(moto_server: Any) -> Any:
    """An empty bucket; this client uploads (the resolvers get clients of their own)."""
    moto_server.reset()
    client = client_for(moto_server.endpoint)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def counted(moto_server: Any) -> Callable[[], tuple[Any, dict[str, int]]]:
    """A fresh client for resolving, with its requests counted by operation ("s3.GetObject"...)."""

    def make() -> tuple[Any, dict[str, int]]:
        counts: dict[str, int] = {}
        return count_requests(client_for(moto_server.endpoint), counts), counts

    return make


def put_dir(s3: Any, files: dict[str, bytes] = DIR_FILES, prefix: str = DIR_PREFIX) -> None:
    for name, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=prefix + name, Body=data)


def dir_contents(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(cache: Path) -> list[str]:
    """Files in the cache other than lock files, and temporary directories."""
    return sorted(
        p.relative_to(cache).as_posix()
        for p in cache.rglob("*")
        if p.name != ".visionq-lock" and (p.is_file() or p.name.startswith(".visionq-part-"))
    )


# --- one file ---------------------------------------------------------------------------------


def test_a_file_is_downloaded_once_into_its_etag_entry_then_reused(s3: Any, counted: Any, tmp_path: Path) -> None:
    data = os.urandom(2_000_000)
    etag = s3.put_object(Bucket=BUCKET, Key=FILE_KEY, Body=data)["ETag"].strip('"')
    client, counts = counted()
    uri = f"s3://{BUCKET}/{FILE_KEY}"

    path = Path(resolve_weights(uri, cache_dir=tmp_path, s3_client=client))
    key_hash = hashlib.sha256(f"{BUCKET}/{FILE_KEY}".encode()).hexdigest()[:16]
    assert path == tmp_path / key_hash / etag / "best.pt"
    assert path.read_bytes() == data
    assert counts == {"s3.HeadObject": 1, "s3.GetObject": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == [".visionq-lock", "best.pt"]
    inode = path.stat().st_ino

    # Same ETag: one HEAD, no GET, the same file (not rewritten).
    again = Path(resolve_weights(uri, cache_dir=tmp_path, s3_client=client))
    assert again == path and again.stat().st_ino == inode
    assert counts == {"s3.HeadObject": 2, "s3.GetObject": 1}

    # Another process (another client) finds it too.
    other, other_counts = counted()
    assert resolve_weights(uri, cache_dir=tmp_path, s3_client=other) == str(path)
    assert other_counts == {"s3.HeadObject": 1}


def test_an_overwritten_object_is_fetched_again_into_a_new_entry(s3: Any, counted: Any, tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/{FILE_KEY}"
    s3.put_object(Bucket=BUCKET, Key=FILE_KEY, Body=b"version one")
    client, counts = counted()
    first = Path(resolve_weights(uri, cache_dir=tmp_path, s3_client=client))

    s3.put_object(Bucket=BUCKET, Key=FILE_KEY, Body=b"version two, longer")
    second = Path(resolve_weights(uri, cache_dir=tmp_path, s3_client=client))
    assert second != first and second.parent.parent == first.parent.parent  # same key, new ETag
    assert second.read_bytes() == b"version two, longer"
    assert first.read_bytes() == b"version one"  # whoever still has it open is not disturbed
    assert counts["s3.GetObject"] == 2


def test_a_multipart_object_is_checked_by_size_only(s3: Any, counted: Any, tmp_path: Path) -> None:
    # A multipart ETag ("<md5 of md5s>-<parts>") is no MD5 of the bytes: it must not be taken for one.
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(1000)]
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=FILE_KEY)
    done = [
        {"PartNumber": n, "ETag": s3.upload_part(Bucket=BUCKET, Key=FILE_KEY, UploadId=upload["UploadId"],
                                                 PartNumber=n, Body=part)["ETag"]}
        for n, part in enumerate(parts, start=1)
    ]  # fmt: skip
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key=FILE_KEY, UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )
    assert s3.head_object(Bucket=BUCKET, Key=FILE_KEY)["ETag"].strip('"').endswith("-2")
    client, _ = counted()
    path = Path(resolve_weights(f"s3://{BUCKET}/{FILE_KEY}", cache_dir=tmp_path, s3_client=client))
    assert path.read_bytes() == b"".join(parts)
    assert path.parent.name.endswith("-2")


# --- one directory ----------------------------------------------------------------------------


def test_a_directory_is_downloaded_once_then_reused(s3: Any, counted: Any, tmp_path: Path) -> None:
    put_dir(s3)
    s3.put_object(Bucket=BUCKET, Key=DIR_PREFIX, Body=b"")  # a console's "folder" marker: skipped
    s3.put_object(Bucket=BUCKET, Key="models/captioner-v2/config.json", Body=b"{}")  # not under the prefix
    client, counts = counted()
    uri = f"s3://{BUCKET}/{DIR_PREFIX}"

    path = Path(resolve_weights(uri, cache_dir=tmp_path, s3_client=client))
    assert path.name == "captioner" and path.is_dir()
    assert dir_contents(path) == DIR_FILES
    assert counts == {"s3.ListObjectsV2": 1, "s3.GetObject": len(DIR_FILES)}
    assert sorted(p.name for p in path.parent.iterdir()) == [".visionq-lock", "captioner"]

    assert resolve_weights(uri, cache_dir=tmp_path, s3_client=client) == str(path)
    assert counts == {"s3.ListObjectsV2": 2, "s3.GetObject": len(DIR_FILES)}

    # One file overwritten: a new listing, so a new entry with every file; the old one intact.
    s3.put_object(Bucket=BUCKET, Key=DIR_PREFIX + "config.json", Body=b'{"model_type": "blip-2"}')
    newer = Path(resolve_weights(uri, cache_dir=tmp_path, s3_client=client))
    assert newer != path and newer.parent.parent == path.parent.parent
    assert dir_contents(newer) == {**DIR_FILES, "config.json": b'{"model_type": "blip-2"}'}
    assert dir_contents(path) == DIR_FILES


def test_a_whole_bucket_is_a_directory_named_after_it(s3: Any, counted: Any, tmp_path: Path) -> None:
    put_dir(s3, prefix="")
    client, _ = counted()
    path = Path(resolve_weights(f"s3://{BUCKET}/", cache_dir=tmp_path, s3_client=client))
    assert path.name == BUCKET
    assert dir_contents(path) == DIR_FILES


# --- concurrency ------------------------------------------------------------------------------


def slow_gets(client: Any, seconds: float, check: Callable[[], None] | None = None) -> None:
    """Make every GET take ``seconds`` longer (and run ``check`` while one is under way)."""

    def on_get(**_: Any) -> None:
        if check is not None:
            check()
        time.sleep(seconds)

    client.meta.events.register("after-call.s3.GetObject", on_get)


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_concurrent_threads_download_once_and_all_get_complete_files(
    s3: Any, counted: Any, tmp_path: Path, kind: str
) -> None:
    if kind == "file":
        data = os.urandom(1_000_000)
        s3.put_object(Bucket=BUCKET, Key=FILE_KEY, Body=data)
        uri, gets_for_one_download = f"s3://{BUCKET}/{FILE_KEY}", 1
    else:
        put_dir(s3)
        uri, gets_for_one_download = f"s3://{BUCKET}/{DIR_PREFIX}", len(DIR_FILES)
    client, counts = counted()
    seen_during_download: list[list[str]] = []

    def final_names() -> None:
        # While a GET is under way, nothing but the lock and temporary names may be in the cache.
        names = {p.name for p in tmp_path.rglob("*")}
        seen_during_download.append(sorted(names & {"best.pt", "captioner"}))

    slow_gets(client, 0.3, final_names)
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    results: list[str] = []
    errors: list[BaseException] = []

    def resolve() -> None:
        barrier.wait()
        try:
            results.append(resolve_weights(uri, cache_dir=tmp_path, s3_client=client))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=resolve) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(results) == threads_n and len(set(results)) == 1
    assert counts["s3.GetObject"] == gets_for_one_download  # one download; the others waited for it
    assert seen_during_download == [[]] * gets_for_one_download
    path = Path(results[0])
    if kind == "file":
        assert path.read_bytes() == data
    else:
        assert dir_contents(path) == DIR_FILES
    assert not list(tmp_path.rglob(".visionq-part-*"))


def resolve_in_process(endpoint: str, uri: str, cache_dir: str, barrier: Any, results: Any) -> None:
    """A spawned process's work: its own client, slow GETs, resolve when all are ready."""
    counts: dict[str, int] = {}
    client = count_requests(client_for(endpoint), counts)
    slow_gets(client, 0.3)
    barrier.wait(60)
    path = resolve_weights(uri, cache_dir=Path(cache_dir), s3_client=client)
    results.put((path, counts.get("s3.GetObject", 0), sha256(Path(path))))


def test_concurrent_processes_download_once(s3: Any, moto_server: Any, tmp_path: Path) -> None:
    data = os.urandom(1_000_000)
    s3.put_object(Bucket=BUCKET, Key=FILE_KEY, Body=data)
    uri = f"s3://{BUCKET}/{FILE_KEY}"
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding threads and sockets
    processes_n = 3
    barrier, results = ctx.Barrier(processes_n), ctx.Queue()
    processes = [
        ctx.Process(target=resolve_in_process, args=(moto_server.endpoint, uri, str(tmp_path), barrier, results))
        for _ in range(processes_n)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert len({path for path, _, _ in outcomes}) == 1
    assert sum(gets for _, gets, _ in outcomes) == 1
    assert {digest for _, _, digest in outcomes} == {hashlib.sha256(data).hexdigest()}


# --- failures ---------------------------------------------------------------------------------


class CorruptingClient:
    """An S3 client whose GETs return altered bytes (as a broken proxy or disk would)."""

    def __init__(self, inner: Any, corrupt: Callable[[bytes], bytes], only: str | None = None) -> None:
        self._inner = inner
        self._corrupt = corrupt
        self._only = only

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def get_object(self, **kwargs: Any) -> Any:
        response = self._inner.get_object(**kwargs)
        data = response["Body"].read()
        if self._only is None or kwargs["Key"].endswith(self._only):
            data = self._corrupt(data)
        response["Body"] = io.BytesIO(data)
        return response


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip_a_byte(data: bytes) -> bytes:
    return data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]


@pytest.mark.parametrize(("corrupt", "cause"), [(truncate, "bytes where the object has"), (flip_a_byte, "MD5")])
def test_a_corrupt_file_is_refused_and_leaves_nothing_behind(
    s3: Any, counted: Any, tmp_path: Path, corrupt: Callable[[bytes], bytes], cause: str
) -> None:
    s3.put_object(Bucket=BUCKET, Key=FILE_KEY, Body=os.urandom(100_000))
    uri = f"s3://{BUCKET}/{FILE_KEY}"
    client, _ = counted()
    with pytest.raises(ModelUnavailable) as raised:
        resolve_weights(uri, cache_dir=tmp_path, s3_client=CorruptingClient(client, corrupt))
    assert raised.value.message.startswith(f"Model weights {uri} cannot be had: the download")
    assert cause in raised.value.message
    assert leftovers(tmp_path) == []  # no final file, no temporary one
    # Nothing poisoned: a good download afterwards succeeds.
    assert Path(resolve_weights(uri, cache_dir=tmp_path, s3_client=client)).is_file()


def test_a_directory_with_one_corrupt_file_is_refused_whole(s3: Any, counted: Any, tmp_path: Path) -> None:
    put_dir(s3)
    uri = f"s3://{BUCKET}/{DIR_PREFIX}"
    client, _ = counted()
    with pytest.raises(ModelUnavailable, match=r"models/captioner/model\.safetensors cannot be had: .*MD5"):
        resolve_weights(uri, cache_dir=tmp_path, s3_client=CorruptingClient(client, flip_a_byte, "safetensors"))
    assert leftovers(tmp_path) == []
    assert not list(tmp_path.rglob("captioner"))
    assert dir_contents(Path(resolve_weights(uri, cache_dir=tmp_path, s3_client=client))) == DIR_FILES


def test_an_object_overwritten_between_head_and_get_is_refused(s3: Any, counted: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key=FILE_KEY, Body=b"old")
    client, _ = counted()

    def overwrite(**_: Any) -> None:
        s3.put_object(Bucket=BUCKET, Key=FILE_KEY, Body=b"new")

    client.meta.events.register_first("before-call.s3.GetObject", overwrite)
    with pytest.raises(ModelUnavailable, match="overwritten during the download; try again"):
        resolve_weights(f"s3://{BUCKET}/{FILE_KEY}", cache_dir=tmp_path, s3_client=client)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"s3://{BUCKET}/models/nope.pt", f"Model weights s3://{BUCKET}/models/nope.pt cannot be had: "
                                          "the object does not exist."),
        ("s3://no-such-bucket/models/nope.pt", "Model weights s3://no-such-bucket/models/nope.pt cannot be had: "
                                               "the object does not exist."),
        (f"s3://{BUCKET}/models/nope/", f"Model weights s3://{BUCKET}/models/nope/ cannot be had: "
                                        "there are no objects under that prefix."),
        ("s3://no-such-bucket/models/", "Model weights s3://no-such-bucket/models/ cannot be had: "
                                        "the bucket does not exist."),
    ],
)  # fmt: skip
def test_missing_weights_say_which_and_why(s3: Any, counted: Any, tmp_path: Path, uri: str, message: str) -> None:
    client, counts = counted()
    with pytest.raises(ModelUnavailable) as raised:
        resolve_weights(uri, cache_dir=tmp_path, s3_client=client)
    assert raised.value.message == message
    assert raised.value.code == "model_unavailable"
    assert "s3.GetObject" not in counts
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
