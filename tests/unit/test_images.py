from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageDraw

from tests.integration.fault_harness import png_header_only
from visionq.errors import ImageRejected
from visionq.images import ImageLimits, decode_image, sniff_format

LIMITS = ImageLimits(max_bytes=5_000_000, max_pixels=30_000_000)
RED = (230, 20, 20)
# Drawn off the 8-pixel JPEG block grid, so a box that lands right is not luck of alignment.
RECT = (1203, 611, 2417, 1789)  # x1, y1, x2, y2 (exclusive), in the stored 4000 x 3000 image


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


# --- decoding to the model's size (max_side) ---


def big_scene(width: int = 4000, height: int = 3000, exif: Image.Exif | None = None) -> bytes:
    """A gray ``width`` x ``height`` JPEG with a red rectangle at RECT and a blue band down the left edge."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.rectangle((RECT[0], RECT[1], RECT[2] - 1, RECT[3] - 1), fill=RED)
    draw.rectangle((0, 0, width // 8 - 1, height - 1), fill=(20, 20, 230))
    params: dict[str, object] = {"quality": 90}
    if exif is not None:
        params["exif"] = exif.tobytes()
    return encode(image, "JPEG", **params)


def red_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """x1, y1, x2, y2 (exclusive) of the pixels that are mostly red."""
    mask = (rgb[..., 0] > 128) & (rgb[..., 1] < 128) & (rgb[..., 2] < 128)
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def assert_maps_back(rgb: np.ndarray, scale: tuple[float, float], expected: tuple[int, int, int, int]) -> None:
    sx, sy = scale
    x1, y1, x2, y2 = red_box(rgb)
    found = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
    # Within two pixels of the reduced image, i.e. 2 * scale pixels of the original.
    tolerance = (2 * sx, 2 * sy, 2 * sx, 2 * sy)
    assert all(abs(f - e) <= t for f, e, t in zip(found, expected, tolerance, strict=True)), (found, expected)


def test_large_jpeg_is_reduced_to_max_side() -> None:
    decoded = decode_image(big_scene(), LIMITS, max_side=640)
    assert decoded.rgb.shape == (480, 640, 3)
    assert decoded.rgb.dtype == np.uint8
    assert (decoded.width, decoded.height) == (640, 480)
    assert (decoded.original_width, decoded.original_height) == (4000, 3000)
    assert decoded.scale == (6.25, 6.25)
    assert decoded.format == "JPEG"


def test_box_on_the_reduced_image_maps_back_through_scale() -> None:
    decoded = decode_image(big_scene(), LIMITS, max_side=640)
    assert_maps_back(decoded.rgb, decoded.scale, RECT)


def test_exif_rotation_on_a_reduced_jpeg_is_upright_with_swapped_original_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, "rotate 90° clockwise to view"
    decoded = decode_image(big_scene(exif=exif), LIMITS, max_side=640)
    assert (decoded.original_width, decoded.original_height) == (3000, 4000)
    assert decoded.rgb.shape == (640, 480, 3)
    assert decoded.scale == (6.25, 6.25)
    # The stored image's left edge (the blue band) is the upright image's top edge.
    top, bottom = decoded.rgb[:40], decoded.rgb[-40:]
    assert top[..., 2].mean() > 200 and top[..., 0].mean() < 50
    assert bottom[..., 2].mean() < 160
    # Rotating 90° clockwise takes stored (x, y) to upright (stored_height - y, x).
    x1, y1, x2, y2 = RECT
    assert_maps_back(decoded.rgb, decoded.scale, (3000 - y2, x1, 3000 - y1, x2))


@pytest.mark.parametrize("orientation", [5, 7, 8])
def test_other_axis_swapping_orientations_report_the_upright_size(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(big_scene(1600, 800, exif=exif), LIMITS, max_side=200)
    assert (decoded.original_width, decoded.original_height) == (800, 1600)
    assert decoded.rgb.shape == (200, 100, 3)
    unreduced = decode_image(big_scene(1600, 800, exif=exif), LIMITS)
    assert unreduced.rgb.shape == (1600, 800, 3)
    # Reduced and full-size agree on where things are (i.e. the same transposition was applied).
    shrunk = np.asarray(Image.fromarray(unreduced.rgb).resize((100, 200), Image.Resampling.BILINEAR))
    assert np.abs(shrunk.astype(int) - decoded.rgb.astype(int)).mean() < 4


def test_png_is_reduced_too() -> None:
    image = Image.new("RGBA", (3000, 1000), (0, 0, 255, 255))
    image.paste((0, 0, 0, 0), (0, 0, 1500, 1000))  # left half transparent: white once decoded
    decoded = decode_image(encode(image, "PNG"), LIMITS, max_side=640)
    assert decoded.rgb.shape == (213, 640, 3)  # 1000 * 640 / 3000 = 213.3
    assert (decoded.original_width, decoded.original_height) == (3000, 1000)
    assert decoded.format == "PNG"
    assert decoded.rgb[100, 100].tolist() == [255, 255, 255]
    assert decoded.rgb[100, 540].tolist() == [0, 0, 255]


@pytest.mark.parametrize(
    ("image", "fmt", "colour"),
    [
        (Image.new("CMYK", (80, 60), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
        (Image.new("L", (80, 60), 128), "PNG", (128, 128, 128)),
        (Image.fromarray(np.full((60, 80), 32768, dtype=np.uint16)), "PNG", (127, 127, 127)),
        (Image.new("RGBA", (80, 60), (255, 0, 0, 0)), "PNG", (255, 255, 255)),
        (Image.new("LA", (80, 60), (0, 255)), "PNG", (0, 0, 0)),
        (Image.new("1", (80, 60), 1), "BMP", (255, 255, 255)),
        (Image.new("RGB", (80, 60), (10, 20, 30)), "WEBP", (10, 20, 30)),
        (Image.new("RGB", (80, 60), (10, 20, 30)), "BMP", (10, 20, 30)),
        (Image.new("RGB", (80, 60), (10, 20, 30)), "TIFF", (10, 20, 30)),
    ],
)
def test_any_mode_is_reduced_to_rgb(image: Image.Image, fmt: str, colour: tuple[int, int, int]) -> None:
    decoded = decode_image(encode(image, fmt), LIMITS, max_side=40)
    assert decoded.rgb.shape == (30, 40, 3)
    assert decoded.rgb.dtype == np.uint8
    assert (decoded.original_width, decoded.original_height) == (80, 60)
    assert np.abs(decoded.rgb[15, 20].astype(int) - colour).max() <= 8


def test_palette_with_transparency_is_reduced() -> None:
    image = Image.new("P", (80, 60), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(0, (0, 0, 40, 60))  # left half: the transparent index
    decoded = decode_image(encode(image, "PNG", transparency=0), LIMITS, max_side=40)
    assert decoded.rgb[15, 5].tolist() == [255, 255, 255]
    assert decoded.rgb[15, 35].tolist() == [0, 255, 0]


def test_image_that_fits_is_untouched() -> None:
    rng = np.random.default_rng(1)
    for size in ((300, 200), (640, 480)):  # smaller than max_side, and exactly max_side
        data = encode(Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)), "JPEG")
        plain, fitted = decode_image(data, LIMITS), decode_image(data, LIMITS, max_side=640)
        assert np.array_equal(plain.rgb, fitted.rgb)
        assert (fitted.original_width, fitted.original_height) == size
        assert fitted.scale == (1.0, 1.0)


def test_without_max_side_nothing_changes() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.new("RGB", (40, 20), (0, 0, 0)), "JPEG", exif=exif.tobytes())
    default, explicit = decode_image(data, LIMITS), decode_image(data, LIMITS, max_side=None)
    assert np.array_equal(default.rgb, explicit.rgb)
    assert default.rgb.shape == (40, 20, 3)
    assert (default.original_width, default.original_height) == (20, 40)
    assert default.scale == (1.0, 1.0)


def test_a_thin_image_keeps_at_least_one_pixel() -> None:
    decoded = decode_image(encode(Image.new("RGB", (4000, 10), (9, 9, 9)), "PNG"), LIMITS, max_side=100)
    assert decoded.rgb.shape == (1, 100, 3)
    assert (decoded.original_width, decoded.original_height) == (4000, 10)


def test_pixel_limit_is_checked_on_the_header_even_when_reducing() -> None:
    with pytest.raises(ImageRejected) as info:
        decode_image(png_header_only(30000, 30000), LIMITS, max_side=640)
    assert info.value.code == "image_too_large"


def test_max_side_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_side"):
        decode_image(big_scene(64, 48), LIMITS, max_side=0)


def test_jpeg_decoder_itself_reduces(monkeypatch: pytest.MonkeyPatch) -> None:
    """libjpeg's scaled decode: the decoder produces a quarter of each side, not the full size."""
    shapes: list[tuple[int, ...]] = []
    decode = simplejpeg.decode_jpeg

    def spy(*args: object, **kwargs: object) -> np.ndarray:
        pixels: np.ndarray = decode(*args, **kwargs)
        shapes.append(pixels.shape)  # what the decoder itself produced
        return pixels

    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy)
    decoded = decode_image(big_scene(), LIMITS, max_side=640)
    assert decoded.rgb.shape == (480, 640, 3)
    # 4000 x 3000 -> 640 x 480: libjpeg's 1/4 scale (1/8 would fall below the target).
    assert shapes == [(750, 1000, 3)]


