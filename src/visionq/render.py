"""Showing results: annotated videos and images, and results as flat rows (CSV, JSON).

``render_video`` decodes the source clip again (the frames, their numbering and their upright turn
are ``visionq.video``'s, as when they were extracted) and draws on every source frame the result of
that frame or, with ``hold``, of the latest analysed frame at or before it, so a clip analysed at
``--every K`` or ``--fps N`` plays back whole, at its own frame rate, with its own frame count.
The output is H.264 (``libx264``, yuv420p) in an .mp4 when that encoder is available, else MPEG-4
Part 2 (``mpeg4``) in the same container; yuv420p wants even sides, so an odd side gets one black
line more.

Drawing is ``visionq.annotate.draw_result`` (one code path for stills and frames). PIL and PyAV are
imported only by the functions that need them, so the rows/CSV/JSON helpers work without them.
"""

from __future__ import annotations

import bisect
import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionq.video import Progress, VideoError, iter_frames, probe, upright_image

if TYPE_CHECKING:
    from PIL import Image

    from visionq.video import VideoInfo

PREFERRED_CODEC = "libx264"
FALLBACK_CODEC = "mpeg4"
VIDEO_CODECS = (PREFERRED_CODEC, FALLBACK_CODEC)
_X264_OPTIONS = {"crf": "20", "preset": "veryfast"}
_VIDEO_MIN_LINE = 3  # see annotate.draw_result: survives yuv420p's half-resolution colour
_MPEG4_MAX_TIMEBASE = 65535  # MPEG-4 Part 2 stores the time base's denominator in 16 bits

ROW_FIELDS: tuple[str, ...] = (
    "frame",
    "timestamp_ms",
    "kind",
    "label",
    "class_id",
    "confidence",
    "x1",
    "y1",
    "x2",
    "y2",
    "text",
    "points",
)


@dataclass(frozen=True)
class RenderReport:
    path: Path
    codec: str  # the encoder used: "libx264" or "mpeg4"
    frames_written: int  # the source's frames, every one
    rate: Fraction  # the source's frame rate, which the output plays at
    width: int  # the output's size (the upright source's, made even)
    height: int
    frames_drawn: int  # frames that got a result drawn on them (more than the analysed ones with hold)

    @property
    def fps(self) -> float:
        return float(self.rate)


def draw_result(image: Image.Image, result: Mapping[str, Any], *, min_line: int = 2) -> Image.Image:
    """A copy of ``image`` with ``result`` drawn on it (``visionq.annotate.draw_result``)."""
    from visionq.annotate import draw_result as draw

    return draw(image, result, min_line=min_line)


def encoder_available(name: str) -> bool:
    """Whether this PyAV's FFmpeg can encode with ``name``."""
    import av

    try:
        av.Codec(name, "w")
    except (ValueError, av.FFmpegError):
        return False
    return True


def render_video(
    source_path: Path | str,
    results_by_frame: Mapping[int, Mapping[str, Any]],
    out_path: Path | str,
    *,
    hold: bool = True,
    progress: Progress | None = None,
    codec: str | None = None,
) -> RenderReport:
    """Write ``out_path`` (.mp4): the source clip with each frame's result drawn on it.

    ``results_by_frame`` maps source frame indices (as ``extract_frames`` numbered them) to results
    as stored (``{"kind": ..., "image": ..., "detections": [...]}``). With ``hold`` a frame that was
    not analysed shows the latest analysed frame's result before it; without, it is left as it is.
    ``codec`` forces an encoder (``"libx264"`` or ``"mpeg4"``); by default H.264 when available, else
    MPEG-4 Part 2, also when H.264 fails to open. ``progress(n)``: as ``extract_frames``'.
    Raises ``VideoError`` for a source that cannot be read.
    """
    import av

    source = Path(source_path)
    out = Path(out_path)
    if codec is not None and codec not in VIDEO_CODECS:
        raise ValueError(f"codec must be one of {', '.join(VIDEO_CODECS)}, not {codec!r}")
    info = probe(source)
    results = {int(index): result for index, result in results_by_frame.items() if result is not None}
    if codec is not None:
        candidates = [codec]
    else:
        candidates = [name for name in VIDEO_CODECS if encoder_available(name)]
        if not candidates:
            raise VideoError("This FFmpeg build can encode neither H.264 nor MPEG-4 video.", code="unsupported_video")
    out.parent.mkdir(parents=True, exist_ok=True)
    for attempt, name in enumerate(candidates):
        try:
            return _render(source, info, results, out, name, hold=hold, progress=progress)
        except av.FFmpegError:
            # The decoder's errors are VideoError already: this is the encoder or the muxer.
            out.unlink(missing_ok=True)
            if attempt == len(candidates) - 1:
                raise
    raise AssertionError("unreachable")


