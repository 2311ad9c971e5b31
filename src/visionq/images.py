"""Turning object bytes into an RGB array the model can take, within limits.

The format is recognised from the bytes, never from the key or the declared content type, and
Pillow is told to try only the allowed decoders, so a file that merely claims to be a JPEG never
reaches any other parser.

The worker holds every decoded image it has prefetched, so with ``max_side`` the image is decoded
straight to (about) the size the model takes rather than at full resolution: a 50 MP photo is
~150 MB as RGB, ~1 MB at 640 px. JPEGs are reduced by the decoder itself (draft mode: libjpeg's
scaled IDCT at 1/2, 1/4 or 1/8), so the full-size bitmap never exists; other formats are decoded
whole, then resized. The upright image's original size is kept so that coordinates found on the
reduced image can be mapped back (``DecodedImage.scale``).

JPEG pixels come from simplejpeg (libjpeg-turbo's TurboJPEG API, straight into a NumPy array)
rather than Pillow, which keeps RGB at four bytes a pixel and repacks it on the way out: 5.04
against 6.76 ms per 0.68 MP photo decoded to 640 (bench/decode_cpu.py, bench/RESULTS.md run 13).
Pillow still reads the header (size limit, EXIF orientation) and decodes whatever simplejpeg will
not take: CMYK, or a file libjpeg only warns about, where Pillow's verdict (decode or reject)
stays the one that counts.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2  # the worker's (opencv-python, an Ultralytics dependency): the reduction below
import numpy as np
import simplejpeg  # the worker's: JPEG pixels (libjpeg-turbo, no Pillow bitmap in between)
from PIL import ExifTags, Image

from visionq.config import IMAGE_FORMATS
from visionq.errors import ImageRejected

ALLOWED_FORMATS = tuple(f.name for f in IMAGE_FORMATS)

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

# EXIF orientation -> the transposition that makes the stored image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset(
    {Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270}
)

# The reduction is OpenCV's: bilinear within 2x (a JPEG, which the decoder has already brought to
# within 2x of the target; and what Ultralytics' letterbox does itself, so a detector sees the
# pixels it would have made from the full image), area averaging beyond (a full-size PNG or
# TIFF: bilinear would alias). Measured at 1.1 ms per 0.7 MP image against Pillow's antialiased
# bilinear at 3.0 ms, most of what decoding cost (bench/RESULTS.md, the worker's ceiling).
_LINEAR_UP_TO = 2.0

# OpenCV's own thread pool off, as Ultralytics turns it off: images are decoded in parallel by
# processes (decode_pool) or threads already, and a resize split over the cores cost about a
# millisecond more CPU per image for no gain in wall time (bench/RESULTS.md, run 19).
cv2.setNumThreads(0)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # H x W x 3, uint8, upright; at most max_side on its longer side
    format: str
    original_width: int  # the upright image's size before any reduction
    original_height: int

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def scale(self) -> tuple[float, float]:
        """Multiply rgb coordinates (x, y) by these to get original-image coordinates."""
        return self.original_width / self.width, self.original_height / self.height


def sniff_format(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG that passed every check ``decode_image`` makes before a pixel is decoded (size, pixel
    count, format, mode), left for the model's device to decode (``models/device_decode.py``)."""

    data: bytes
    stored_size: tuple[int, int]  # (width, height) as stored, before orientation
    target: tuple[int, int] | None  # reduce to this (stored orientation); None: keep the stored size
    upright: Image.Transpose | None  # the transposition that makes it upright, after the reduction
    original_width: int  # the upright image's size, as DecodedImage's
    original_height: int


