"""The letterbox on the model's device (``VISIONQ_DEVICE_LETTERBOX``): an Ultralytics network's input
made where the network runs, from pixels that are already there.

Ultralytics letterboxes on the host: each image padded (and resized, if it is not at the model's
size) by OpenCV, the batch stacked by numpy, then copied to the device. On a GPU whose JPEGs are
decoded on the device (models/device_decode.py) that means every image's pixels go to the host
and back, and each is copied three times on a CPU core that must keep up with the GPU. Here the
same geometry (Ultralytics' own ``LetterBox.get_params``, with the settings its predictor would
pick) is applied to C x H x W tensors on the device: one resize if needed, one pad, one stack, the
model's dtype, in 0-1. The boxes are then mapped back to each image by Ultralytics itself: the
predictor is handed stand-ins of the images' shapes (no pixels), so its post-processing runs as
ever (``UltralyticsModel.predict_prepared``).

Pixels equal Ultralytics' own where no resize is needed (the worker decodes to the model's size);
a resize (an image smaller than the model's input) is bilinear on the device where OpenCV's is
fixed-point on the host, within a level or two (tests/unit/test_letterbox.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# Ultralytics' padding grey.
PAD_VALUE = 114


@dataclass(frozen=True)
class Prepared:
    """A batch as the network takes it: ``pixels`` B x 3 x H x W on the model's device (RGB, 0-1,
    the model's dtype), and each image's (height, width) before the letterbox."""

    pixels: Any
    shapes: tuple[tuple[int, int], ...]


def geometry(predictor: Any, shapes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Per image of ``shapes`` ((height, width) each), the letterbox Ultralytics' ``predictor``
    would apply to the batch (its ``pre_transform``'s settings, ``LetterBox.get_params``)."""
    from ultralytics.data.augment import LetterBox

    model = predictor.model
    same_shapes = len(set(shapes)) == 1
    letterbox = LetterBox(
        predictor.imgsz,
        # As BasePredictor.pre_transform decides (tests/unit/test_letterbox.py compares the two).
        auto=same_shapes
        and predictor.args.rect
        and not predictor.scale_fill
        and (model.format == "pt" or (getattr(model, "dynamic", False) and model.format != "imx")),
        scale_fill=predictor.scale_fill,
        stride=model.stride,
    )
    return [letterbox.get_params({"img": shape_only(shape)}) for shape in shapes]


def shape_only(shape: tuple[int, int]) -> np.ndarray:
    """An H x W x 3 uint8 array that has the shape and no pixels (every element is one zero)."""
    return np.broadcast_to(np.zeros((), np.uint8), (*shape, 3))


def letterboxed(images: Sequence[Any], params: Sequence[dict[str, Any]], dtype: Any) -> Any:
    """``images`` (3 x H x W uint8 tensors, RGB, on one device) resized and padded as ``params``
    say, stacked, as ``dtype`` in 0-1 (converted, then divided, as Ultralytics does: the same
    values)."""
    import torch
    from torch.nn import functional

    out = []
    for image, p in zip(images, params, strict=True):
        width, height = p["new_unpad"]
        if (image.shape[2], image.shape[1]) != (width, height):
            # OpenCV's INTER_LINEAR (half-pixel centres, no antialiasing), as LetterBox resizes,
            # rounded to whole levels as OpenCV's uint8 output is.
            resized = functional.interpolate(
                image[None].float(), size=(height, width), mode="bilinear", align_corners=False
            )
            image = resized[0].round_().clamp_(0, 255).to(torch.uint8)
        padding = (p["left"], p["right"], p["top"], p["bottom"])
        out.append(functional.pad(image, padding, value=PAD_VALUE) if any(padding) else image)
    batch = torch.stack(out) if len(out) > 1 else out[0][None]
    # Contiguous, as Ultralytics' own: a lone image needing no pad is still a permuted view of the
    # H x W x 3 pixels, and on CUDA a channels-last input picks other kernels (other fp16 rounding).
    return batch.to(dtype, memory_format=torch.contiguous_format).div_(255)


def upright_tensor(image: Any, method: Image.Transpose | None) -> Any:
    """``images.upright_pixels`` on a 3 x H x W tensor (Pillow's transposition; None: as it is)."""
    import torch

    if method is None:
        return image
    turns: dict[Image.Transpose, Callable[[Any], Any]] = {
        Image.Transpose.FLIP_LEFT_RIGHT: lambda t: t.flip(2),
        Image.Transpose.FLIP_TOP_BOTTOM: lambda t: t.flip(1),
        Image.Transpose.ROTATE_180: lambda t: t.flip(1, 2),
        Image.Transpose.ROTATE_90: lambda t: torch.rot90(t, 1, (1, 2)),  # counter-clockwise, as Pillow's
        Image.Transpose.ROTATE_270: lambda t: torch.rot90(t, -1, (1, 2)),
        Image.Transpose.TRANSPOSE: lambda t: t.transpose(1, 2),
        Image.Transpose.TRANSVERSE: lambda t: t.flip(1, 2).transpose(1, 2),
    }
    return turns[method](image).contiguous()


def to_device(array: np.ndarray, device: str) -> Any:
    """An H x W x 3 uint8 array as a 3 x H x W tensor on ``device`` (the copy is of the array's
    memory as it lies; the reorder happens there)."""
    import torch

    with warnings.catch_warnings():
        # Read, never written (a view of the worker's shared memory): torch warns when not writable.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(array)).to(device).permute(2, 0, 1)


def handed_over(batch: Prepared) -> Prepared:
    """``batch``, made on this thread, ready for the model's thread: on CUDA, the work that made
    it (on this thread's stream) finished, and its memory not reused until the default stream, the
    model's, is done with it."""
    pixels = batch.pixels
    if pixels is not None and pixels.is_cuda:
        import torch

        torch.cuda.current_stream(pixels.device).synchronize()
        pixels.record_stream(torch.cuda.default_stream(pixels.device))
    return batch


def letterbox_here(model: Any, setting: str) -> bool:
    """Whether ``model``'s process makes its input on its device (``VISIONQ_DEVICE_LETTERBOX``): a
    model that letterboxes (Ultralytics', not a classifier), with "on", or with "auto" on a GPU
    where it makes the input Ultralytics makes (checked once, when the process starts)."""
    if setting == "off" or not getattr(model, "letterboxes", False):
        return False
    return setting == "on" or (model.device.startswith("cuda") and matches_ultralytics(model))


def matches_ultralytics(model: Any) -> bool:
    """Whether ``model.prepare`` on its device gives the input Ultralytics makes on the host, for an
    image at the model's size and one it must resize (a level or two apart at most: resizes round
    differently, and a GPU may compute in fp16)."""
    import torch

    try:
        for height, width in ((model.input_size * 3 // 4, model.input_size), (97, 131)):
            y, x = np.mgrid[0:height, 0:width]
            rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=2).astype(np.uint8)
            ours = model.prepare([to_device(rgb, model.device)]).pixels.float().cpu()
            theirs = model.reference_input([rgb]).float().cpu()
            if ours.shape != theirs.shape or float(torch.max(torch.abs(ours - theirs))) > 2.5 / 255:
                return False
    except Exception:  # noqa: BLE001 - any failure: the input is made on the host, as Ultralytics does
        return False
    return True
