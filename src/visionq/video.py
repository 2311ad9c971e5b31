"""Video files on the client: what a clip is (``probe``), which of its frames to analyse
(``plan_frames``) and those frames as JPEGs (``extract_frames``), for ``visionq submit clip.mp4``.

A source frame's index is its position in presentation order, counted from 0 on the first video
stream; its timestamp is measured from the first frame, so frame 0 is at 0 ms whatever the
container's start time. Frames are turned upright (the stream's display rotation, as phones record
portrait clips), so the JPEGs, and the coordinates a model finds in them, are in the picture people
see; ``visionq.render`` decodes the same way.

The limits are checked before a frame is decoded: ``extract_frames`` plans first and raises there,
so a clip over a limit fails before anything has been uploaded.

Decoding is PyAV's (FFmpeg in its wheels: the ``video`` extra), imported only when a video is
opened, so ``is_video`` and ``plan_frames`` work without it. Nothing here prints: progress goes to an
optional ``progress(n)`` callback (a ``tqdm`` bar's ``update`` fits).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from visionq.errors import ConfigError, InvalidRequest

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream
    from PIL import Image

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".3gp", ".flv", ".gif"}
)

# The containers (FFmpeg demuxers) read as video. FFmpeg opens much else besides, and would make a
# "video" of a text file (tty), a still (image2, png_pipe, ...) or raw bytes; those are refused.
VIDEO_DEMUXERS = frozenset(
    {
        "mov", "mp4", "matroska", "webm", "avi", "mpegts", "mpeg", "mpegvideo", "flv", "gif", "asf",
        "ogg", "ivf", "h264", "hevc", "m4v", "mxf", "nut", "yuv4mpegpipe", "obu",
    }
)  # fmt: skip

# A frame whose timestamp is this close before a sampling boundary counts as on it: containers store
# rounded timestamps (Matroska: whole milliseconds), so 1/3 s may read as 333 ms.
_TIMESTAMP_SLACK = Fraction(1, 1000)

Progress = Callable[[int], object]


class VideoError(InvalidRequest):
    """A video we cannot take: not a video, undecodable, no picture, or over a limit.

    ``code`` says which (``invalid_video``, ``no_video_stream``, ``unsupported_video``,
    ``video_too_long``, ``too_many_frames``, ``invalid_sampling``); the message is one sentence.
    """

    code = "invalid_video"


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int  # upright: a clip recorded rotated by 90 degrees reports its displayed size
    height: int
    codec: str  # FFmpeg's decoder name: h264, hevc, mpeg4, vp9, ...
    rate: Fraction  # frames per second, exactly (30000/1001 for NTSC)
    frame_count: int
    duration_s: float
    rotation: int = 0  # degrees counterclockwise that the frames are turned to be upright
    counted: bool = False  # True when the container did not say and the frames were counted by decoding

    @property
    def fps(self) -> float:
        return float(self.rate)


@dataclass(frozen=True)
class Frame:
    index: int  # the source frame's index (presentation order, from 0)
    timestamp_ms: float  # from the first frame
    jpeg: bytes
    width: int
    height: int


def is_video(path: Path | str) -> bool:
    """Whether ``path`` should go the video way: by its first bytes when they say, else by suffix.

    An MP4 named ``.bin`` is a video and a PNG named ``.mp4`` is not; bytes that say nothing (random,
    truncated, text) follow the suffix, so ``clip.mp4`` full of garbage is a video that ``probe``
    rejects with ``invalid_video``.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(512)
    except OSError:
        head = b""
    kind = _sniff(head)
    if kind is not None:
        return kind == "video"
    return path.suffix.lower() in VIDEO_SUFFIXES


