"""A small client for the HTTP API, as a user's program would use it: create, upload, poll."""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from visionq.config import image_content_type

TERMINAL = ("SUCCEEDED", "FAILED")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class NotTheApi(ApiError):
    """A 2xx answer that is not the API's JSON."""


@dataclass
class Submitted:
    path: Path
    job_id: str


class VisionqClient:
    def __init__(self, api_url: str, api_key: str | None = None, *, timeout: float = 30.0) -> None:
        headers = {"x-api-key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=api_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def create_job(self, filename: str, content_type: str) -> dict[str, Any]:
        return self._json(self._http.post("/v1/jobs", json={"filename": filename, "content_type": content_type}))

    def upload(self, ticket: dict[str, Any], data: bytes, content_type: str) -> None:
        """The presigned POST, as a browser would send it: the policy fields, then the file."""
        upload = ticket["upload"]
        response = httpx.post(
            upload["url"],
            data=upload["fields"],
            files={"file": (Path(ticket["key"]).name, data, content_type)},
            timeout=60,
        )
        if response.status_code not in (200, 201, 204):
            raise ApiError(response.status_code, "upload_rejected", _storage_refusal(ticket["key"], response.text))

    def submit_file(self, path: Path) -> Submitted:
        content_type = image_content_type(path.name) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        ticket = self.create_job(path.name, content_type)
        self.upload(ticket, path.read_bytes(), content_type)
        return Submitted(path=path, job_id=ticket["job_id"])

    def create_batch(self, items: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        """POST /v1/batches: ``items`` of {filename, content_type, meta}; ``options``: model, name,
        meta, expected, webhook_url (None values left out)."""
        body = {"items": items, **{k: v for k, v in options.items() if v is not None}}
        return self._json(self._http.post("/v1/batches", json=body))

    def get_batch(self, batch_id: str, *, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return self._json(self._http.get(f"/v1/batches/{batch_id}", params=params))

    def batch_members(self, batch_id: str) -> list[dict[str, Any]]:
        """Every member of a batch, page after page."""
        members: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.get_batch(batch_id, limit=100, cursor=cursor)
            members.extend(page["jobs"])
            cursor = page["next_cursor"]
            if not cursor:
                return members

    def renew_upload(self, job_id: str) -> dict[str, Any]:
        """A fresh presigned upload for a job still waiting for its object (a resumed submission)."""
        return self._json(self._http.post(f"/v1/jobs/{job_id}/upload"))

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/jobs/{job_id}"))

    def find_job(self, key: str) -> dict[str, Any]:
        return self._json(self._http.get("/v1/jobs", params={"key": key}))

    def wait(self, job_ids: Iterable[str], *, timeout: float, interval: float = 0.25) -> dict[str, dict[str, Any]]:
        """Poll until every job is SUCCEEDED or FAILED; raise TimeoutError naming those that are not."""
        pending = list(job_ids)
        done: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while pending:
            for job_id in list(pending):
                job = self.get_job(job_id)
                if job["status"] in TERMINAL:
                    done[job_id] = job
                    pending.remove(job_id)
            if pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(pending)} job(s) not finished after {timeout:.0f}s: {pending[:5]}")
                time.sleep(interval)
        return done

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise ApiError(
                response.status_code, error.get("code", "http_error"), error.get("message", response.text[:300])
            )
        if not isinstance(body, dict):  # another web server at API_URL (a wrong port, a proxy's page)
            kind = response.headers.get("content-type", "no content type")
            raise NotTheApi(
                response.status_code,
                "not_the_api",
                f"{self._http.base_url} did not answer as the visionq API ({response.status_code}, {kind});"
                " check API_URL",
            )
        return body


def _storage_refusal(key: str, body: str) -> str:
    """S3's XML error as a sentence: its code and message (EntityTooLarge: a file over the
    service's size limit)."""
    import re

    code = re.search(r"<Code>([^<]*)</Code>", body)
    message = re.search(r"<Message>([^<]*)</Message>", body)
    if code is None:
        return f"the object store refused {Path(key).name}: {body[:300]}"
    return f"the object store refused {Path(key).name}: {code.group(1)}" + (f" ({message.group(1)})" if message else "")


def client_from_settings() -> VisionqClient:
    """A client for the API the environment names, else the running local stack's (local.env)."""
    from visionq.config import ClientSettings, load_settings
    from visionq.errors import ConfigError

    try:
        settings = load_settings(ClientSettings)
    except ConfigError as exc:
        raise ConfigError("API_URL is not set and .visionq/local.env does not exist: run `visionq up` first") from exc
    if not settings.api_key:
        raise ConfigError(
            f"VISIONQ_API_KEY is not set: the API at {settings.api_url} needs a key (`visionq keys create NAME`)"
        )
    return VisionqClient(settings.api_url, settings.api_key)


def expand_image_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; directories expanded to the images directly inside them, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if image_content_type(p.name)))
        else:
            found.append(path)
    return found


def format_results(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A plain table: one line per box, caption or class found, or the error of a failed job."""
    lines = [f"{'image':<28} {'status':<10} {'found':<28} {'score':>6}  where (x1, y1, x2, y2)"]
    for name, job in rows:
        name = name[:28]
        if job["status"] != "SUCCEEDED":
            error = job.get("error") or {}
            lines.append(f"{name:<28} {job['status']:<10} {error.get('code', '')}: {error.get('message', '')}")
            continue
        found = _found(job.get("result") or {})
        if not found:
            lines.append(f"{name:<28} {'SUCCEEDED':<10} (nothing found)")
        for what, score, where in found:
            shown = f"{score:>6.2f}" if score is not None else " " * 6
            lines.append(f"{name:<28} {'SUCCEEDED':<10} {what[:28]:<28} {shown}  {where}".rstrip())
    return "\n".join(lines)


def _found(result: dict[str, Any]) -> list[tuple[str, float | None, str]]:
    """(what, score, where) for each item of a job's result, whatever its kind."""
    rows: list[tuple[str, float | None, str]] = []
    for caption in result.get("captions", []):
        rows.append((f'"{caption["text"]}"', caption.get("score"), ""))
    for cls in result.get("classes", []):
        rows.append((cls["label"], cls["score"], ""))
    for name in ("detections", "segments", "poses"):
        for item in result.get(name, []):
            box = item.get("box", item)
            where = f"({box['x1']:.0f}, {box['y1']:.0f}, {box['x2']:.0f}, {box['y2']:.0f})"
            rows.append((item["label"], item["confidence"], where))
    for item in result.get("oriented_boxes", []):
        rows.append((item["label"], item["confidence"], f"centre ({item['cx']:.0f}, {item['cy']:.0f})"))
    return rows
