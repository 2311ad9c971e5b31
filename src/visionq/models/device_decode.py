"""JPEG pixels decoded on the model's device, in the model's process (``VISIONQ_DEVICE_DECODE``).

On a CPU the worker's JPEG decode sits at libjpeg-turbo's floor, about 3 ms per 0.7 MP photo
(bench/RESULTS.md run 16), more than half of what the worker spends on an image outside the model.
On a GPU it need not be the worker's at all: the worker checks the JPEG's header (size, pixel
count, mode, EXIF orientation: ``images.inspect_jpeg``, no pixel decoded) and hands the bytes to
the model's process, which decodes the whole batch in one call on its device (nvjpeg through
``torchvision.io.decode_jpeg``), reduces each image there to the size ``decode_image`` would have
given, and gives the model the same upright RGB arrays as ever. Every model family takes them
unchanged. Where the network's input is made on the device too (``VISIONQ_DEVICE_LETTERBOX``,
letterbox.py), the pixels stay there: ``decode_frames_on_device`` turns them upright there and
hands over tensors.

What a device decode refuses is decided as on the CPU: a batch that fails is decoded again image
by image, and an image the device refuses alone (or whose reduction fails there, out of memory for
a very large image) is decoded by ``decode_image`` (simplejpeg, then Pillow), whose verdict
counts, so an image the CPU path rejects fails with the same code (``undecodable_image``) and one
that only the device refuses still runs. A JPEG that does not end with its end-of-image marker
never reaches the device (``images.inspect_jpeg``): nvjpeg's hardware decoder may call a truncated
stream a success. Only in the model's own process (``models/own_process.py``): a decoder that
crashes on an image kills that process, not the worker, and the image fails alone
(``decoder_crashed``); a CUDA error that leaves the device unusable ends the process, so the
worker starts a new one instead of failing every batch after it.

The reduction is bilinear, with antialiasing beyond 2x (OpenCV's area averaging on the CPU path);
the CPU path first lets libjpeg reduce by 1/2, 1/4 or 1/8, so pixels differ slightly between the
two paths (tests/unit/test_device_decode.py bounds the difference).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from visionq.images import EncodedJpeg, ImageLimits, decode_image, inspect_jpeg, upright_pixels
from visionq.models.letterbox import to_device, upright_tensor

Frame = np.ndarray | EncodedJpeg


def decode_frames(frames: Sequence[Frame], device: str) -> list[np.ndarray]:
    """``frames`` as the arrays a model takes: the JPEGs among them decoded on ``device`` in one
    batch, the arrays as they are. Raises ImageRejected when one cannot be decoded at all."""
    jpegs = [frame for frame in frames if isinstance(frame, EncodedJpeg)]
    decoded = iter(_decode_batch(jpegs, device, on_device=False) if jpegs else [])
    return [next(decoded) if isinstance(frame, EncodedJpeg) else frame for frame in frames]


def decode_frames_on_device(frames: Sequence[Frame], device: str) -> list[Any]:
    """``frames`` as 3 x H x W uint8 RGB tensors on ``device``, upright, for a letterbox there
    (models/letterbox.py): the JPEGs decoded there in one batch, the arrays copied there. The same
    pixels as ``decode_frames`` gives, and the same ImageRejected."""
    jpegs = [frame for frame in frames if isinstance(frame, EncodedJpeg)]
    decoded = iter(_decode_batch(jpegs, device, on_device=True) if jpegs else [])
    return [next(decoded) if isinstance(frame, EncodedJpeg) else to_device(frame, device) for frame in frames]


def works_on(device: str) -> bool:
    """Whether ``device`` decodes a JPEG here as the CPU path would (checked once, when the model's
    process starts: a build without nvjpeg, or a device that gives wrong pixels, leaves the decoding
    to the worker)."""
    import io

    from PIL import Image

    y, x = np.mgrid[0:96, 0:128]
    pixels = np.stack([x * 2, y * 2, np.full_like(x, 90)], axis=2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    expected = decode_image(data, ImageLimits(), max_side=64).rgb
    jpeg = inspect_jpeg(data, ImageLimits(), max_side=64)  # the header path the pipeline's JPEGs take
    if jpeg is None:
        return False
    try:
        from torchvision.io import ImageReadMode, decode_jpeg

        # The batched call the pipeline makes; no fallback to the CPU here.
        images = decode_jpeg([_as_tensor(data)] * 2, mode=ImageReadMode.RGB, device=device)
        if any(tuple(image.shape) != (3, 96, 128) for image in images):
            return False
        got = _reduced(images[0], jpeg)  # no fallback to the CPU either
    except Exception:  # noqa: BLE001 - any failure: the worker decodes instead
        return False
    return got.shape == expected.shape and float(np.abs(got.astype(np.int16) - expected).mean()) < 2.0


def _decode_batch(jpegs: list[EncodedJpeg], device: str, *, on_device: bool) -> list[Any]:
    """Each JPEG's pixels: a host array, or with ``on_device`` a tensor left on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [_as_tensor(jpeg.data) for jpeg in jpegs]
    try:
        # One call for the batch: on CUDA, nvjpeg's batched decode.
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except Exception as exc:
        if is_device_fault(exc):
            raise
        # Some image in it; find which, one at a time.
        return [_decode_alone(data, jpeg, device, on_device) for data, jpeg in zip(encoded, jpegs, strict=True)]
    return [_finish(image, jpeg, device, on_device) for image, jpeg in zip(images, jpegs, strict=True)]


