"""JPEGs checked on their header by the worker (images.inspect_jpeg) and decoded on the model's
device (models/device_decode.py). No GPU here: the device is the CPU, through the same
torchvision call nvjpeg answers on CUDA; a fake that refuses on demand stands in for a device
that cannot decode an image."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pytest
import torchvision.io
from PIL import Image

from tests.unit.test_images import LIMITS, RECT, assert_maps_back, big_scene, encode, red_box
from visionq.errors import ImageRejected
from visionq.images import DecodedImage, EncodedJpeg, decode_image, inspect_jpeg
from visionq.models.device_decode import decode_frames, works_on


def inspected(data: bytes, max_side: int | None = 640) -> EncodedJpeg:
    jpeg = inspect_jpeg(data, LIMITS, max_side=max_side)
    assert jpeg is not None
    return jpeg


def photo(width: int, height: int, seed: int = 0) -> bytes:
    """Smooth gradients with a few blocks of colour: a JPEG whose pixels a resize should keep."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=2)
    for _ in range(6):
        x1, y1 = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
        pixels[y1 : y1 + 50, x1 : x1 + 50] = rng.integers(0, 255, 3)
    return encode(Image.fromarray(pixels.astype(np.uint8)), "JPEG", quality=92)


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- the header check -------------------------------------------------------------------------


def test_a_jpeg_is_checked_on_its_header_with_its_sizes_worked_out() -> None:
    jpeg = inspected(big_scene())
    assert (jpeg.stored_size, jpeg.target, jpeg.upright) == ((4000, 3000), (640, 480), None)
    assert (jpeg.original_width, jpeg.original_height) == (4000, 3000)
    assert inspected(big_scene(600, 400)).target is None  # fits: never upscaled


def test_a_rotated_jpeg_reports_its_upright_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = inspected(big_scene(exif=exif))
    assert (jpeg.original_width, jpeg.original_height) == (3000, 4000)
    assert jpeg.target == (640, 480)  # in the stored orientation, as the decoder gives it
    assert jpeg.upright is Image.Transpose.ROTATE_270


def test_what_only_the_cpu_decodes_is_left_to_it() -> None:
    assert inspect_jpeg(encode(Image.new("RGB", (40, 30)), "PNG"), LIMITS) is None
    assert inspect_jpeg(encode(Image.new("CMYK", (40, 30)), "JPEG"), LIMITS) is None
    # Not ending with its end-of-image marker: cut short (nvjpeg's hardware decoder may call that a
    # success), or with data after it.
    whole = photo(400, 300)
    assert inspect_jpeg(whole[: len(whole) * 3 // 4], LIMITS) is None
    assert inspect_jpeg(whole + b"trailing data", LIMITS) is None
    assert inspect_jpeg(whole + b"\x00" * 100, LIMITS) is not None  # padding after it is fine


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_object"),
        (b"not an image", "unsupported_format"),
        (b"\xff\xd8\xff" + b"\x00" * 10_000_000, "object_too_large"),
        (encode(Image.new("RGB", (6000, 6000)), "JPEG"), "image_too_large"),
        (b"\xff\xd8\xff\xe0" + b"\x13" * 64 + b"\xff\xd9", "undecodable_image"),
    ],
)
def test_the_header_check_rejects_as_the_cpu_decode_does(data: bytes, code: str) -> None:
    for check in (inspect_jpeg, decode_image):
        with pytest.raises(ImageRejected) as info:
            check(data, LIMITS)
        assert info.value.code == code, check


# --- the decode on the device -----------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1280, 960), (2600, 1700), (500, 300)])
def test_the_device_gives_the_cpu_paths_image(width: int, height: int) -> None:
    """The same shape as decode_image's and nearly the same pixels, reduced within 2x (bilinear),
    beyond it (antialiased), or not at all."""
    data = photo(width, height)
    [pixels] = decode_frames([inspected(data)], "cpu")
    expected = decode_image(data, LIMITS, max_side=640).rgb
    assert pixels.shape == expected.shape and pixels.dtype == np.uint8
    assert mean_difference(pixels, expected) < 2.0


def test_a_rotated_jpeg_comes_out_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = big_scene(exif=exif)
    jpeg = inspected(data)
    [pixels] = decode_frames([jpeg], "cpu")
    decoded = decode_image(data, LIMITS, max_side=640)
    assert pixels.shape == decoded.rgb.shape == (640, 480, 3)
    as_decoded = DecodedImage(pixels, "JPEG", jpeg.original_width, jpeg.original_height)
    # RECT in the upright image: stored (x, y) -> upright (H - y, x) for a 90° clockwise turn.
    upright_rect = (3000 - RECT[3], RECT[0], 3000 - RECT[1], RECT[2])
    assert_maps_back(pixels, as_decoded.scale, upright_rect)
    assert all(abs(a - b) <= 1 for a, b in zip(red_box(pixels), red_box(decoded.rgb), strict=True))