def decode_image(data: bytes, limits: ImageLimits, *, max_side: int | None = None) -> DecodedImage:
    """Decode ``data`` to upright RGB; raise ImageRejected with a code.

    With ``max_side``, the result's longer side is at most ``max_side`` (aspect ratio kept, never
    upscaled); ``original_width``/``original_height`` stay the upright full-size image's.
    """
    fmt = _checked_format(data, limits, max_side)
    with _rejecting(fmt, limits):
        image = _opened(data, limits, fmt)
        width, height = image.size
        # The target in the stored orientation: orientation only transposes, so the longer side,
        # and with it the reduction factor, is the same before and after it.
        target = _fit(width, height, max_side)
        array = _jpeg_pixels(data, image.mode, width, height, target) if fmt == "JPEG" else None
        if array is None:
            array = _pillow_pixels(image, target)
        # A JPEG's EXIF is read with its header; a PNG's eXIf chunk may follow its pixel data, so
        # this comes after the decode.
        upright = _upright(image)
        if target is not None and (array.shape[1], array.shape[0]) != target:
            array = _reduce(array, target)
        # Transpose last, on the reduced image: cheaper, and it commutes with the resize.
        array = upright_pixels(array, upright)
        if array.ndim == 2:
            array = cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    if upright in _SWAPS_AXES:
        width, height = height, width
    return DecodedImage(rgb=np.ascontiguousarray(array), format=fmt, original_width=width, original_height=height)


def inspect_jpeg(data: bytes, limits: ImageLimits, *, max_side: int | None = None) -> EncodedJpeg | None:
    """``decode_image``'s checks on a JPEG's header alone (the same ImageRejected codes), for its
    pixels to be decoded on the model's device; None for what only the CPU decodes here: another
    format, a JPEG in CMYK / YCCK, or one that does not end with its end-of-image marker (cut
    short, or with data after it): nvjpeg's hardware decoder may report success on a truncated
    stream, where libjpeg's verdict is ``undecodable_image``."""
    fmt = _checked_format(data, limits, max_side)
    if fmt != "JPEG" or not data[-1024:].rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None
    with _rejecting(fmt, limits):
        image = _opened(data, limits, fmt)
        if image.mode not in ("RGB", "L"):
            return None
        upright = _upright(image)
    width, height = image.size
    upright_size = (height, width) if upright in _SWAPS_AXES else (width, height)
    return EncodedJpeg(data, (width, height), _fit(width, height, max_side), upright, *upright_size)


def _checked_format(data: bytes, limits: ImageLimits, max_side: int | None) -> str:
    """The format recognised from the bytes, after the checks that need no parser."""
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    if not data:
        raise ImageRejected("the object is empty (0 bytes)", code="empty_object")
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            f"the object is {len(data)} bytes, over the limit of {limits.max_bytes}",
            code="object_too_large",
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected(
            "the object is not an image in a supported format (" + ", ".join(ALLOWED_FORMATS) + ")",
            code="unsupported_format",
        )
    return fmt


@contextlib.contextmanager
def _rejecting(fmt: str, limits: ImageLimits) -> Iterator[None]:
    """What the parsers raise, as ImageRejected with a code."""
    try:
        with warnings.catch_warnings():
            # Our own pixel check (_opened) replaces Pillow's bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own check, at open, for the very largest
        raise ImageRejected(
            f"the image's pixel count is over the limit of {limits.max_pixels}", code="image_too_large"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(
            f"the {fmt} image could not be decoded ({type(exc).__name__})", code="undecodable_image"
        ) from exc


def _opened(data: bytes, limits: ImageLimits, fmt: str) -> Image.Image:
    """The image's header read by Pillow (only ``fmt``'s parser), its pixel count checked."""
    image = Image.open(io.BytesIO(data), formats=[fmt])
    width, height = image.size
    # On the header's size, before a single pixel is decoded (draft mode does not change it).
    if width * height > limits.max_pixels:
        raise ImageRejected(
            f"the image is {width}x{height} pixels, over the limit of {limits.max_pixels}",
            code="image_too_large",
        )
    return image


def _upright(image: Image.Image) -> Image.Transpose | None:
    return _UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation, 1))


