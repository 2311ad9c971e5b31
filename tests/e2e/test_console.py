"""The web console (``GET /``) in a real browser: Debian's Chromium driven by Playwright, against
the API over real HTTP, moto's S3 for the presigned uploads and a running worker.

Chromium comes from ``scripts/setup-system-tools`` (Playwright's own browser downloads are never used);
without ``/usr/bin/chromium`` these tests are skipped.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Stack, serving_api

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "test-artifacts"
WAIT_MS = 45_000
XSS_NAME = "<img src=x onerror=alert(1)>.png"
NAMES = {0: "square", 1: "circle", 2: "triangle"}

# Records every status a job card shows, in order (the badge changes live while the page polls).
WATCH_STATUSES = """() => {
  window.__statuses = {};
  const record = () => {
    for (const card of document.querySelectorAll("#uploads li.card")) {
      const name = card.dataset.filename, status = card.dataset.status;
      const seen = (window.__statuses[name] = window.__statuses[name] || []);
      if (status && seen[seen.length - 1] !== status) seen.push(status);
    }
  };
  new MutationObserver(record).observe(document.getElementById("uploads"),
    {subtree: true, childList: true, attributes: true, attributeFilter: ["data-status"]});
}"""

# The canvas's RGB at each (x, y).
READ_PIXELS = """([canvas, points]) => {
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  return points.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
}"""


@dataclass
class Browser:
    page: Any
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


def test_console_routes_serve_three_files_under_a_policy() -> None:
    """Without a browser: the page and its two assets, their types and headers; nothing else."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from functions.http_api import install_error_handlers
    from visionq.console import install_console

    app = FastAPI()
    install_console(app)
    install_error_handlers(app)
    client = TestClient(app)
    for path, content_type in (
        ("/", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == content_type
        assert response.headers["x-content-type-options"] == "nosniff"
        policy = response.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
    for path in ("/console/index.html", "/console/__init__.py", "/console/..%2F__init__.py", "/console/x.js"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    assert not {"/", "/console/{name}"} & set(app.openapi()["paths"])

    script = client.get("/console/console.js").text
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("//"))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in code, f"console.js must build its DOM from text, not markup ({sink})"
    assert "console.log" not in code
    page = client.get("/").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "no inline script (the policy forbids it)"
    assert "http://" not in page and "https://" not in page, "the page loads nothing from elsewhere"


@pytest.fixture
def console_url(stack: Stack, start_worker: Callable[..., Any]) -> Iterator[str]:
    start_worker()
    # The bucket's CORS rules (LocalStack and S3 refuse the browser's cross-origin POST without them;
    # moto answers any origin) come from template.yaml through the bootstrap, as on AWS.
    with serving_api(stack.api_settings()) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: run scripts/setup-system-tools to install Debian's Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = chromium.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            seen = Browser(page)
            page.on("request", lambda request: seen.requests.append(request.url))
            page.on("pageerror", lambda error: seen.page_errors.append(str(error)))
            page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)

            def on_dialog(dialog: Any) -> None:
                seen.dialogs.append(f"{dialog.type}: {dialog.message}")
                dialog.dismiss()

            page.on("dialog", on_dialog)
            yield seen
        finally:
            chromium.close()


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def connect(browser: Browser, url: str, api_key: str) -> None:
    from playwright.sync_api import expect

    page = browser.page
    response = page.goto(url + "/")
    assert response is not None and response.ok
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    page.evaluate(WATCH_STATUSES)
    page.fill("#api-key", api_key)
    page.click("#key-save")
    expect(page.locator("#key-status")).to_contain_text("connected")
    expect(page.locator("#model")).to_be_enabled()
    assert page.input_value("#api-key") == "", "the key must not stay in the page"
    assert page.evaluate("sessionStorage.getItem('visionq.apiKey')") == api_key
    assert page.evaluate("localStorage.length") == 0


def card(browser: Browser, filename: str) -> Any:
    # By the title's exact text: no quoting of the name into a selector.
    return browser.page.locator("#uploads li.card").filter(
        has=browser.page.locator(".card-title").get_by_text(filename, exact=True)
    )


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def box_of(drawn: dict[str, Any]) -> tuple[float, ...]:
    return (drawn["x1"], drawn["y1"], drawn["x2"], drawn["y2"])


def hex_rgb(color: str) -> list[int]:
    return [int(color[i : i + 2], 16) for i in (1, 3, 5)]


def assert_key_stayed_in_headers(browser: Browser, api_key: str) -> None:
    assert browser.requests, "the page made no requests"
    secret = api_key.split("_", 2)[2]  # vq_<key id>_<secret>; the secret may hold "_" itself
    assert len(secret) >= 32
    for url in browser.requests:
        assert api_key not in url and secret not in url, url


def test_console_submits_draws_lists_and_escapes(
    console_url: str, api_key: str, browser: Browser, draw_scene: Callable[..., Any], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser.page
    connect(browser, console_url, api_key)

    image, truth = draw_scene(20_250, (320, 240))
    picture = tmp_path / "shapes.png"
    image.save(picture)
    page.set_input_files("#files", str(picture))

    job_card = card(browser, "shapes.png")
    expect(job_card).to_have_attribute("data-status", "SUCCEEDED", timeout=WAIT_MS)
    statuses = page.evaluate("window.__statuses['shapes.png']")
    assert statuses[0] in ("CREATING", "UPLOADING") and statuses[-1] == "SUCCEEDED", statuses
    assert "PENDING" in statuses, statuses  # the badge followed the job, not just its end
    assert "ERROR" not in statuses and "FAILED" not in statuses, statuses

    job_id = job_card.get_attribute("data-job-id")
    assert job_id
    job = httpx.get(f"{console_url}/v1/jobs/{job_id}", headers={"x-api-key": api_key}).json()
    detections = job["result"]["detections"]
    expect(job_card.locator("canvas.result-canvas")).to_have_attribute("data-drawn", re.compile(r"^\[\{"))
    drawn = json.loads(job_card.locator("canvas.result-canvas").get_attribute("data-drawn") or "[]")

    # What was drawn is the job's result, and the result is the scene's truth.
    assert sorted(d["label"] for d in drawn) == sorted(d["label"] for d in detections)
    for cls, *box in truth:
        matches = [d for d in drawn if d["label"] == NAMES[cls] and iou(tuple(box), box_of(d)) > 0.5]
        assert matches, (truth, drawn)

    # The pixels: each box's left and right edges, half-way down, are the box's colour; its centre
    # is still the picture (the canvas is at the picture's own size).
    canvas = job_card.locator("canvas").element_handle()
    assert page.evaluate("(c) => [c.width, c.height]", canvas) == [320, 240]
    rgb = image.convert("RGB")
    for d in drawn:
        mid_y = (d["y1"] + d["y2"]) // 2
        centre = ((d["x1"] + d["x2"]) // 2, mid_y)
        left, right, middle = page.evaluate(
            READ_PIXELS, [canvas, [[d["x1"], mid_y], [d["x2"] - 1, mid_y], list(centre)]]
        )
        assert left == hex_rgb(d["color"]) and right == hex_rgb(d["color"]), (d, left, right)
        assert list(rgb.getpixel((d["x1"], mid_y))) != left, "the edge colour must not be the picture's own"
        assert all(abs(a - b) <= 3 for a, b in zip(middle, rgb.getpixel(centre), strict=True)), (middle, centre)

    # Recent jobs: the job is listed, opening it shows its JSON and the picture with its boxes.
    row = page.locator("#recent-rows tr").filter(has=page.locator("td.mono", has_text=job_id[:12]))
    expect(row).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("SUCCEEDED")
    row.click()
    expect(page.locator("#detail-json")).to_contain_text(job_id)
    expect(page.locator("#detail-json")).to_contain_text('"detections"')
    expect(page.locator("#detail-canvas")).to_have_attribute("data-drawn", re.compile(r"^\[\{"))

    # Filters: no job has failed; this model's jobs include it.
    page.select_option("#filter-status", "FAILED")
    expect(page.locator("#recent-rows tr.empty")).to_have_text("no jobs")
    expect(page.locator("#recent-rows tr[data-job-id]")).to_have_count(0)
    page.select_option("#filter-status", "SUCCEEDED")
    page.select_option("#filter-model", job["model"])
    expect(row).to_have_count(1)
    page.select_option("#filter-status", "")
    page.select_option("#filter-model", "")

    # A hostile file name: the API refuses it (400 invalid_filename), the page shows the name and
    # the error as text, and nothing it contains runs.
    page.set_input_files(
        "#files", files=[{"name": XSS_NAME, "mimeType": "image/png", "buffer": png_bytes(draw_scene(7, (64, 64))[0])}]
    )
    hostile = card(browser, XSS_NAME)
    expect(hostile).to_have_attribute("data-status", "ERROR")
    expect(hostile.locator(".card-title")).to_have_text(XSS_NAME)
    expect(hostile.locator(".error")).to_contain_text("filename must be a plain file name")
    expect(hostile.locator(".error")).to_contain_text("invalid_filename")
    assert page.locator("img").count() == 0, "no <img> element may come out of a file name"
    page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert browser.dialogs == []

    # Back to a tidy view for the screenshot: the successful job opened in the detail panel.
    page.click("#recent-refresh")
    expect(row).to_have_count(1)
    row.click()
    expect(page.locator("#detail-canvas")).to_be_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)

    assert_key_stayed_in_headers(browser, api_key)
    assert browser.page_errors == []
    assert not [m for m in browser.console_errors if "Content Security Policy" in m], browser.console_errors


def write_webm(path: Path, scenes: list[Any], *, rate: int = 5) -> None:
    """A VP8 clip in which scene i shows from i - 0.5 s to i + 0.5 s (the first from 0, the clip
    ends at len(scenes) - 0.4 s), so a frame sampled at i s is well inside scene i: which frame a
    browser shows at a frame boundary is its own affair."""
    import av
    import numpy as np

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libvpx", rate=rate)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = scenes[0].width, scenes[0].height, "yuv420p"
        stream.options = {"crf": "4", "b": "2M"}
        half = rate // 2
        for index, scene in enumerate(scenes):
            frame = av.VideoFrame.from_ndarray(np.asarray(scene.convert("RGB")), format="rgb24")
            for _ in range(rate - half if index == 0 else rate):
                container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_console_turns_a_video_into_a_batch_of_frames(
    console_url: str, api_key: str, browser: Browser, draw_scene: Callable[..., Any], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser.page
    connect(browser, console_url, api_key)
    scenes = [draw_scene(30_000 + i, (320, 240)) for i in range(3)]
    clip = tmp_path / "clip <b>1.webm"
    write_webm(clip, [image for image, _ in scenes])

    page.fill("#video-fps", "1")
    page.fill("#video-max", "10")
    page.set_input_files("#files", str(clip))
    batch_card = card(browser, clip.name)
    expect(batch_card).to_have_attribute("data-status", "complete", timeout=WAIT_MS)
    batch_id = batch_card.get_attribute("data-batch-id")
    assert batch_id
    expect(batch_card.locator(".counts")).to_contain_text("3 of 3 finished")
    frames = batch_card.locator(".frames figure")
    expect(frames).to_have_count(3)
    for index, (_, truth) in enumerate(scenes):
        canvas = frames.nth(index).locator("canvas")
        expect(canvas).to_have_attribute("data-drawn", re.compile(r"^\["))
        drawn = json.loads(canvas.get_attribute("data-drawn") or "[]")
        assert sorted(d["label"] for d in drawn) == sorted(NAMES[cls] for cls, *_ in truth), (index, drawn, truth)
        expect(frames.nth(index).locator("figcaption")).to_contain_text(f"frame {index}")

    batch = httpx.get(f"{console_url}/v1/batches/{batch_id}", headers={"x-api-key": api_key}).json()
    assert batch["total"] == 3 and batch["counts"] == {"SUCCEEDED": 3}, batch
    assert batch["name"] == clip.name
    assert sorted(job["meta"]["sample"] for job in batch["jobs"]) == [0, 1, 2]
    assert sorted(job["meta"]["timestamp_ms"] for job in batch["jobs"]) == [0, 1000, 2000]
    assert batch["meta"]["kind"] == "browser-frames" and batch["meta"]["width"] == 320
    assert all(re.fullmatch(r"clip_b_1-frame-00000\d\.jpg", job["filename"]) for job in batch["jobs"]), batch
    assert page.locator("b").count() == 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-video.png"), full_page=True)
    assert_key_stayed_in_headers(browser, api_key)
    assert browser.page_errors == []