def test_a_gray_jpeg_becomes_three_equal_channels() -> None:
    gray = encode(Image.new("L", (800, 600), 77), "JPEG")
    [pixels] = decode_frames([inspected(gray)], "cpu")
    assert pixels.shape == (480, 640, 3)
    assert np.array_equal(pixels[..., 0], pixels[..., 2]) and abs(int(pixels.mean()) - 77) <= 1


def test_arrays_pass_through_in_their_place() -> None:
    array = np.zeros((10, 20, 3), np.uint8)
    frames = decode_frames([inspected(photo(800, 600)), array, inspected(photo(900, 700, seed=1))], "cpu")
    assert frames[1] is array
    assert [f.shape for f in frames] == [(480, 640, 3), (10, 20, 3), (498, 640, 3)]


def test_a_corrupt_jpeg_in_a_batch_is_refused_as_the_cpu_refuses_it() -> None:
    good = photo(800, 600)
    # Cut short after the header was checked: what a device that reads only the header would get.
    truncated = dataclasses.replace(inspected(good), data=good[: len(good) // 2])
    with pytest.raises(ImageRejected) as info:
        decode_frames([inspected(good), truncated], "cpu")
    assert info.value.code == "undecodable_image"
    [alone] = decode_frames([inspected(good)], "cpu")
    assert alone.shape == (480, 640, 3)


class RefusingDevice:
    """torchvision's decode_jpeg, except that it refuses batches and images whose bytes hold a marker."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.real = torchvision.io.decode_jpeg
        self.calls: list[int] = []

    def __call__(self, encoded: Any, **kwargs: Any) -> Any:
        batch = encoded if isinstance(encoded, list) else [encoded]
        self.calls.append(len(batch))
        if any(self.marker in bytes(t.numpy()) for t in batch):
            raise RuntimeError("nvjpeg: unsupported")
        return self.real(encoded, **kwargs)


def test_an_image_the_device_refuses_is_decoded_on_the_cpu_and_its_batch_mates_on_the_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = b"VISIONQ-NOT-ON-DEVICE"
    image = Image.open(io.BytesIO(photo(1280, 960)))
    refused = encode(image, "JPEG", quality=92, comment=marker)  # a valid JPEG the fake refuses
    device = RefusingDevice(marker)
    monkeypatch.setattr(torchvision.io, "decode_jpeg", device)
    frames = decode_frames([inspected(photo(800, 600)), inspected(refused)], "cpu")
    assert device.calls == [2, 1, 1]  # the batch, then each alone
    assert mean_difference(frames[1], decode_image(refused, LIMITS, max_side=640).rgb) == 0  # the CPU's own
    assert frames[0].shape == (480, 640, 3)


def test_an_image_of_another_size_than_its_header_is_left_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torchvision.io.decode_jpeg

    def half_size(encoded: Any, **kwargs: Any) -> Any:
        decoded = real(encoded, **kwargs)
        return [d[:, ::2, ::2] for d in decoded] if isinstance(decoded, list) else decoded[:, ::2, ::2]

    monkeypatch.setattr(torchvision.io, "decode_jpeg", half_size)
    data = photo(1280, 960)
    [pixels] = decode_frames([inspected(data)], "cpu")
    assert np.array_equal(pixels, decode_image(data, LIMITS, max_side=640).rgb)


# --- the check at the model process's start ---------------------------------------------------


def test_a_device_that_decodes_as_the_cpu_does_is_used() -> None:
    assert works_on("cpu")


def test_a_device_that_cannot_decode_or_decodes_wrong_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torchvision.io.decode_jpeg

    def refuses(encoded: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision was built without nvjpeg")

    def garbage(encoded: Any, **kwargs: Any) -> Any:
        return [d * 0 for d in real(encoded, **kwargs)]

    def wrong_size(encoded: Any, **kwargs: Any) -> Any:
        return [d[:, :-8] for d in real(encoded, **kwargs)]

    for fake in (refuses, garbage, wrong_size):
        monkeypatch.setattr(torchvision.io, "decode_jpeg", fake)
        assert not works_on("cpu"), fake.__name__
