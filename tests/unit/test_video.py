"""The client's video library (``visionq.video``) and drawing/export (``visionq.render``, ``visionq.annotate``).

Clips are made here with PyAV: tiny (160 x 120, 15 fps, 2 s), a red square moving right along the
top and a blue circle moving left along the bottom, drawn as ``visionq.shapes`` draws its scenes
(same classes, colours, size range, tinted noisy background), so the shapes detector knows them:
``write_clip`` is meant for the end-to-end test too.
"""

from __future__ import annotations

import csv
import io
import json
import wave
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw

from visionq import render, shapes
from visionq.annotate import PALETTE, draw_detections
from visionq.errors import InvalidRequest
from visionq.render import (
    ROW_FIELDS,
    annotate_images,
    draw_result,
    export_rows,
    render_video,
    write_csv,
    write_json,
)
from visionq.video import VideoError, VideoInfo, extract_frames, is_video, iter_frames, plan_frames, probe

SIZE = (160, 120)
RATE = 15
FRAMES = 30
LIMITS: dict[str, Any] = {"max_frames": 1000, "max_seconds": 60.0}

Box = tuple[int, float, float, float, float]  # (class_id, x1, y1, x2, y2), x2/y2 exclusive


# --- clips --------------------------------------------------------------------------------------


def scene(index: int, size: tuple[int, int] = SIZE) -> tuple[Image.Image, list[Box]]:
    """Frame ``index``: the square (class 0) at the top moving right, the circle (class 1) at the
    bottom moving left, 30% of the short side each (within shapes' 18-35%), never touching."""
    width, height = size
    short = min(width, height)
    side = round(0.3 * short)
    step = max(1, (width - side - 2 * round(0.05 * width)) // 32)
    rng = np.random.default_rng(7)  # the same background on every frame
    base = np.array([222, 216, 228], dtype=np.float32)
    noise = rng.normal(0.0, 4.0, size=(height, width, 1)).astype(np.float32)
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    margin = round(0.05 * width)
    square_x, square_y = margin + step * index, round(0.06 * height)
    circle_x, circle_y = width - margin - side - step * index, height - round(0.06 * height) - side
    boxes: list[Box] = []
    for cls, x1, y1 in ((0, square_x, square_y), (1, circle_x, circle_y)):
        x2, y2 = x1 + side, y1 + side
        # As shapes.draw_scene: PIL includes the end coordinate, so the shape ends at x2-1 / y2-1.
        if cls == 0:
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=shapes.CLASS_COLORS[cls])
        else:
            draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=shapes.CLASS_COLORS[cls])
        boxes.append((cls, float(x1), float(y1), float(x2), float(y2)))
    return image, boxes


def write_clip(
    path: Path,
    *,
    size: tuple[int, int] = SIZE,
    rate: int = RATE,
    frames: int = FRAMES,
    codec: str = "libx264",
    rotation: int | None = None,
) -> list[list[Box]]:
    """Write the moving-shapes clip; returns each frame's true boxes (in the stored, unrotated frame)."""
    truth: list[list[Box]] = []
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "16", "preset": "veryfast"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(frames):
            image, boxes = scene(index, size)
            truth.append(boxes)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")))
        container.mux(stream.encode(None))
    return truth


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[Box]]]:
    path = tmp_path_factory.mktemp("clip") / "shapes.mp4"
    return path, write_clip(path)


def decoded_frames(path: Path) -> list[np.ndarray]:
    return [np.asarray(image) for image in _upright_images(path)]


def _upright_images(path: Path) -> list[Image.Image]:
    from visionq.video import upright_image

    return [upright_image(frame) for _, _, frame in iter_frames(path)]


def detections(boxes: Sequence[Box], size: tuple[int, int] = SIZE) -> dict[str, Any]:
    return {
        "kind": "detections",
        "image": {"width": size[0], "height": size[1]},
        "detections": [
            {"class_id": c, "label": shapes.CLASS_NAMES[c], "confidence": 0.9, "x1": x1, "y1": y1, "x2": x2, "y2": y2}
            for c, x1, y1, x2, y2 in boxes
        ],
    }


# --- probe --------------------------------------------------------------------------------------


def test_probe_reads_rate_count_duration_size_and_codec(clip: tuple[Path, list[list[Box]]]) -> None:
    info = probe(clip[0])
    assert info.rate == Fraction(RATE)
    assert info.fps == pytest.approx(15.0)
    assert info.frame_count == FRAMES
    assert not info.counted
    assert info.duration_s == pytest.approx(FRAMES / RATE, abs=0.01)
    assert (info.width, info.height) == SIZE
    assert info.codec == "h264"
    assert info.rotation == 0