def _render(
    source: Path,
    info: VideoInfo,
    results: dict[int, Mapping[str, Any]],
    out: Path,
    codec: str,
    *,
    hold: bool,
    progress: Progress | None,
) -> RenderReport:
    import av
    import numpy as np
    from PIL import Image

    from visionq.annotate import draw_result as draw

    rate = info.rate
    if codec == FALLBACK_CODEC and rate.denominator > _MPEG4_MAX_TIMEBASE:
        rate = rate.limit_denominator(_MPEG4_MAX_TIMEBASE)
    width, height = info.width + info.width % 2, info.height + info.height % 2
    analysed = sorted(results)
    written = drawn = 0
    with av.open(str(out), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        options = dict(_X264_OPTIONS) if codec == PREFERRED_CODEC else {}
        stream = container.add_stream(codec, rate=rate, options=options)
        if not isinstance(stream, av.VideoStream):
            raise VideoError(f"{codec} is not a video encoder.", code="unsupported_video")
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == FALLBACK_CODEC:
            # mpeg4's default (200 kb/s) smears small frames; about 0.25 bit a pixel is clean.
            stream.bit_rate = max(400_000, int(width * height * float(rate) * 0.25))
        frame_time = 1 / rate
        for index, _seconds, frame in iter_frames(source, info=info, progress=progress):
            result = results.get(index)
            if result is None and hold and analysed:
                at = bisect.bisect_right(analysed, index) - 1
                result = results[analysed[at]] if at >= 0 else None
            image = upright_image(frame, info.rotation)
            if result is not None:
                image = draw(image, result, min_line=_VIDEO_MIN_LINE)
                drawn += 1
            if image.size != (width, height):
                padded = Image.new("RGB", (width, height))
                padded.paste(image, (0, 0))
                image = padded
            picture = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
            picture.pts = written
            picture.time_base = frame_time
            container.mux(stream.encode(picture))
            written += 1
        container.mux(stream.encode(None))
    return RenderReport(
        path=out, codec=codec, frames_written=written, rate=rate, width=width, height=height, frames_drawn=drawn
    )


def export_rows(
    results_by_frame: Mapping[int, Mapping[str, Any]], timestamps_ms: Mapping[int, float]
) -> list[dict[str, Any]]:
    """One flat row per item found, frames in order: the columns of ``ROW_FIELDS``.

    ``kind`` is the item's: ``detection``, ``segment``, ``pose``, ``oriented_box`` (a box, its
    enclosing box for the last three, and ``points``: the polygon, keypoints or corners as JSON),
    ``class`` or ``caption`` (``text``; ``confidence`` is the class score or the caption's score).
    Columns that do not apply are None. A frame where nothing was found has no row.
    """
    rows: list[dict[str, Any]] = []
    stamps = {int(k): v for k, v in timestamps_ms.items()}
    for index in sorted(results_by_frame, key=int):
        result = results_by_frame[index]
        if result is None:  # a frame whose job failed: nothing to list
            continue
        frame = int(index)
        for kind, item in _flatten(result):
            row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
            row.update(frame=frame, timestamp_ms=stamps.get(frame), kind=kind)
            row.update(item)
            rows.append(row)
    return rows


def _flatten(result: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for det in result.get("detections") or []:
        found.append(("detection", {**_named(det), **_box(det)}))
    for seg in result.get("segments") or []:
        found.append(("segment", {**_named(seg), **_box(seg.get("box")), "points": _points(seg.get("polygon"))}))
    for pose in result.get("poses") or []:
        found.append(("pose", {**_named(pose), **_box(pose.get("box")), "points": _points(pose.get("keypoints"))}))
    for obb in result.get("oriented_boxes") or []:
        corners = obb.get("corners") or []
        xs, ys = [float(p[0]) for p in corners], [float(p[1]) for p in corners]
        box = {"x1": min(xs), "y1": min(ys), "x2": max(xs), "y2": max(ys)} if corners else {}
        found.append(("oriented_box", {**_named(obb), **box, "points": _points(corners)}))
    for cls in result.get("classes") or []:
        found.append(
            ("class", {"label": cls.get("label"), "class_id": cls.get("class_id"), "confidence": cls.get("score")})
        )
    for caption in result.get("captions") or []:
        found.append(("caption", {"text": caption.get("text"), "confidence": caption.get("score")}))
    return found


def _named(item: Mapping[str, Any]) -> dict[str, Any]:
    return {"label": item.get("label"), "class_id": item.get("class_id"), "confidence": item.get("confidence")}


def _box(box: Mapping[str, Any] | None) -> dict[str, Any]:
    if not box:
        return {}
    return {name: box.get(name) for name in ("x1", "y1", "x2", "y2")}


def _points(points: Sequence[Sequence[float]] | None) -> str | None:
    return json.dumps([list(p) for p in points], separators=(",", ":")) if points else None


def write_json(rows: Sequence[Mapping[str, Any]], path: Path | str) -> Path:
    """``rows`` as a JSON array of objects."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(list(rows), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path | str) -> Path:
    """``rows`` as CSV with a header of ``ROW_FIELDS`` (empty cells for None)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out


def annotate_images(pairs: Sequence[tuple[Path, Mapping[str, Any]]], out_dir: Path | str) -> list[Path]:
    """Annotated copies of image files in ``out_dir``, same names (``name-2.png`` when two collide).

    Each image is turned upright by its EXIF orientation first, as the worker did before inference.
    """
    from visionq.annotate import save_annotated

    folder = Path(out_dir)
    written: list[Path] = []
    taken: set[str] = set()
    for image_path, result in pairs:
        source = Path(image_path)
        name, n = source.name, 1
        while name.lower() in taken:
            n += 1
            name = f"{source.stem}-{n}{source.suffix}"
        taken.add(name.lower())
        written.append(save_annotated(source, result, folder / name))
    return written
