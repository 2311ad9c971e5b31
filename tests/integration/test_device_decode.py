"""VISIONQ_DEVICE_DECODE on the local stack: the worker checks each JPEG's header and hands its
bytes to the model's process, which decodes them on its device (here the CPU, through the same
torchvision call that nvjpeg answers on a GPU). The boxes must land where the shapes were drawn,
in the upright image's coordinates, whatever the JPEG's size or orientation; a JPEG cut short
fails with the CPU decoder's code; a PNG is still decoded by the worker."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import SHAPES_WEIGHTS, RunningWorker, Stack
from tests.integration.test_pipeline import WAIT, iou, png_bytes, submit_bytes
from visionq import metrics
from visionq.client import VisionqClient

pytestmark = pytest.mark.integration


def jpeg_bytes(image: Image.Image, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92, **({"exif": exif.tobytes()} if exif is not None else {}))
    return buf.getvalue()


def decoded(where: str) -> float:
    return metrics.WORKER.registry.get_sample_value("visionq_images_decoded_total", {"where": where}) or 0.0


@pytest.mark.parametrize("letterbox", ["off", "on"])
def test_jpegs_decoded_in_the_models_process_land_their_boxes(
    letterbox: str,
    stack: Stack,
    api_url: str,
    api_key: str,
    draw_scene: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With VISIONQ_DEVICE_LETTERBOX=on the network's input is made on the device too, from the
    decoded JPEGs and from the worker's pixels (the PNG): the boxes land all the same."""
    models = tmp_path / "models.toml"
    models.write_text(f'default = "default"\n[models.default]\nfamily = "ultralytics"\nweights = "{SHAPES_WEIGHTS}"\n')
    settings = stack.worker_settings(
        models_file=models,
        model_process=True,
        device_decode="on",
        device_letterbox=letterbox,
        max_batch=4,
        max_wait_ms=300,
    )
    rotated = Image.Exif()
    rotated[0x0112] = 6  # "rotate 90° clockwise to view"
    scenes = {
        # name: (seed, upright size, how it is stored)
        "large.jpg": (20_001, (1280, 960), lambda im: jpeg_bytes(im)),  # reduced 4x on the device
        "small.jpg": (20_002, (400, 300), lambda im: jpeg_bytes(im)),  # reduced under 2x
        "sideways.jpg": (
            20_003,
            (480, 640),
            lambda im: jpeg_bytes(im.transpose(Image.Transpose.ROTATE_90), exif=rotated),
        ),
        "scene.png": (20_004, (640, 360), png_bytes),  # the worker's own decode
    }
    truth: dict[str, list[Any]] = {}
    data: dict[str, bytes] = {}
    for name, (seed, size, store) in scenes.items():
        image, truth[name] = draw_scene(seed, size)
        data[name] = store(image)
    whole = data["large.jpg"]
    data["cut.jpg"] = whole[: len(whole) * 3 // 5]  # a whole header, then the data cut short
    before = {where: decoded(where) for where in ("worker", "model_process")}

    caplog.set_level(logging.INFO, logger="visionq.models.own_process")
    worker = RunningWorker(settings, None).start()
    try:
        client = VisionqClient(api_url, api_key)
        jobs = {
            name: submit_bytes(client, name, body, "image/png" if name.endswith(".png") else "image/jpeg")
            for name, body in data.items()
        }
        done = client.wait(jobs.values(), timeout=WAIT * 2)
    finally:
        worker.stop()
    assert worker.error is None

    cut = done[jobs["cut.jpg"]]
    assert (cut["status"], cut["error"]["code"]) == ("FAILED", "undecodable_image"), cut
    for name, (_, size, _) in scenes.items():
        job = done[jobs[name]]
        assert job["status"] == "SUCCEEDED", (name, job)
        assert job["result"]["image"] == {"width": size[0], "height": size[1]}, name
        found = job["result"]["detections"]
        for cls, *box in truth[name]:
            assert any(d["class_id"] == cls and iou(box, (d["x1"], d["y1"], d["x2"], d["y2"])) > 0.5 for d in found), (
                name,
                truth[name],
                found,
            )
    said = "model default: its input is letterboxed on cpu"
    assert (said in caplog.messages) == (letterbox == "on"), caplog.messages
    # The three whole JPEGs went to the model's process; the PNG, and the cut JPEG (no end-of-image
    # marker: the CPU decoder's verdict), to the worker's decoders.
    assert decoded("model_process") - before["model_process"] == 3
    assert decoded("worker") - before["worker"] == 2
