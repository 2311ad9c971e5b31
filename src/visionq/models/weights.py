"""Model weights from where they are: a local path, an S3 object or prefix, or a hub name.

``resolve_weights(source)`` returns what a loader opens. A local path or a hub name (Ultralytics'
``yolo11n.pt``, a HuggingFace model id, fetched by its library where there is network) comes back
unchanged. An S3 URI is fetched once into a local cache and the cached path comes back:

* ``s3://bucket/key``: one file, keyed by the object's ETag (one HEAD per resolve; a GET only
  when that ETag is not cached yet)::

      <cache_dir>/<sha256("bucket/key")[:16]>/<etag>/<basename of key>

* ``s3://bucket/prefix/`` (ends in ``/``): a directory of weights (a HuggingFace model: config.json,
  model.safetensors, processor files), every object under the prefix, keyed by the listing (one
  LIST per resolve)::

      <cache_dir>/<sha256("bucket/prefix/")[:16]>/<sha256(sorted (key, ETag) pairs)[:16]>/<last part of prefix>/

A download goes to a temporary name in its entry (``.visionq-part-*``), is checked (size, and the
MD5 where the ETag is one), and only then renamed into place with ``os.replace``: the final path
either does not exist or is complete, so a reader never sees half a file. An exclusive
``fcntl.flock`` on ``<entry>/.visionq-lock`` makes concurrent resolvers (threads or processes)
download once; the others wait for the lock and find the entry done. An object overwritten in S3
gets a new ETag and so a new entry; the old one stays for whoever still has it open.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from visionq.errors import ModelUnavailable

CACHE_DIR_ENV = "VISIONQ_WEIGHTS_CACHE"
_LOCK_NAME = ".visionq-lock"
_PART_PREFIX = ".visionq-part-"
_CHUNK = 1 << 20
_PLAIN_MD5 = re.compile(r"[0-9a-f]{32}")
_SAFE_NAME = re.compile(r"[0-9A-Za-z_-]{1,128}")


def default_cache_dir() -> Path:
    """``VISIONQ_WEIGHTS_CACHE`` if set, else ``~/.cache/visionq/weights``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "visionq" / "weights"


def resolve_weights(source: str, *, cache_dir: Path | None = None, s3_client: Any | None = None) -> str:
    """The local path of ``source``'s weights (see the module's docstring).

    ``cache_dir`` defaults to ``default_cache_dir()``; ``s3_client`` (boto3's, sync) to one built
    from the environment. Raises ``ModelUnavailable`` when S3 weights cannot be had: no such
    object or prefix, access denied, a download that does not match its size or MD5.
    """
    if not source.startswith("s3://"):
        # A local file or directory, or a hub name: either way the loader takes it as it is.
        return source
    bucket, _, key = source.removeprefix("s3://").partition("/")
    if not bucket or not (key or source.endswith("/")):
        raise _unavailable(source, "it is not an s3://bucket/key or s3://bucket/prefix/ URI")
    client = s3_client if s3_client is not None else _default_s3_client()
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    try:
        if key == "" or key.endswith("/"):
            return str(_fetch_prefix(client, source, bucket, key, cache))
        return str(_fetch_object(client, source, bucket, key, cache))
    except OSError as exc:  # the cache cannot be written: read-only, full, ...
        raise _unavailable(source, f"the cache in {cache} cannot be written ({exc.strerror or exc})") from exc


def _fetch_object(client: Any, uri: str, bucket: str, key: str, cache: Path) -> Path:
    with _s3_errors(uri):
        head = client.head_object(Bucket=bucket, Key=key)
    etag, size = str(head.get("ETag", "")), int(head["ContentLength"])
    if not etag:
        raise _unavailable(uri, "S3 gave the object no ETag to cache it by")
    name = key.rsplit("/", 1)[-1]
    if name in {".", ".."}:
        raise _unavailable(uri, f"the key's last part {name!r} cannot name a file")
    entry = cache / _digest(f"{bucket}/{key}") / _entry_name(etag)
    final = entry / name
    if _complete(final, size):
        return final
    with _locked(entry):
        if _complete(final, size):  # another resolver finished it while we waited
            return final
        _sweep(entry)
        fd, tmp = tempfile.mkstemp(dir=entry, prefix=_PART_PREFIX)
        try:
            os.close(fd)
            _download(client, uri, bucket, key, etag, size, Path(tmp))
            os.replace(tmp, final)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return final