def test_probe_counts_frames_when_the_container_does_not_say(tmp_path: Path) -> None:
    path = tmp_path / "shapes.mkv"  # Matroska keeps no frame count
    write_clip(path, frames=12, codec="mpeg4")
    info = probe(path)
    assert info.counted
    assert info.frame_count == 12
    assert info.rate == Fraction(RATE)
    assert info.codec == "mpeg4"


def test_rotated_clip_is_probed_extracted_and_rendered_upright(tmp_path: Path) -> None:
    path = tmp_path / "portrait.mp4"
    truth = write_clip(path, frames=4, rotation=90)  # shown turned 90 degrees counterclockwise
    info = probe(path)
    assert (info.rotation, info.width, info.height) == (90, SIZE[1], SIZE[0])
    frame = next(iter(extract_frames(path, **LIMITS)))
    assert (frame.width, frame.height) == (SIZE[1], SIZE[0])
    rgb = np.asarray(Image.open(io.BytesIO(frame.jpeg)).convert("RGB")).astype(int)
    # Counterclockwise: stored (x, y) is shown at (y, width - 1 - x).
    _, x1, y1, x2, y2 = truth[0][0]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    assert _distance(rgb[int(SIZE[0] - 1 - cx), int(cy)], shapes.CLASS_COLORS[0]) < 40
    report = render_video(path, {}, tmp_path / "out.mp4")
    assert (report.width, report.height) == (SIZE[1], SIZE[0])
    assert probe(report.path).rotation == 0


def _write_wav(path: Path) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x01" * 8000)


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [
        ("random.mp4", lambda p, clip: p.write_bytes(np.random.default_rng(1).bytes(20_000)), "invalid_video"),
        (
            "truncated.mp4",
            lambda p, clip: p.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2]),
            "invalid_video",
        ),
        ("notes.txt", lambda p, clip: p.write_text("not a video\n" * 50), "invalid_video"),
        ("empty.mp4", lambda p, clip: p.write_bytes(b""), "invalid_video"),
        ("still.png", lambda p, clip: Image.new("RGB", (32, 24), "red").save(p), "invalid_video"),
        ("sound.wav", lambda p, clip: _write_wav(p), "no_video_stream"),
    ],
)
def test_what_is_not_a_usable_video_fails_with_a_clear_code(
    tmp_path: Path, clip: tuple[Path, list[list[Box]]], name: str, make: Any, code: str
) -> None:
    path = tmp_path / name
    make(path, clip[0])
    with pytest.raises(VideoError) as probed:
        probe(path)
    assert probed.value.code == code
    assert isinstance(probed.value, InvalidRequest)
    message = probed.value.message
    assert name in message and "\n" not in message and message.endswith(".")
    with pytest.raises(VideoError) as extracted:
        extract_frames(path, **LIMITS)  # raises from the call itself, before any iteration
    assert extracted.value.code == code


def test_missing_file_is_invalid_video(tmp_path: Path) -> None:
    with pytest.raises(VideoError) as raised:
        probe(tmp_path / "nope.mp4")
    assert raised.value.code == "invalid_video"


def test_is_video_by_content_then_suffix(tmp_path: Path, clip: tuple[Path, list[list[Box]]]) -> None:
    disguised = tmp_path / "clip.bin"
    disguised.write_bytes(clip[0].read_bytes())
    png_named_mp4 = tmp_path / "photo.mp4"
    Image.new("RGB", (8, 8)).save(png_named_mp4, format="PNG")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x13" * 300)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(jpeg)
    assert is_video(clip[0])
    assert is_video(disguised)
    assert not is_video(png_named_mp4)
    assert is_video(garbage)  # says nothing: the suffix decides, and probe() rejects it
    assert not is_video(text)
    assert not is_video(jpeg)
    assert is_video(tmp_path / "missing.MOV")


# --- planning and extraction --------------------------------------------------------------------


def _info(frames: int, rate: Fraction | int, duration: float | None = None) -> VideoInfo:
    rate = Fraction(rate)
    return VideoInfo(
        path=Path("clip.mp4"),
        width=64,
        height=48,
        codec="h264",
        rate=rate,
        frame_count=frames,
        duration_s=duration if duration is not None else float(frames / rate),
    )


