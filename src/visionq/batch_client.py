"""The client's batches: a video's frames or a folder of images submitted as one batch, followed
with progress bars, and read back as an annotated video or annotated copies.

What only this machine knows (where the source video and the images are) stays in a local
manifest under ``.visionq/batches/``, never on the server; a re-run of the same submission finds
its batch there and uploads only the members still waiting for their object.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from visionq.client import TERMINAL, VisionqClient
from visionq.config import IMAGE_CONTENT_TYPES, image_content_type
from visionq.errors import InvalidRequest

UPLOAD_THREADS = 8


@dataclass(frozen=True)
class Submission:
    batch_id: str
    kind: str  # "video" | "images"
    members: int
    uploaded: int  # this run
    skipped: int  # already uploaded or done by an earlier run
    names: dict[str, str]  # job id -> the image's file name (images) or frame label (video)


def bar(total: int | None, what: str, unit: str = "img") -> tqdm[Any]:
    """A progress bar on stderr (count, rate, ETA); silent when stderr is not a terminal."""
    return tqdm(total=total, desc=what, unit=unit, file=sys.stderr, disable=None, dynamic_ncols=True, leave=True)


class Manifests:
    """``.visionq/batches/``: per submission (source, sampling, model), its batch and local paths."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "batches"

    def find(self, key: str) -> dict[str, Any] | None:
        path = self.root / f"{key}.json"
        return dict(json.loads(path.read_text())) if path.exists() else None

    def save(self, key: str, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{key}.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(self.root / f"{key}.json")
        (self.root / f"{manifest['batch_id']}.json").write_text(json.dumps({"key": key}))

    def of_batch(self, batch_id: str) -> dict[str, Any] | None:
        pointer = self.root / f"{batch_id}.json"
        if not pointer.exists():
            return None
        return self.find(str(json.loads(pointer.read_text())["key"]))


def submission_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:24]


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


# --- images ----------------------------------------------------------------------------------------


def collect_images(paths: Iterable[Path], warn: Callable[[str], None]) -> list[Path]:
    """Files as given (each must be an image we accept); folders expanded to the images directly
    inside them, with one line for each other file skipped."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file() and image_content_type(child.name):
                    found.append(child)
                elif child.is_file():
                    warn(f"skipping {child}: not an image visionq accepts ({_accepted()})")
        elif not path.exists():
            raise InvalidRequest(f"{path} does not exist", code="file_not_found")
        elif not image_content_type(path.name):
            raise InvalidRequest(f"{path} is not an image visionq accepts ({_accepted()})", code="not_an_image")
        else:
            found.append(path)
    if not found:
        raise InvalidRequest("no images to submit", code="no_images")
    return found


def _accepted() -> str:
    return ", ".join(sorted({ext for fmt in IMAGE_CONTENT_TYPES.values() for ext in fmt.extensions}))


def submit_images(
    client: VisionqClient,
    images: Sequence[Path],
    *,
    manifests: Manifests,
    model: str | None = None,
    webhook_url: str | None = None,
) -> Submission:
    key = submission_key("images", model, *sorted(_file_identity(p) for p in images))
    existing = manifests.find(key)
    if existing is None:
        items = [{"filename": _safe_name(p), "content_type": image_content_type(p.name)} for p in images]
        created = client.create_batch(items, model=model, webhook_url=webhook_url, meta={"kind": "images"})
        paths = {job["job_id"]: str(p.resolve()) for job, p in zip(created["jobs"], images, strict=True)}
        manifests.save(key, {"batch_id": created["batch_id"], "kind": "images", "paths": paths})
        pending = [(job, Path(paths[job["job_id"]])) for job in created["jobs"]]
        batch_id = created["batch_id"]
    else:
        batch_id = existing["batch_id"]
        paths = existing["paths"]
        pending = [
            (client.renew_upload(job["job_id"]), Path(paths[job["job_id"]]))
            for job in client.batch_members(batch_id)
            if job["status"] == "PENDING" and job["job_id"] in paths
        ]
    with bar(len(pending), "upload") as progress:
        _upload_all(client, pending, lambda path: path.read_bytes(), progress.update)
    return Submission(
        batch_id=batch_id,
        kind="images",
        members=len(paths),
        uploaded=len(pending),
        skipped=len(paths) - len(pending),
        names={job_id: Path(p).name for job_id, p in paths.items()},
    )


def _safe_name(path: Path) -> str:
    """The API's rules for a file name (letters, digits, . _ - ( ) + and space)."""
    cleaned = "".join(c if c.isalnum() or c in "._-()+ " else "_" for c in path.name).lstrip("._- ") or "image"
    return cleaned[-200:]