def _fetch_prefix(client: Any, uri: str, bucket: str, prefix: str, cache: Path) -> Path:
    with _s3_errors(uri):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        listing = sorted(
            (str(obj["Key"]), str(obj["ETag"]), int(obj["Size"]))
            for page in pages
            for obj in page.get("Contents", [])
            if not str(obj["Key"]).endswith("/")  # "folder" markers made by consoles
        )
    if not listing:
        raise _unavailable(uri, "there are no objects under that prefix")
    files: list[tuple[str, str, int, str]] = []
    for key, etag, size in listing:
        relative = key[len(prefix) :]
        if any(part in {"", ".", ".."} for part in relative.split("/")):
            raise _unavailable(uri, f"the key {key!r} cannot name a file in a directory")
        files.append((key, etag, size, relative))
    name = prefix.rstrip("/").rsplit("/", 1)[-1] or bucket
    if name in {".", ".."}:
        name = "weights"
    entry = cache / _digest(f"{bucket}/{prefix}") / _digest("\n".join(f"{k}\0{e}" for k, e, _ in listing))
    final = entry / name
    if final.is_dir():
        return final
    with _locked(entry):
        if final.is_dir():
            return final
        _sweep(entry)
        tmp = Path(tempfile.mkdtemp(dir=entry, prefix=_PART_PREFIX))
        try:
            for key, etag, size, relative in files:
                dest = tmp / relative
                dest.parent.mkdir(parents=True, exist_ok=True)
                _download(client, f"s3://{bucket}/{key}", bucket, key, etag, size, dest)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _download(client: Any, uri: str, bucket: str, key: str, etag: str, size: int, dest: Path) -> None:
    """``bucket/key`` at exactly ``etag`` into ``dest``, checked against ``size`` and its MD5."""
    md5 = hashlib.md5(usedforsecurity=False)
    written = 0
    with _s3_errors(uri):
        # IfMatch: the bytes of the version we looked at, or 412 if it was overwritten since.
        response = client.get_object(Bucket=bucket, Key=key, IfMatch=etag)
        body = response["Body"]
        try:
            with dest.open("wb") as out:
                while chunk := body.read(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        finally:
            body.close()
    if written != size:
        raise _unavailable(uri, f"the download has {written} bytes where the object has {size}")
    expected = etag.strip('"')
    # A single-part upload's ETag is its MD5, unless it is encrypted with KMS or a customer key.
    encrypted = str(response.get("ServerSideEncryption", "")).startswith("aws:kms") or response.get(
        "SSECustomerAlgorithm"
    )
    if _PLAIN_MD5.fullmatch(expected) and not encrypted and md5.hexdigest() != expected:
        raise _unavailable(uri, f"the download's MD5 {md5.hexdigest()} does not match its ETag {expected}")


@contextmanager
def _locked(entry: Path) -> Iterator[None]:
    """Hold the entry's lock: one resolver at a time fills it, across threads and processes."""
    entry.mkdir(parents=True, exist_ok=True)
    with file_lock(entry / _LOCK_NAME):
        yield


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if absent), across threads and processes; the
    weights cache and the ONNX export cache both fill their entries under one."""
    with path.open("ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _sweep(entry: Path) -> None:
    """Remove what a resolver killed mid-download left (only called with the entry's lock held)."""
    for leftover in entry.glob(f"{_PART_PREFIX}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _complete(path: Path, size: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def _entry_name(etag: str) -> str:
    bare = etag.strip('"')
    return bare if _SAFE_NAME.fullmatch(bare) else _digest(etag, 32)


def _digest(text: str, length: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        raise _unavailable(uri, _cause(exc)) from exc
    except BotoCoreError as exc:  # connection refused, timeouts, a transfer cut short
        raise _unavailable(uri, f"S3 cannot be reached or the transfer broke off ({type(exc).__name__})") from exc


def _cause(exc: ClientError) -> str:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code == "NoSuchBucket":
        return "the bucket does not exist"
    if code in {"NoSuchKey", "NotFound", "404"} or status == 404:
        return "the object does not exist"
    if code in {"AccessDenied", "Forbidden", "403"} or status == 403:
        return "access is denied"
    if code == "PreconditionFailed" or status == 412:
        return "the object was overwritten during the download; try again"
    return f"S3 rejected the request ({code or status})"


def _unavailable(uri: str, cause: str) -> ModelUnavailable:
    return ModelUnavailable(f"Model weights {uri} cannot be had: {cause}.")


def _default_s3_client() -> Any:
    from visionq.aws import boto3_client
    from visionq.config import AwsSettings

    return boto3_client("s3", AwsSettings())