def test_plan_frames_every_fps_and_all() -> None:
    info = _info(30, 15)
    assert plan_frames(info, **LIMITS) == list(range(30))
    assert plan_frames(info, every=2, **LIMITS) == list(range(0, 30, 2))
    assert plan_frames(info, every=7, **LIMITS) == [0, 7, 14, 21, 28]
    assert plan_frames(info, fps=5, **LIMITS) == list(range(0, 30, 3))
    assert plan_frames(info, fps=100, **LIMITS) == list(range(30))  # never above the source rate
    assert plan_frames(info, fps=0.5, **LIMITS) == [0]
    # 25 fps at 10/s: the first frame of each 100 ms.
    assert plan_frames(_info(10, 25), fps=10, **LIMITS) == [0, 3, 5, 8]
    # NTSC rate at 10/s.
    ntsc = plan_frames(_info(60, Fraction(30000, 1001)), fps=10, **LIMITS)
    assert len(ntsc) == 20 and ntsc[:4] == [0, 3, 6, 9]


def test_plan_frames_limits_say_what_to_do() -> None:
    long = _info(30 * 3600, 30)
    with pytest.raises(VideoError) as too_long:
        plan_frames(long, max_frames=10_000_000, max_seconds=600)
    assert too_long.value.code == "video_too_long"
    assert "3600.0 s" in too_long.value.message and "600 s" in too_long.value.message
    with pytest.raises(VideoError) as too_many:
        plan_frames(_info(300, 30), max_frames=100, max_seconds=600)
    assert too_many.value.code == "too_many_frames"
    assert "300 frames" in too_many.value.message and "--every 3" in too_many.value.message
    assert plan_frames(_info(300, 30), every=3, max_frames=100, max_seconds=600) == list(range(0, 300, 3))
    assert len(plan_frames(_info(300, 30), fps=10, max_frames=100, max_seconds=600)) == 100


@pytest.mark.parametrize(
    "sampling", [{"fps": 5.0, "every": 2}, {"every": 0}, {"every": -1}, {"fps": 0.0}, {"fps": float("nan")}]
)
def test_bad_sampling_is_refused(sampling: dict[str, Any]) -> None:
    with pytest.raises(VideoError) as raised:
        plan_frames(_info(30, 15), **sampling, **LIMITS)
    assert raised.value.code == "invalid_sampling"


def test_extract_every_frame(clip: tuple[Path, list[list[Box]]]) -> None:
    path, truth = clip
    calls: list[int] = []
    frames = list(extract_frames(path, progress=calls.append, **LIMITS))
    assert [f.index for f in frames] == list(range(FRAMES))
    assert [f.timestamp_ms for f in frames] == pytest.approx([i * 1000 / RATE for i in range(FRAMES)], abs=0.01)
    assert sum(calls) == FRAMES
    # The JPEGs are the frames: the square's centre is red where the clip drew it.
    for frame in (frames[0], frames[17]):
        assert (frame.width, frame.height) == SIZE
        rgb = np.asarray(Image.open(io.BytesIO(frame.jpeg)).convert("RGB")).astype(int)
        for cls, x1, y1, x2, y2 in truth[frame.index]:
            centre = rgb[int((y1 + y2) / 2), int((x1 + x2) / 2)]
            assert _distance(centre, shapes.CLASS_COLORS[cls]) < 40


def test_extract_every_second_frame(clip: tuple[Path, list[list[Box]]]) -> None:
    frames = list(extract_frames(clip[0], every=2, **LIMITS))
    assert [f.index for f in frames] == list(range(0, FRAMES, 2))
    assert [f.timestamp_ms for f in frames] == pytest.approx([i * 1000 / RATE for i in range(0, FRAMES, 2)], abs=0.01)


def test_extract_at_a_lower_rate_chooses_by_timestamp(clip: tuple[Path, list[list[Box]]]) -> None:
    frames = list(extract_frames(clip[0], fps=5, **LIMITS))
    assert [f.index for f in frames] == list(range(0, FRAMES, 3))
    assert [f.timestamp_ms for f in frames] == pytest.approx([200.0 * k for k in range(10)], abs=0.01)
    assert [f.index for f in extract_frames(clip[0], fps=60, **LIMITS)] == list(range(FRAMES))


def test_extract_by_timestamp_in_a_container_with_rounded_times(tmp_path: Path) -> None:
    path = tmp_path / "ms.mkv"  # Matroska stores whole milliseconds: 1/15 s reads as 67 ms
    write_clip(path, frames=15, codec="mpeg4")
    frames = list(extract_frames(path, fps=5, **LIMITS))
    assert [f.index for f in frames] == [0, 3, 6, 9, 12]
    assert plan_frames(probe(path), fps=5, **LIMITS) == [0, 3, 6, 9, 12]