# --- video -----------------------------------------------------------------------------------------


def submit_video(
    client: VisionqClient,
    path: Path,
    *,
    manifests: Manifests,
    fps: float | None,
    every: int | None,
    max_frames: int,
    max_seconds: float,
    model: str | None = None,
    webhook_url: str | None = None,
) -> Submission:
    """Probe and plan first (a bad or over-long clip fails here, before anything exists), then the
    batch, then frames decoded and uploaded as they come."""
    from visionq.video import check_sampling, extract_frames, plan_frames, probe

    check_sampling(fps=fps, every=every)
    info = probe(path)
    planned = plan_frames(info, fps=fps, every=every, max_frames=max_frames, max_seconds=max_seconds)
    key = submission_key("video", _file_identity(path), fps, every, model)
    existing = manifests.find(key)
    if existing is None:
        items = [
            {
                "filename": f"frame-{index:07d}.jpg",
                "content_type": "image/jpeg",
                "meta": {"frame_index": index, "timestamp_ms": round(float(index / info.rate) * 1000, 3)},
            }
            for index in planned
        ]
        meta = {
            "kind": "video",
            "source": path.name[:200],
            "fps": round(info.fps, 6),
            "frame_count": info.frame_count,
            "width": info.width,
            "height": info.height,
            "sample_fps": fps,
            "every": every,
        }
        created = client.create_batch(items, model=model, webhook_url=webhook_url, name=path.name[:200], meta=meta)
        batch_id = created["batch_id"]
        frames = {job["job_id"]: index for job, index in zip(created["jobs"], planned, strict=True)}
        manifests.save(key, {"batch_id": batch_id, "kind": "video", "source": str(path.resolve()), "frames": frames})
        tickets = {frames[job["job_id"]]: job for job in created["jobs"]}
    else:
        batch_id = existing["batch_id"]
        frames = existing["frames"]
        tickets = {
            int(job["meta"]["frame_index"]): client.renew_upload(job["job_id"])
            for job in client.batch_members(batch_id)
            if job["status"] == "PENDING"
        }
    with bar(info.frame_count, "decode", unit="frame") as decoding, bar(len(tickets), "upload") as uploading:
        chosen = extract_frames(
            path,
            info=info,
            indices=sorted(tickets),
            max_frames=max_frames,
            max_seconds=max_seconds,
            progress=decoding.update,
        )
        pairs = ((tickets[frame.index], frame.jpeg) for frame in chosen)
        _upload_all(client, pairs, lambda data: data, uploading.update)
    return Submission(
        batch_id=batch_id,
        kind="video",
        members=len(frames),
        uploaded=len(tickets),
        skipped=len(frames) - len(tickets),
        names={job_id: f"frame {index}" for job_id, index in frames.items()},
    )


def _upload_all(
    client: VisionqClient,
    pairs: Iterable[tuple[dict[str, Any], Any]],
    read: Callable[[Any], bytes],
    advance: Callable[[int], object],
) -> None:
    """Upload on a few threads, at most a few uploads ahead of the source (frames are decoded as
    they are needed, not all held in memory); the first failure stops the rest and is raised."""

    def one(ticket: dict[str, Any], source: Any) -> None:
        content_type = ticket["upload"]["fields"].get("Content-Type", "application/octet-stream")
        client.upload(ticket, read(source), content_type)

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        window: list[Any] = []
        for ticket, source in pairs:
            window.append(pool.submit(one, ticket, source))
            if len(window) >= UPLOAD_THREADS * 2:
                window.pop(0).result()
                advance(1)
        for future in window:
            future.result()
            advance(1)