def _jpeg_pixels(data: bytes, mode: str, width: int, height: int, target: tuple[int, int] | None) -> np.ndarray | None:
    """A JPEG's pixels (H x W x 3, or H x W when gray) by simplejpeg; None for Pillow to decode.

    With a ``target``, the decoder reduces by the largest of 1/2, 1/4, 1/8 that keeps both sides at
    least the target's (libjpeg-turbo's SIMD scaled IDCTs; its other eighths are slower than a
    full decode), so the resize after it only ever shrinks, by under 2x unless the image is over
    16x the target, and nothing full-size is allocated."""
    if mode not in ("RGB", "L"):  # CMYK / YCCK: Pillow knows Adobe's inverted CMYK
        return None
    factor = 1
    while (
        target is not None and factor < 8 and width // (2 * factor) >= target[0] and height // (2 * factor) >= target[1]
    ):
        factor *= 2
    try:
        pixels: np.ndarray = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB" if mode == "RGB" else "GRAY",
            # Exactly 1/factor: libjpeg rounds a scaled side up, and no smaller eighth is allowed.
            min_width=-(-width // factor),
            min_height=-(-height // factor),
            min_factor=factor,
            strict=True,  # a warning too (corrupt data, truncation): Pillow then decides
        )
    except ValueError:
        return None
    return pixels[:, :, 0] if mode == "L" else pixels


def _pillow_pixels(image: Image.Image, target: tuple[int, int] | None) -> np.ndarray:
    """The pixels of any allowed format by Pillow: H x W x 3, or H x W when gray (one byte a pixel
    until the end)."""
    if target is not None and image.format == "JPEG":
        image.draft("RGB", target)  # libjpeg's own reduction, as in _jpeg_pixels
    image.load()
    return np.asarray(_to_rgb(image))


def _reduce(array: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    factor = array.shape[1] / target[0]
    interpolation = cv2.INTER_LINEAR if factor <= _LINEAR_UP_TO else cv2.INTER_AREA
    reduced: np.ndarray = cv2.resize(array, target, interpolation=interpolation)
    return reduced


def upright_pixels(array: np.ndarray, method: Image.Transpose | None) -> np.ndarray:
    """Pillow's transposition ``method`` on an array (rows are y, columns x); None: as it is.

    OpenCV's, a contiguous array out: 0.04-0.17 ms per 640 x 480 image (TRANSVERSE, two steps,
    about 1), where numpy's reversed or swapped view made contiguous cost 1.5-2.1 ms
    (bench/channel_order.py, bench/RESULTS.md run 19); a phone's photo usually needs one."""
    if method is None:
        return array
    turned: np.ndarray = _TURNS[method](array)
    return turned


_TURNS: dict[Image.Transpose, Callable[[np.ndarray], np.ndarray]] = {
    Image.Transpose.FLIP_LEFT_RIGHT: lambda a: cv2.flip(a, 1),
    Image.Transpose.FLIP_TOP_BOTTOM: lambda a: cv2.flip(a, 0),
    Image.Transpose.ROTATE_180: lambda a: cv2.flip(a, -1),
    Image.Transpose.ROTATE_90: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),  # as Pillow's
    Image.Transpose.ROTATE_270: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    Image.Transpose.TRANSPOSE: cv2.transpose,
    Image.Transpose.TRANSVERSE: lambda a: cv2.transpose(cv2.flip(a, -1)),
}


def _fit(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """The size to reduce ``width`` x ``height`` to, or None when it already fits (never upscale)."""
    longer = max(width, height)
    if max_side is None or longer <= max_side:
        return None
    return max(1, round(width * max_side / longer)), max(1, round(height * max_side / longer))


def _to_rgb(image: Image.Image) -> Image.Image:
    """The image as "RGB", or as "L" when it is gray (Pillow keeps RGB at 4 bytes a pixel, L at 1)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits rather than clip everything above 255 to white.
        wide = np.asarray(image, dtype=np.uint32)
        peak = 65535 if mode.startswith("I;16") else max(int(wide.max()), 1)
        return Image.fromarray((wide * 255 // peak).astype(np.uint8))  # 2-D uint8: mode "L"
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA") or "A" in mode:
        # Transparent areas become white, as a viewer would show them, not undefined colour. Done
        # before any resize, so the colour under transparent pixels never bleeds into the edges.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")