def test_limits_fail_before_any_frame_is_decoded(clip: tuple[Path, list[list[Box]]]) -> None:
    calls: list[int] = []
    with pytest.raises(VideoError) as too_many:
        extract_frames(clip[0], max_frames=10, max_seconds=60, progress=calls.append)
    assert too_many.value.code == "too_many_frames"
    assert "30 frames" in too_many.value.message and "--every 3" in too_many.value.message
    with pytest.raises(VideoError) as too_long:
        extract_frames(clip[0], every=10, max_frames=10, max_seconds=1.5, progress=calls.append)
    assert too_long.value.code == "video_too_long"
    assert calls == []
    # Sampled down, the same clip fits.
    assert len(list(extract_frames(clip[0], every=3, max_frames=10, max_seconds=60))) == 10


# --- drawing ------------------------------------------------------------------------------------


def _distance(pixel: Any, colour: Sequence[int]) -> float:
    return float(np.abs(np.asarray(pixel, dtype=int)[:3] - np.asarray(colour, dtype=int)).max())


def _nearest(rgb: np.ndarray, x: float, y: float, colour: Sequence[int], reach: int = 1) -> float:
    """The smallest distance to ``colour`` in the (2 * reach + 1)^2 pixels around (x, y)."""
    xi, yi = round(x), round(y)
    patch = rgb[max(0, yi - reach) : yi + reach + 1, max(0, xi - reach) : xi + reach + 1].astype(int)
    return float(np.abs(patch - np.asarray(colour, dtype=int)).max(axis=2).min())


def _edge_points(box: Box) -> list[tuple[float, float]]:
    """Points on a box's outline away from its label: bottom and right edges, bottom-right corner."""
    _, x1, y1, x2, y2 = box
    return [((x1 + x2) / 2, y2 - 1), (x2 - 1, (y1 + y2) / 2), (x2 - 1, y2 - 1)]


def _assert_box_drawn(drawn: np.ndarray, plain: np.ndarray, box: Box) -> None:
    colour = PALETTE[box[0]]
    for x, y in _edge_points(box):
        before = _nearest(plain, x, y, colour)
        after = _nearest(drawn, x, y, colour)
        assert before > 90, f"the source at {(x, y)} is already near the box colour"
        assert after < 40, f"no box colour at {(x, y)}: {after} (source: {before})"


def _assert_no_box(drawn: np.ndarray, plain: np.ndarray, box: Box) -> None:
    colour = PALETTE[box[0]]
    for x, y in _edge_points(box):
        assert _nearest(drawn, x, y, colour) > 0.7 * _nearest(plain, x, y, colour)


def test_draw_result_draws_each_kind() -> None:
    image, boxes = scene(0)
    base = np.asarray(image).astype(int)
    out = draw_result(image, detections(boxes))
    assert out is not image and np.array_equal(np.asarray(image), base)  # the input is untouched
    for box in boxes:
        colour = PALETTE[box[0]]
        for x, y in _edge_points(box):
            assert _nearest(np.asarray(out), x, y, colour, reach=0) == 0
    others = {
        "kind": "mixed",
        "segments": [
            {
                "class_id": 2,
                "label": "blob",
                "confidence": 0.8,
                "box": {"x1": 10, "y1": 60, "x2": 50, "y2": 100},
                "polygon": [[10, 60], [50, 60], [50, 100], [10, 100]],
            }
        ],
        "oriented_boxes": [
            {
                "class_id": 3,
                "label": "plane",
                "confidence": 0.7,
                "cx": 120,
                "cy": 80,
                "width": 20,
                "height": 20,
                "angle": 0.785,
                "corners": [[120, 66], [134, 80], [120, 94], [106, 80]],
            }
        ],
        "poses": [
            {
                "class_id": 4,
                "label": "person",
                "confidence": 0.9,
                "box": {"x1": 60, "y1": 40, "x2": 100, "y2": 110},
                "keypoints": [[80, 50, 0.9], [70, 70, 0.2]] + [[80, 90, 0.95]] * 15,
            }
        ],
        "classes": [{"class_id": 5, "label": "tabby cat", "score": 0.91}],
        "captions": [{"text": "a red square and a blue circle", "score": -0.4}],
    }
    drawn = np.asarray(draw_result(image, others)).astype(int)
    assert _nearest(drawn, 30, 100, PALETTE[2], reach=0) == 0  # the segment's outline
    inside = drawn[80, 30]
    assert 0 < _distance(inside, base[80, 30]) < 120  # its fill: tinted, not painted over
    assert _nearest(drawn, 127, 73, PALETTE[3], reach=1) < 10  # the oriented box's edge
    assert _nearest(drawn, 80, 90, PALETTE[4], reach=0) == 0  # a keypoint
    assert _nearest(drawn, 70, 70, PALETTE[4], reach=1) > 30  # an unsure keypoint is not drawn
    banner = drawn[:6, :, :].mean()
    assert banner < base[:6, :, :].mean() - 60  # the banner darkens the top
    # A result for a bigger image is scaled down to the one drawn on.
    scaled = detections([(cls, 2 * a, 2 * b, 2 * c, 2 * d) for cls, a, b, c, d in boxes], (320, 240))
    assert np.array_equal(np.asarray(draw_result(image, scaled)), np.asarray(out))


