"""A video through the whole flow, by the commands a user types: `visionq submit clip.mp4 --every 2
--wait`, then `visionq render BATCH -o out.mp4 --export rows.csv`, against the API over HTTP, moto,
PostgreSQL and a worker running the shapes detector. The output has the source's frame count and
rate, and the boxes drawn land where the shapes are."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import Stack
from tests.unit.test_video import scene, write_clip
from visionq import cli
from visionq.annotate import colour_for

pytestmark = pytest.mark.integration

SIZE = (320, 240)  # the detector's training size
RATE = 10
FRAMES = 12


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


@pytest.fixture
def client_env(api_url: str, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the manifests go to ./.visionq/batches
    monkeypatch.setenv("API_URL", api_url)
    monkeypatch.setenv("VISIONQ_API_KEY", api_key)
    return tmp_path


def nearest(rgb: np.ndarray, x: float, y: float, colour: tuple[int, int, int], reach: int = 4) -> float:
    """How close the pixels around (x, y) come to ``colour`` (0: exactly it)."""
    h, w = rgb.shape[:2]
    xs = slice(max(0, int(x) - reach), min(w, int(x) + reach + 1))
    ys = slice(max(0, int(y) - reach), min(h, int(y) + reach + 1))
    patch = rgb[ys, xs].astype(int)
    return float(np.abs(patch - np.asarray(colour)).max(axis=2).min())


def test_a_clip_goes_through_submit_and_render(
    stack: Stack,
    client_env: Path,
    start_worker: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import av

    truth = write_clip(client_env / "clip.mp4", size=SIZE, rate=RATE, frames=FRAMES)
    start_worker()

    code, out = run_cli(capsys, "submit", "clip.mp4", "--every", "2", "--wait", "--timeout", "120")
    assert code == 0, out
    batch_id = out.split("batch ", 1)[1].split(":", 1)[0]
    assert "6 video job(s), 6 uploaded" in out
    assert "6 of 6 ended (6 SUCCEEDED)" in out

    # Submitting the same clip again finds the batch and uploads nothing.
    code, again = run_cli(capsys, "submit", "clip.mp4", "--every", "2")
    assert code == 0 and f"batch {batch_id}: 6 video job(s), 0 uploaded (6 already uploaded" in again, again

    code, out = run_cli(capsys, "render", batch_id, "-o", "annotated.mp4", "--export", "rows.csv")
    assert code == 0, out
    assert "6 analysed" in out

    with av.open(str(client_env / "annotated.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == RATE
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(frames) == FRAMES
    assert frames[0].shape[:2] == (SIZE[1], SIZE[0])

    for index, rgb in enumerate(frames):
        analysed = index - index % 2  # --every 2: odd frames show the previous frame's boxes
        source = np.asarray(scene(index, SIZE)[0])
        for cls, x1, y1, x2, _y2 in truth[analysed]:
            colour = colour_for(cls)
            top_middle = ((x1 + x2) / 2, y1)
            assert nearest(rgb, *top_middle, colour) < 60, f"frame {index}: no box edge of class {cls} at {top_middle}"
            assert nearest(source, *top_middle, colour) > 60, "the colour was not in the picture before"

    with (client_env / "rows.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {int(r["frame"]) for r in rows} == {0, 2, 4, 6, 8, 10}
    assert {float(r["timestamp_ms"]) for r in rows if r["frame"] == "4"} == {400.0}
    labels = {r["label"] for r in rows}
    assert {"square", "circle"} <= labels


def test_a_folder_goes_through_submit_and_render(
    stack: Stack,
    client_env: Path,
    start_worker: Callable[..., Any],
    draw_scene: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image

    folder = client_env / "photos"
    folder.mkdir()
    truth = {}
    for i in range(2):
        image, boxes = draw_scene(70_000 + i, SIZE)
        image.save(folder / f"scene-{i}.png")
        truth[f"scene-{i}.png"] = boxes
    (folder / "notes.txt").write_text("not an image")
    start_worker()

    code, out = run_cli(capsys, "submit", "photos", "--wait", "--timeout", "120")
    assert code == 0, out
    assert "skipping photos/notes.txt: not an image" in out
    assert "2 images job(s), 2 uploaded" in out
    assert all(any(line.startswith(name) and "SUCCEEDED" in line for line in out.splitlines()) for name in truth)
    batch_id = out.split("batch ", 1)[1].split(":", 1)[0]

    code, out = run_cli(capsys, "render", batch_id, "-o", "annotated")
    assert code == 0, out
    assert "2 analysed" in out
    for name, boxes in truth.items():
        rgb = np.asarray(Image.open(client_env / "annotated" / name).convert("RGB"))
        source = np.asarray(Image.open(folder / name).convert("RGB"))
        for cls, x1, y1, x2, _y2 in boxes:
            top_middle = ((x1 + x2) / 2, y1)
            assert nearest(rgb, *top_middle, colour_for(cls)) < 60, f"{name}: no box of class {cls}"
            assert nearest(source, *top_middle, colour_for(cls)) > 60
