"""The client's commands for many images at once: `visionq submit` (images, folders, a video),
`visionq batch` (a batch's progress) and `visionq render` (results drawn)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from visionq.config import STATE_DIR
from visionq.errors import ConfigError

T = TypeVar("T")


def add_commands(sub: Any) -> None:
    submit = sub.add_parser(
        "submit", help="submit images, folders of images or one video (its frames) as a batch through the API"
    )
    submit.add_argument("paths", nargs="+", type=Path)
    submit.add_argument("--wait", action="store_true", help="follow the batch and print the results")
    submit.add_argument("--timeout", type=float, default=300)
    submit.add_argument("--model", help="a model name from GET /v1/models (default: the service's)")
    submit.add_argument("--webhook", help="an https URL told when the whole batch has ended (docs/webhooks.md)")
    sampling = submit.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=float, help="video: analyse this many frames per second of the clip")
    sampling.add_argument("--every", type=int, help="video: analyse every K-th frame")
    submit.add_argument(
        "--max-frames",
        type=_positive(int),
        default=_from_environment("VISIONQ_VIDEO_MAX_FRAMES", 1000, int),
        help="video: refuse a clip that would give more frames than this (VISIONQ_VIDEO_MAX_FRAMES)",
    )
    submit.add_argument(
        "--max-seconds",
        type=_positive(float),
        default=_from_environment("VISIONQ_VIDEO_MAX_SECONDS", 600.0, float),
        help="video: refuse a clip longer than this (VISIONQ_VIDEO_MAX_SECONDS)",
    )
    submit.set_defaults(func=cmd_submit)

    batch = sub.add_parser("batch", help="a batch's progress: counts by status (--wait: until it is complete)")
    batch.add_argument("batch_id")
    batch.add_argument("--wait", action="store_true")
    batch.add_argument("--timeout", type=float, default=3600)
    batch.set_defaults(func=cmd_batch)

    render = sub.add_parser("render", help="draw a batch's results: an annotated video, or annotated image copies")
    render.add_argument("batch_id")
    render.add_argument("-o", "--out", type=Path, required=True, help="output .mp4 (video) or folder (images)")
    render.add_argument("--source", type=Path, help="video: the source clip, if not where it was submitted from")
    render.add_argument("--export", type=Path, help="also write every item found, with timestamps (.json or .csv)")
    render.set_defaults(func=cmd_render)


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type: a number above zero (a limit of 0 frames would divide by it)."""

    def parse(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:  # type: ignore[operator]
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    return parse


def _from_environment(name: str, default: T, kind: Callable[[str], T]) -> T:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return _positive(kind)(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{name}={text!r}: {exc}") from None


def cmd_submit(args: argparse.Namespace) -> int:
    from visionq.batch_client import Manifests, collect_images, submit_images, submit_video, wait_for_batch
    from visionq.client import client_from_settings, format_results
    from visionq.errors import InvalidRequest
    from visionq.video import is_video

    videos = [p for p in args.paths if p.is_file() and is_video(p)]
    if videos and len(args.paths) > 1:
        raise InvalidRequest("submit one video at a time, or images and folders without a video", code="mixed_input")
    if not videos and (args.fps is not None or args.every is not None):
        raise InvalidRequest("--fps and --every apply to a video", code="invalid_sampling")
    client = client_from_settings()
    manifests = Manifests(STATE_DIR)
    if videos:
        submission = submit_video(
            client,
            videos[0],
            manifests=manifests,
            fps=args.fps,
            every=args.every,
            max_frames=args.max_frames,
            max_seconds=args.max_seconds,
            model=args.model,
            webhook_url=args.webhook,
        )
    else:
        images = collect_images(args.paths, warn=lambda line: print(f"visionq: {line}", file=sys.stderr))
        submission = submit_images(client, images, manifests=manifests, model=args.model, webhook_url=args.webhook)
    again = f" ({submission.skipped} already uploaded by an earlier run)" if submission.skipped else ""
    jobs = f"{submission.members} {submission.kind} job(s)"
    print(f"batch {submission.batch_id}: {jobs}, {submission.uploaded} uploaded{again}")
    if not args.wait:
        print(f"follow it with: visionq batch {submission.batch_id} --wait")
        return 0
    view = wait_for_batch(client, submission.batch_id, timeout=args.timeout)
    if submission.kind == "video":
        print(_counts(view))
        print(f"draw it with: visionq render {submission.batch_id} -o annotated.mp4")
    else:
        members = {job["job_id"]: job for job in client.batch_members(submission.batch_id)}
        rows = [(name, members[job_id]) for job_id, name in submission.names.items() if job_id in members]
        print(format_results(rows))
    return 0 if view["counts"].get("SUCCEEDED", 0) == view["total"] else 1


def cmd_batch(args: argparse.Namespace) -> int:
    from visionq.batch_client import wait_for_batch
    from visionq.client import client_from_settings

    client = client_from_settings()
    view = (
        wait_for_batch(client, args.batch_id, timeout=args.timeout)
        if args.wait
        else client.get_batch(args.batch_id, limit=0)
    )
    print(f"batch {view['batch_id']} ({view['name'] or view['model']}): {view['status']}, {_counts(view)}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from visionq.batch_client import Manifests, render_batch
    from visionq.client import client_from_settings

    rendered = render_batch(
        client_from_settings(),
        args.batch_id,
        args.out,
        manifests=Manifests(STATE_DIR),
        source=args.source,
        export=args.export,
    )
    failed = f", {rendered.failed} failed (not drawn)" if rendered.failed else ""
    print(f"{rendered.analysed} analysed{failed}: {rendered.detail}")
    return 0


def _counts(view: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(view["counts"].items())) or "no jobs yet"
    return f"{view['finished']} of {max(view['total'], view['size'], view['expected'])} ended ({counts})"