def test_draw_detections_still_writes_an_annotated_file(tmp_path: Path) -> None:
    image, boxes = scene(3)
    source = tmp_path / "scene.png"
    image.save(source)
    out = draw_detections(source, detections(boxes)["detections"], tmp_path / "out" / "scene.png")
    drawn = np.asarray(Image.open(out).convert("RGB"))
    for box in boxes:
        for x, y in _edge_points(box):
            assert _nearest(drawn, x, y, PALETTE[box[0]], reach=0) == 0


def test_annotate_images_applies_exif_orientation_and_keeps_names(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), (200, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 20 x 40 upright
    rotated = tmp_path / "a" / "photo.jpg"
    rotated.parent.mkdir()
    stored.save(rotated, exif=exif.tobytes(), quality=95)
    twin = tmp_path / "b" / "photo.jpg"
    twin.parent.mkdir()
    stored.save(twin, quality=95)
    box = {"class_id": 0, "label": "thing", "confidence": 0.5, "x1": 2, "y1": 25, "x2": 18, "y2": 38}
    written = annotate_images([(rotated, {"detections": [box]}), (twin, {"detections": []})], tmp_path / "out")
    assert [p.name for p in written] == ["photo.jpg", "photo-2.jpg"]
    upright = Image.open(written[0])
    assert upright.size == (20, 40)
    assert _nearest(np.asarray(upright.convert("RGB")), 10, 37, PALETTE[0]) < 40  # the box's bottom edge
    assert Image.open(written[1]).size == (40, 20)


# --- rendering ----------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_render_video_draws_held_results_on_every_source_frame(
    tmp_path: Path, clip: tuple[Path, list[list[Box]]], codec: str
) -> None:
    path, truth = clip
    analysed = {i: detections(truth[i]) for i in range(0, FRAMES, 2)}  # as if extracted with --every 2
    calls: list[int] = []
    report = render_video(path, analysed, tmp_path / "out.mp4", codec=codec, progress=calls.append)
    assert report.codec == codec
    assert report.frames_written == FRAMES and report.frames_drawn == FRAMES
    assert report.rate == Fraction(RATE) and report.fps == pytest.approx(15.0)
    assert (report.width, report.height) == SIZE
    assert sum(calls) == FRAMES
    written = probe(report.path)
    assert written.frame_count == FRAMES and written.rate == Fraction(RATE)
    assert written.codec == {"libx264": "h264", "mpeg4": "mpeg4"}[codec]
    assert written.duration_s == pytest.approx(FRAMES / RATE, abs=0.01)
    out, plain = decoded_frames(report.path), decoded_frames(path)
    assert len(out) == FRAMES
    for index in (0, 10, 24):  # analysed frames: their own boxes
        for box in truth[index]:
            _assert_box_drawn(out[index], plain[index], box)
    for index in (1, 11, 29):  # between analysed frames: the previous one's boxes, held
        for box in truth[index - 1]:
            _assert_box_drawn(out[index], plain[index], box)


def test_render_video_without_hold_draws_only_analysed_frames(
    tmp_path: Path, clip: tuple[Path, list[list[Box]]]
) -> None:
    path, truth = clip
    analysed = {i: detections(truth[i]) for i in range(0, FRAMES, 3)}
    report = render_video(path, analysed, tmp_path / "out.mp4", hold=False)
    assert report.frames_written == FRAMES and report.frames_drawn == 10
    out, plain = decoded_frames(report.path), decoded_frames(path)
    for box in truth[6]:
        _assert_box_drawn(out[6], plain[6], box)
    for box in truth[7]:
        _assert_no_box(out[7], plain[7], box)


