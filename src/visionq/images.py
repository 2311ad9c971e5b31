"""Turning object bytes into an RGB array the model can take, within limits.

The format is recognised from the bytes, never from the key or the declared content type, and
Pillow is told to try only the allowed decoders, so a file that merely claims to be a JPEG never
reaches any other parser.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from visionq.errors import ImageRejected

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # H x W x 3, uint8, orientation applied
    format: str

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def sniff_format(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, limits: ImageLimits) -> DecodedImage:
    """Decode ``data`` to RGB, applying EXIF orientation; raise ImageRejected with a code."""
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
    try:
        with warnings.catch_warnings():
            # Our own pixel check below replaces Pillow's bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageRejected(
                    f"the image is {width}x{height} pixels, over the limit of {limits.max_pixels}",
                    code="image_too_large",
                )
            image.load()
            oriented: Image.Image = ImageOps.exif_transpose(image) or image
            rgb = _to_rgb(oriented)
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
    return DecodedImage(rgb=np.ascontiguousarray(rgb), format=fmt)


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits rather than clip everything above 255 to white.
        wide = np.asarray(image, dtype=np.uint32)
        peak = 65535 if mode.startswith("I;16") else max(int(wide.max()), 1)
        gray = (wide * 255 // peak).astype(np.uint8)
        return np.stack([gray, gray, gray], axis=-1)
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA") or "A" in mode:
        # Transparent areas become white, as a viewer would show them, not undefined colour.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))