def _sniff(head: bytes) -> str | None:
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[4:8] == b"ftyp":
        # ISO media: AVIF/HEIF stills share the box structure with MP4/MOV.
        return "image" if head[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1") else "video"
    if head.startswith((b"\x1a\x45\xdf\xa3", b"FLV", b"GIF87a", b"GIF89a", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):
        return "video"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:  # MPEG transport stream
        return "video"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):  # QuickTime without ftyp
        return "video"
    return None


def probe(path: Path | str) -> VideoInfo:
    """What ``path`` holds: size, codec, frame rate, frame count and duration of its first video stream.

    The frame count is the container's or, when the container keeps none (Matroska, WebM,
    MPEG-TS), the count of the stream's packets (one a frame: demuxing, not decoding, so a long clip
    is counted in a moment). The first frame is always decoded, so a clip whose picture cannot be
    decoded fails here. Raises ``VideoError``.
    """
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        rate = _frame_rate(stream, container)
        frames = int(stream.frames or 0)
        counted = frames <= 0
        if counted:
            first, frames = _count_frames(container, stream, path)
        else:
            first = next(iter(_decode(container, stream, path)), None)
        if first is None:
            raise VideoError(f"{path.name} has a video stream with no frame that can be decoded.")
        duration = _duration(stream, container)
        if rate is None:
            if duration is None or duration <= 0:
                raise VideoError(f"{path.name} does not say its frame rate or its duration.")
            rate = Fraction(frames / duration).limit_denominator(1001)
        if duration is None or duration <= 0:
            duration = frames / float(rate)
        rotation = _rotation(first)
        width, height = (first.height, first.width) if rotation % 180 else (first.width, first.height)
        return VideoInfo(
            path=path,
            width=width,
            height=height,
            codec=stream.codec_context.name,
            rate=rate,
            frame_count=frames,
            duration_s=round(duration, 6),
            rotation=rotation,
            counted=counted,
        )


def _count_frames(container: InputContainer, stream: VideoStream, path: Path) -> tuple[VideoFrame | None, int]:
    """The first frame (decoded) and the number of the stream's packets that hold data."""
    import av

    first: VideoFrame | None = None
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the end-of-stream marker
            count += 1
            if first is None:
                first = next(iter(stream.decode(packet)), None)
        if first is None:
            first = next(iter(stream.decode(None)), None)
    except av.FFmpegError as exc:
        raise VideoError(f"{path.name} is damaged: it could not be read to the end.", code="invalid_video") from exc
    return first, count


def plan_frames(
    info: VideoInfo,
    fps: float | None = None,
    every: int | None = None,
    *,
    max_frames: int,
    max_seconds: float,
) -> list[int]:
    """The source frame indices to analyse, or ``VideoError`` when the clip is over a limit.

    ``every=K`` keeps frames 0, K, 2K, ...; ``fps=N`` keeps the first frame of each 1/N second of
    source time (never more than the source has: N above its rate keeps every frame); neither keeps
    every frame. Frame times are taken as ``index / rate`` here; ``extract_frames`` chooses by the
    frames' real timestamps, which gives the same frames for a constant-rate clip.
    """
    check_sampling(fps=fps, every=every)
    check_duration(info, max_seconds)
    if every is not None:
        indices = list(range(0, info.frame_count, every))
    elif fps is not None:
        per_second = Fraction(str(fps))
        indices = []
        last = -1
        for index in range(info.frame_count):
            bucket = _bucket(Fraction(index) / info.rate, per_second)
            if bucket > last:
                indices.append(index)
                last = bucket
    else:
        indices = list(range(info.frame_count))
    if len(indices) > max_frames:
        every_fits = math.ceil(info.frame_count / max_frames)
        fps_fits = math.floor(max_frames / info.duration_s * 10) / 10 if info.duration_s > 0 else 0
        hint = f"--every {every_fits}" + (f" or --fps {fps_fits:g}" if fps_fits > 0 else "")
        raise VideoError(
            f"{info.path.name} would give {len(indices)} frames to analyse, more than the limit of {max_frames}:"
            f" sample fewer with {hint}.",
            code="too_many_frames",
        )
    return indices


def check_duration(info: VideoInfo, max_seconds: float) -> None:
    if info.duration_s > max_seconds + 1e-3:
        raise VideoError(
            f"{info.path.name} is {info.duration_s:.1f} s long, more than the limit of {max_seconds:g} s.",
            code="video_too_long",
        )


def check_sampling(*, fps: float | None, every: int | None) -> None:
    """``VideoError(code="invalid_sampling")`` unless at most one of ``fps`` / ``every`` is given, positive."""
    if fps is not None and every is not None:
        raise VideoError("Give either --fps or --every, not both.", code="invalid_sampling")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise VideoError(f"--every must be a whole number of frames, 1 or more (got {every}).", code="invalid_sampling")
    if fps is not None and not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise VideoError(f"--fps must be a number of frames per second above 0 (got {fps}).", code="invalid_sampling")


def extract_frames(
    path: Path | str,
    *,
    fps: float | None = None,
    every: int | None = None,
    max_frames: int,
    max_seconds: float,
    jpeg_quality: int = 90,
    progress: Progress | None = None,
    info: VideoInfo | None = None,
    indices: Sequence[int] | None = None,
) -> Iterator[Frame]:
    """The frames to analyse, upright, as RGB JPEGs, in order.

    ``indices``: exactly these source frames (a plan made earlier by ``plan_frames``, whose jobs
    already exist), instead of choosing by ``fps`` / ``every`` as the frames go by.

    Probes (unless given ``info``) and plans here, before returning: a clip that is not a video or is
    over a limit raises ``VideoError`` from this call, before any frame exists. Decoding happens as
    the iterator is consumed; ``progress(n)`` is called with the number of source frames decoded since
    its last call (pass a ``tqdm`` bar's ``update`` with ``total=info.frame_count``).
    """
    path = Path(path)
    info = info or probe(path)
    if indices is not None:  # planned earlier: only the limits are checked again
        chosen = frozenset(indices)
        if len(chosen) > max_frames:
            raise VideoError(
                f"{path.name}: {len(chosen)} frames asked for, more than the limit of {max_frames}.",
                code="too_many_frames",
            )
        check_duration(info, max_seconds)
        return _extract(path, info, lambda index, _t: index in chosen, len(chosen), jpeg_quality, progress)
    planned = plan_frames(info, fps=fps, every=every, max_frames=max_frames, max_seconds=max_seconds)
    if every is not None or fps is None:
        wanted = frozenset(planned)
        return _extract(path, info, lambda index, _t: index in wanted, max_frames, jpeg_quality, progress)
    per_second = Fraction(str(fps))
    last = [-1]

    def choose(_index: int, seconds: Fraction) -> bool:
        bucket = _bucket(seconds, per_second)
        if bucket > last[0]:
            last[0] = bucket
            return True
        return False

    return _extract(path, info, choose, max_frames, jpeg_quality, progress)


def _extract(
    path: Path,
    info: VideoInfo,
    choose: Callable[[int, Fraction], bool],
    max_frames: int,
    jpeg_quality: int,
    progress: Progress | None,
) -> Iterator[Frame]:
    kept = 0
    for index, seconds, frame in iter_frames(path, info=info, progress=progress):
        if not choose(index, seconds):
            continue
        if kept >= max_frames:
            # Only a clip whose container understates its frame count gets here (the plan passed).
            raise VideoError(
                f"{path.name} has more frames than it says; it would give more than {max_frames} to analyse.",
                code="too_many_frames",
            )
        kept += 1
        image = upright_image(frame, info.rotation)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=jpeg_quality)
        yield Frame(
            index=index,
            timestamp_ms=round(float(seconds) * 1000, 3),
            jpeg=buffer.getvalue(),
            width=image.width,
            height=image.height,
        )


