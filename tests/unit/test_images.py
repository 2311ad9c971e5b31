from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.integration.fault_harness import png_header_only
from visionq.errors import ImageRejected
from visionq.images import ImageLimits, decode_image, sniff_format

LIMITS = ImageLimits(max_bytes=5_000_000, max_pixels=20_000_000)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def test_exif_orientation_is_applied() -> None:
    # A 40x20 landscape pixel grid stored with "rotate 90° CW to view" (orientation 6).
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95), LIMITS)
    assert (decoded.width, decoded.height) == (20, 40)
    # after rotating 90° clockwise, the left edge becomes the top edge
    assert decoded.rgb[:5, :, 0].mean() > 200
    assert decoded.rgb[-5:, :, 0].mean() < 50


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "JPEG"),  # CMYK red
        (Image.new("L", (8, 6), 128), "PNG"),
        (Image.new("RGB", (8, 6), (10, 20, 30)), "WEBP"),
        (Image.new("RGB", (8, 6), (10, 20, 30)), "BMP"),
        (Image.new("RGB", (8, 6), (10, 20, 30)), "TIFF"),
    ],
)
def test_any_mode_becomes_rgb(image: Image.Image, fmt: str) -> None:
    decoded = decode_image(encode(image, fmt), LIMITS)
    assert decoded.rgb.shape == (6, 8, 3)
    assert decoded.rgb.dtype == np.uint8
    assert decoded.format == fmt


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    image = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    decoded = decode_image(encode(image, "PNG"), LIMITS)
    assert 120 <= int(decoded.rgb[0, 0, 0]) <= 135


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    decoded = decode_image(encode(image, "PNG"), LIMITS)
    assert decoded.rgb[0, 0].tolist() == [255, 255, 255]


def test_palette_image_with_transparency() -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    decoded = decode_image(encode(image, "PNG", transparency=0), LIMITS)
    assert decoded.rgb[0, 0].tolist() == [0, 255, 0]


def test_cmyk_colours_survive() -> None:
    decoded = decode_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100), LIMITS)
    r, g, b = decoded.rgb[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_object"),
        (b"this is a text file, not a jpeg\n", "unsupported_format"),
        (b"GIF89a" + b"\x00" * 32, "unsupported_format"),  # a real format, not on the allowlist
        (png_header_only(30000, 30000), "image_too_large"),
        (b"\xff\xd8\xff" + b"\x00" * 10_000_000, "object_too_large"),
    ],
)
def test_rejections_carry_a_code(data: bytes, code: str) -> None:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, LIMITS)
    assert info.value.code == code
    assert info.value.message


def test_truncated_jpeg_is_undecodable() -> None:
    rng = np.random.default_rng(0)
    whole = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageRejected) as info:
        decode_image(whole[: len(whole) // 2], LIMITS)
    assert info.value.code == "undecodable_image"


def test_format_comes_from_bytes_not_name() -> None:
    png = encode(Image.new("RGB", (2, 2)), "PNG")
    assert sniff_format(png) == "PNG"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"<html>") is None