def test_render_video_falls_back_to_mpeg4_without_h264(
    tmp_path: Path, clip: tuple[Path, list[list[Box]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render, "encoder_available", lambda name: name != "libx264")
    report = render_video(clip[0], {0: detections(clip[1][0])}, tmp_path / "out.mp4")
    assert report.codec == "mpeg4"
    assert probe(report.path).codec == "mpeg4"
    assert report.frames_written == FRAMES


def test_render_video_makes_odd_sides_even(tmp_path: Path) -> None:
    path = tmp_path / "odd.mkv"
    write_clip(path, size=(75, 51), frames=6, codec="ffv1")
    report = render_video(path, {}, tmp_path / "out.mp4")
    assert (report.width, report.height) == (76, 52)
    assert report.codec == "libx264" and report.frames_written == 6
    assert probe(report.path).frame_count == 6


def test_render_video_refuses_what_is_not_a_video(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(VideoError):
        render_video(bad, {}, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


# --- export -------------------------------------------------------------------------------------


def test_export_rows_to_csv_and_json(tmp_path: Path, clip: tuple[Path, list[list[Box]]]) -> None:
    truth = clip[1]
    results: dict[int, dict[str, Any]] = {i: detections(truth[i]) for i in (0, 2, 4)}
    results[6] = {"kind": "detections", "image": {"width": 160, "height": 120}, "detections": []}
    results[8] = {"kind": "captions", "captions": [{"text": "two shapes", "score": -0.5}]}
    results[10] = {"kind": "classifications", "classes": [{"class_id": 3, "label": "shape", "score": 0.8}]}
    results[12] = {
        "kind": "segments",
        "segments": [
            {
                "class_id": 1,
                "label": "circle",
                "confidence": 0.7,
                "box": {"x1": 1, "y1": 2, "x2": 3, "y2": 4},
                "polygon": [[1, 2], [3, 2], [3, 4]],
            }
        ],
    }
    stamps = {i: i * 1000 / RATE for i in range(FRAMES)}
    rows = export_rows(results, stamps)
    assert len(rows) == 3 * 2 + 0 + 1 + 1 + 1
    assert all(tuple(row) == ROW_FIELDS for row in rows)
    first = rows[0]
    _, x1, y1, x2, y2 = truth[0][0]
    assert first == {
        "frame": 0,
        "timestamp_ms": 0.0,
        "kind": "detection",
        "label": "square",
        "class_id": 0,
        "confidence": 0.9,
        "x1": x1,
        "y1": y1,
        "x2": x2,
        "y2": y2,
        "text": None,
        "points": None,
    }
    assert [r["frame"] for r in rows] == [0, 0, 2, 2, 4, 4, 8, 10, 12]
    assert rows[6]["kind"] == "caption" and rows[6]["text"] == "two shapes" and rows[6]["confidence"] == -0.5
    assert rows[7]["kind"] == "class" and rows[7]["label"] == "shape" and rows[7]["confidence"] == 0.8
    assert rows[8]["kind"] == "segment" and json.loads(rows[8]["points"]) == [[1, 2], [3, 2], [3, 4]]
    assert rows[2]["timestamp_ms"] == pytest.approx(133.333, abs=0.01)

    csv_path = write_csv(rows, tmp_path / "rows.csv")
    with csv_path.open(newline="") as handle:
        read = list(csv.DictReader(handle))
    assert len(read) == len(rows)
    assert tuple(read[0]) == ROW_FIELDS
    assert read[0]["label"] == "square" and float(read[0]["x1"]) == x1 and read[0]["text"] == ""

    json_path = write_json(rows, tmp_path / "rows.json")
    assert json.loads(json_path.read_text()) == rows


def test_frames_planned_earlier_are_extracted_whatever_the_clip_holds(tmp_path: Path) -> None:
    """A submission plans first (--fps / --every), then extracts exactly those frames: the limit on
    frames applies to what was planned, not to the whole clip (a long clip sampled sparsely)."""
    path = tmp_path / "clip.mp4"
    write_clip(path)
    frames = list(extract_frames(path, indices=[0, 10, 20], max_frames=5, max_seconds=60))
    assert [f.index for f in frames] == [0, 10, 20]
    with pytest.raises(VideoError) as raised:
        extract_frames(path, indices=list(range(6)), max_frames=5, max_seconds=60)
    assert raised.value.code == "too_many_frames"