def iter_frames(
    path: Path | str, *, info: VideoInfo | None = None, progress: Progress | None = None
) -> Iterator[tuple[int, Fraction, VideoFrame]]:
    """Every decoded frame of the first video stream: (index, seconds from the first frame, frame).

    Shared by extraction and rendering, so both number and time frames the same way.
    """
    path = Path(path)
    rate = info.rate if info is not None else None
    with _open(path) as container:
        stream = _video_stream(container, path)
        if rate is None:
            rate = _frame_rate(stream, container) or Fraction(25)
        origin: Fraction | None = None
        pending = 0
        for index, frame in enumerate(_decode(container, stream, path)):
            stamp = frame.pts * frame.time_base if frame.pts is not None and frame.time_base is not None else None
            if stamp is not None and origin is None:
                origin = stamp - Fraction(index) / rate
            seconds = stamp - origin if stamp is not None and origin is not None else Fraction(index) / rate
            yield index, max(seconds, Fraction(0)), frame
            pending += 1
            if progress is not None and pending >= 8:
                progress(pending)
                pending = 0
        if progress is not None and pending:
            progress(pending)


def upright_image(frame: VideoFrame, rotation: int | None = None) -> Image.Image:
    """The frame as an RGB ``PIL.Image``, turned by the stream's display rotation."""
    from PIL import Image

    image = Image.fromarray(frame.to_ndarray(format="rgb24"))
    turn = _rotation(frame) if rotation is None else rotation
    if turn:
        image = image.rotate(turn, expand=True)
    return image