def pillow_reference(data: bytes, max_side: int | None) -> np.ndarray:
    """What Pillow alone makes of a JPEG, reduced as decode_image reduces (draft, then OpenCV)."""
    from visionq.images import _fit, _reduce

    image = Image.open(io.BytesIO(data))
    target = _fit(*image.size, max_side)
    if target is not None:
        image.draft(image.mode, target)
    array = np.asarray(image.convert("RGB"))
    return array if target is None else _reduce(array, target)


@pytest.mark.parametrize("max_side", [None, 640, 300])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_pixels_are_pillows(mode: str, max_side: int | None) -> None:
    """The JPEG path (simplejpeg) gives Pillow's pixels: the same libjpeg-turbo, the same IDCT and
    upsampling, at full size and at each scaled decode (1000 x 750 -> 640: none; -> 300: 1/2)."""
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (750 // 10, 1000 // 10, 3), dtype=np.uint8)
    photo = Image.fromarray(noise).resize((1000, 750), Image.Resampling.BICUBIC).convert(mode)
    data = encode(photo, "JPEG", quality=90)
    decoded = decode_image(data, LIMITS, max_side=max_side)
    reference = pillow_reference(data, max_side)
    assert decoded.rgb.shape == reference.shape
    assert int(np.abs(decoded.rgb.astype(int) - reference.astype(int)).max()) <= 1


def test_a_jpeg_libjpeg_only_warns_about_is_decoded_as_pillow_decodes_it() -> None:
    """A restart marker where none belongs, inside the scan: libjpeg warns ("premature end of data
    segment") and goes on, simplejpeg in strict mode refuses, Pillow decodes: the image is not lost
    to the faster path, and it is what Pillow makes of it."""
    noise = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    data = bytearray(encode(Image.fromarray(noise), "JPEG", quality=90))
    scan = data.index(b"\xff\xda")
    data[scan + 400 : scan + 404] = b"\xff\xd0\xff\xd3"
    with pytest.raises(ValueError, match="Corrupt JPEG data"):
        simplejpeg.decode_jpeg(bytes(data), strict=True)
    decoded = decode_image(bytes(data), LIMITS)
    assert decoded.rgb.shape == (120, 160, 3)
    assert np.array_equal(decoded.rgb, pillow_reference(bytes(data), None))


_PEAK_RSS_CHILD = textwrap.dedent(
    """
    import sys
    from visionq.images import ImageLimits, decode_image

    def high_water_mark() -> int:
        # VmHWM: this process's own peak RSS. Not ru_maxrss, which Linux carries over from the
        # parent (pytest, a few hundred MB) across fork and exec.
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    data = open(sys.argv[1], "rb").read()
    max_side = int(sys.argv[2]) or None
    before = high_water_mark()
    decoded = decode_image(data, ImageLimits(max_pixels=50_000_000), max_side=max_side)
    print(high_water_mark() - before, decoded.width)
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_reduced_jpeg_decode_never_holds_the_full_bitmap(tmp_path: Path) -> None:
    """Peak resident memory of a 24 MP decode, in a fresh process: full size vs. max_side=640."""
    path = tmp_path / "big.jpg"
    path.write_bytes(big_scene(6000, 4000))

    def peak_growth(max_side: int) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS_CHILD, str(path), str(max_side)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
        return int(out[0])

    full, reduced = peak_growth(0), peak_growth(640)
    # Full size: the 72 MB array. Reduced: the decoder's 750 x 500 (1.1 MB) and the 640 x 427
    # result; the full bitmap would be 72 MB.
    assert full > 72_000_000
    assert reduced < 16_000_000


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize("channels", [1, 3])
def test_array_transposes_are_pillows(orientation: int, channels: int) -> None:
    """The reduced image is turned upright as an array: the same pixels as Pillow's transpose."""
    from visionq.images import _UPRIGHT, upright_pixels

    array = (np.arange(5 * 7 * channels) % 251).astype(np.uint8).reshape((5, 7, channels)[: 2 + (channels > 1)])
    method = _UPRIGHT[orientation]
    assert np.array_equal(upright_pixels(array, method), np.asarray(Image.fromarray(array).transpose(method)))


def test_opencv_runs_on_the_calling_thread_alone_wherever_images_are_decoded() -> None:
    """A decode process (or thread) is the unit of parallelism: OpenCV's own pool would split each
    resize over the cores for no gain in wall time and about a millisecond more CPU per image
    (bench/RESULTS.md run 19). A fresh interpreter, since Ultralytics, imported by other tests, turns
    the pool off itself."""
    if os.cpu_count() == 1:
        pytest.skip("one CPU: OpenCV has no pool to turn off")
    probe = "import cv2; before = cv2.getNumThreads(); import visionq.images; print(before, cv2.getNumThreads())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] != "1", "OpenCV started single-threaded: this test could not tell"
    assert out[1] == "1"