def _decode_alone(encoded: Any, jpeg: EncodedJpeg, device: str, on_device: bool) -> Any:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        image = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except Exception as exc:
        if is_device_fault(exc):
            raise
        return _on_the_cpu(jpeg, device, on_device)  # the device refuses it: the CPU decoder's verdict counts
    return _finish(image, jpeg, device, on_device)


def _finish(image: Any, jpeg: EncodedJpeg, device: str, on_device: bool) -> Any:
    """A decoded C x H x W tensor reduced to the target on its device, then upright (there, or on
    the host); the CPU path's pixels when that fails (the device out of memory for a large image's
    resize)."""
    if (image.shape[2], image.shape[1]) != jpeg.stored_size or image.shape[0] != 3:
        return _on_the_cpu(jpeg, device, on_device)  # not what the header said: let the CPU decoder decide
    try:
        if on_device:
            return upright_tensor(_reduced_tensor(image, jpeg), jpeg.upright)
        return _reduced(image, jpeg)
    except Exception as exc:
        if is_device_fault(exc):  # the device is broken, not short of memory: nothing more to do on it
            raise
        return _on_the_cpu(jpeg, device, on_device)


def is_device_fault(exc: BaseException) -> bool:
    """A CUDA error that leaves the process's context unusable (an illegal address...): only a new
    process gets a working device again. Out-of-memory is not one."""
    return type(exc).__name__ == "AcceleratorError" or "CUDA error" in str(exc)


def _reduced(image: Any, jpeg: EncodedJpeg) -> np.ndarray:
    image = _reduced_tensor(image, jpeg)
    # Channels last on the device (one kernel there), so the copy to the host is of contiguous
    # memory: a strided tensor comes over strided, and numpy then reorders it on the CPU at about
    # 1.4-1.9 ms per 640 x 480 image (bench/channel_order.py, chw_to_hwc).
    array: np.ndarray = image.permute(1, 2, 0).contiguous().cpu().numpy()
    return np.ascontiguousarray(upright_pixels(array, jpeg.upright))


def _reduced_tensor(image: Any, jpeg: EncodedJpeg) -> Any:
    """The decoded C x H x W tensor reduced to the target, on its device."""
    import torch
    from torch.nn import functional

    if jpeg.target is None:
        return image
    width, height = jpeg.target
    reduced = functional.interpolate(
        image[None].float(),
        size=(height, width),
        mode="bilinear",
        align_corners=False,
        antialias=image.shape[2] / width > 2,
    )
    return reduced[0].round_().clamp_(0, 255).to(torch.uint8)


def _on_the_cpu(jpeg: EncodedJpeg, device: str, on_device: bool) -> Any:
    """``decode_image``'s pixels (copied to ``device`` with ``on_device``), or its ImageRejected.
    Its limits were checked on the header."""
    width, height = jpeg.stored_size
    limits = ImageLimits(max_bytes=len(jpeg.data), max_pixels=width * height)
    max_side = max(jpeg.target) if jpeg.target is not None else None
    rgb = decode_image(jpeg.data, limits, max_side=max_side).rgb
    return to_device(rgb, device) if on_device else rgb


def _as_tensor(data: bytes) -> Any:
    import torch

    with warnings.catch_warnings():
        # The bytes are read, never written: torch warns that they are not writable.
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(data, dtype=torch.uint8)