def _bucket(seconds: Fraction, per_second: Fraction) -> int:
    return math.floor((seconds + _TIMESTAMP_SLACK) * per_second)


def _rotation(frame: VideoFrame) -> int:
    try:
        degrees = float(frame.rotation)
    except (AttributeError, TypeError, ValueError):
        return 0
    return int(round(degrees / 90) * 90) % 360


def _import_av() -> None:
    try:
        import av  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "Reading videos needs PyAV: install visionq with the video extra (pip install 'visionq[video]')."
        ) from exc


def _open(path: Path) -> InputContainer:
    _import_av()
    import av

    if not path.is_file():
        raise VideoError(f"{path} does not exist or is not a file.", code="invalid_video")
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        raise VideoError(f"{path.name} is not a video file that can be read.", code="invalid_video") from exc
    demuxers = set(container.format.name.split(","))
    if not demuxers & VIDEO_DEMUXERS:
        has_video = bool(container.streams.video)
        container.close()
        if not has_video:
            raise VideoError(f"{path.name} has no video stream.", code="no_video_stream")
        if container.format.name.endswith("_pipe") or "image2" in demuxers:
            raise VideoError(f"{path.name} is a still image, not a video.", code="invalid_video")
        raise VideoError(f"{path.name} is not a video file that can be read.", code="invalid_video")
    return container


def _video_stream(container: InputContainer, path: Path) -> VideoStream:
    streams: Sequence[VideoStream] = container.streams.video
    if not streams:
        raise VideoError(f"{path.name} has no video stream.", code="no_video_stream")
    stream = streams[0]
    if stream.codec_context is None:
        raise VideoError(f"{path.name} is a video in a format that cannot be decoded here.", code="unsupported_video")
    stream.thread_type = "AUTO"
    return stream


def _decode(container: InputContainer, stream: VideoStream, path: Path) -> Iterator[VideoFrame]:
    import av

    decoded = 0
    try:
        for frame in container.decode(stream):
            decoded += 1
            yield frame
    except av.FFmpegError as exc:
        where = f"after frame {decoded - 1}" if decoded else "at its first frame"
        raise VideoError(f"{path.name} is damaged: decoding failed {where}.", code="invalid_video") from exc


def _frame_rate(stream: VideoStream, container: InputContainer) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0 and rate < 1000:
            return Fraction(rate)
    return None


def _duration(stream: VideoStream, container: InputContainer) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None