# --- following and reading back ------------------------------------------------------------------


def wait_for_batch(client: VisionqClient, batch_id: str, *, timeout: float, interval: float = 0.5) -> dict[str, Any]:
    """Poll the batch's counts with a progress bar until it is complete; its last view."""
    deadline = time.monotonic() + timeout
    view = client.get_batch(batch_id, limit=0)
    with bar(view["total"] or None, "process") as progress:
        while True:
            progress.total = max(view["total"], view["size"], view["expected"])
            progress.n = view["finished"]
            failed = view["counts"].get("FAILED", 0)
            progress.set_postfix_str(f"{failed} failed" if failed else "", refresh=True)
            if view["status"] == "complete":
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"batch {batch_id}: {view['finished']} of {progress.total} done after {timeout:.0f}s"
                )
            time.sleep(interval)
            view = client.get_batch(batch_id, limit=0)


def finished_members(client: VisionqClient, batch_id: str) -> list[dict[str, Any]]:
    return [job for job in client.batch_members(batch_id) if job["status"] in TERMINAL]


@dataclass(frozen=True)
class Rendered:
    outputs: list[Path]
    analysed: int
    failed: int
    detail: str


def render_batch(
    client: VisionqClient,
    batch_id: str,
    out: Path,
    *,
    manifests: Manifests,
    source: Path | None = None,
    export: Path | None = None,
) -> Rendered:
    """The batch drawn: an annotated video at the source's frame count and rate (a video batch),
    or annotated copies in the folder ``out`` (images); ``export``: every item found as JSON or CSV."""
    from visionq.render import annotate_images, export_rows, render_video, write_csv, write_json

    batch = client.get_batch(batch_id, limit=0)
    members = finished_members(client, batch_id)
    done = [job for job in members if job["status"] == "SUCCEEDED"]
    failed = len(members) - len(done)
    manifest = manifests.of_batch(batch_id) or {}
    kind = (batch.get("meta") or {}).get("kind", manifest.get("kind", "images"))
    if kind == "video":
        results = {int(job["meta"]["frame_index"]): job["result"] or {} for job in done}
        timestamps = {int(job["meta"]["frame_index"]): float(job["meta"]["timestamp_ms"]) for job in members}
        source = source or (Path(manifest["source"]) if manifest.get("source") else None)
        if source is None or not source.exists():
            raise InvalidRequest(
                f"the source video of batch {batch_id} is not on this machine; name it with --source",
                code="source_missing",
            )
        from visionq.video import probe

        with bar(probe(source).frame_count, "render", unit="frame") as progress:
            report = render_video(source, results, out, progress=progress.update)
        detail = f"{report.frames_written} frames at {report.fps:.3f} fps, {report.codec}"
        outputs = [report.path]
    else:
        paths = manifest.get("paths", {})
        pairs = [(Path(paths[job["job_id"]]), job["result"] or {}) for job in done if job["job_id"] in paths]
        if done and not pairs:
            raise InvalidRequest(
                f"the images of batch {batch_id} were submitted from another machine; nothing to draw on",
                code="source_missing",
            )
        outputs = annotate_images(pairs, out)
        results = {i: result for i, (_, result) in enumerate(pairs)}
        timestamps = {}
        detail = f"{len(outputs)} annotated image(s) in {out}"
    if export is not None:
        rows = export_rows(results, timestamps)
        (write_csv if export.suffix.lower() == ".csv" else write_json)(rows, export)
        detail += f"; {len(rows)} item(s) exported to {export}"
    return Rendered(outputs=outputs, analysed=len(done), failed=failed, detail=detail)
