// visionq console: plain JavaScript, no build step, nothing loaded from elsewhere.
//
// Safety rules this file keeps:
// - Every string from the user or the server reaches the page through textContent, an attribute
//   set with setAttribute/dataset, or canvas fillText: never through innerHTML or the like.
// - The API key lives in this tab's sessionStorage and travels only in the x-api-key header of
//   requests to this page's own origin: never in a URL, never to the bucket, never logged.
"use strict";

(() => {
  const KEY_STORE = "visionq.apiKey";
  const TERMINAL = new Set(["SUCCEEDED", "FAILED"]);
  const POLL_FIRST_MS = 400;
  const POLL_MAX_MS = 2500;
  const POLL_GIVE_UP_MS = 15 * 60 * 1000;
  const PARALLEL_UPLOADS = 4;
  const RECENT_PAGE = 20;
  // Box colours by class id: bright tones that stand out on photos (and on the shapes scenes'
  // red, green and blue).
  const PALETTE = ["#ffd400", "#ff00c8", "#00e5ff", "#ff7a00", "#7cff00", "#a259ff", "#ffffff", "#ff4f7b"];
  // What the API accepts, by extension, when the browser does not know a file's type.
  const TYPES_BY_EXTENSION = {
    jpg: "image/jpeg",
    jpeg: "image/jpeg",
    png: "image/png",
    webp: "image/webp",
    bmp: "image/bmp",
    tif: "image/tiff",
    tiff: "image/tiff",
  };

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // jobs uploaded from this tab: job id -> object URL of the picture (for the detail view)
  const sessionPictures = new Map();
  const state = { defaultModel: "", recentCursor: null, recentSeq: 0, refreshTimer: 0 };

  /** Build an element: el("span", {class: "x", dataset: {a: "b"}}, "text", child...). Strings are text. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name === "hidden") node.hidden = true;
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // --- the API -----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    get text() {
      return this.code ? `${this.message} (${this.code})` : this.message;
    }
  }

  function apiKey() {
    return sessionStorage.getItem(KEY_STORE) || "";
  }

  /** A request to this origin's API with the key in its header; the parsed JSON, or an ApiError. */
  async function api(path, { method = "GET", body, query } = {}) {
    const key = apiKey();
    if (!key) throw new ApiError(0, "no_api_key", "enter an API key first");
    let url = path;
    if (query) {
      const params = new URLSearchParams();
      for (const [name, value] of Object.entries(query)) {
        if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
      }
      const encoded = params.toString();
      if (encoded) url += "?" + encoded;
    }
    const headers = { "x-api-key": key, accept: "application/json" };
    const init = { method, headers, cache: "no-store", credentials: "same-origin", referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new ApiError(0, "network_error", "the API could not be reached");
    }
    let data = null;
    const text = await response.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (err) {
        data = null;
      }
    }
    if (!response.ok) {
      const error = data && typeof data === "object" && data.error ? data.error : {};
      if (response.status === 401) keyRejected();
      throw new ApiError(
        response.status,
        typeof error.code === "string" ? error.code : `http_${response.status}`,
        typeof error.message === "string" ? error.message : `the API answered HTTP ${response.status}`,
      );
    }
    return data;
  }

  /** The presigned POST to the bucket: every policy field, then the file last (S3 requires it). */
  async function uploadTo(upload, blob, filename) {
    let target;
    try {
      target = new URL(upload.url, location.href);
    } catch (err) {
      throw new ApiError(0, "upload_failed", "the upload address is not a URL");
    }
    if (target.protocol !== "https:" && target.protocol !== "http:") {
      throw new ApiError(0, "upload_failed", "the upload address is not http(s)");
    }
    const form = new FormData();
    for (const [name, value] of Object.entries(upload.fields || {})) form.append(name, String(value));
    form.append("file", blob, filename);
    let response;
    try {
      // No key here: the bucket trusts the signed policy, and the key is this API's secret only.
      response = await fetch(target.href, {
        method: "POST",
        body: form,
        credentials: "omit",
        referrerPolicy: "no-referrer",
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, "upload_failed", "the upload to the bucket failed (network, or the bucket's CORS rules)");
    }
    if (!response.ok) {
      let detail = `HTTP ${response.status}`;
      try {
        const xml = new DOMParser().parseFromString(await response.text(), "application/xml");
        const message = xml.querySelector("Message");
        if (message && message.textContent) detail = message.textContent;
      } catch (err) {
        // keep the status line
      }
      throw new ApiError(response.status, "upload_failed", "the bucket refused the upload: " + detail);
    }
  }

  async function pollJob(jobId, onUpdate) {
    const started = Date.now();
    let delay = POLL_FIRST_MS;
    for (;;) {
      let job = null;
      try {
        job = await api(`v1/jobs/${encodeURIComponent(jobId)}`);
      } catch (err) {
        const transient = err instanceof ApiError && (err.status === 0 || err.status >= 500);
        if (!transient) throw err;
      }
      if (job) {
        onUpdate(job);
        if (TERMINAL.has(job.status)) return job;
      }
      if (Date.now() - started > POLL_GIVE_UP_MS) {
        throw new ApiError(0, "timeout", "stopped waiting: the job has not ended after 15 minutes");
      }
      await sleep(delay);
      delay = Math.min(POLL_MAX_MS, Math.round(delay * 1.4));
    }
  }

  // --- the API key -------------------------------------------------------------------------------

  function setKeyStatus(text, bad) {
    const status = $("key-status");
    status.textContent = text;
    status.classList.toggle("bad", Boolean(bad));
  }

  function keyRejected() {
    sessionStorage.removeItem(KEY_STORE);
    setKeyStatus("the API rejected this key; enter another", true);
  }

  async function connect() {
    const input = $("api-key");
    const typed = input.value.trim();
    if (typed) sessionStorage.setItem(KEY_STORE, typed);
    input.value = ""; // the key stays in sessionStorage only, not in the page
    if (!apiKey()) {
      setKeyStatus("enter an API key", true);
      return;
    }
    setKeyStatus("connecting…");
    try {
      const models = await api("v1/models");
      fillModels(models);
      setKeyStatus("connected: key kept for this tab only");
      input.placeholder = "key saved for this tab";
      await loadRecent(false);
    } catch (err) {
      if (err.status !== 401) setKeyStatus(err.text, true);
    }
  }

  function forgetKey() {
    sessionStorage.removeItem(KEY_STORE);
    $("api-key").value = "";
    $("api-key").placeholder = "vq_…";
    setKeyStatus("key forgotten");
    const model = $("model");
    model.replaceChildren(el("option", { value: "" }, "connect first"));
    model.disabled = true;
    $("recent-rows").replaceChildren();
    $("recent-more").hidden = true;
    $("detail").hidden = true;
  }

  function fillModels(list) {
    const names = Array.isArray(list && list.models) ? list.models.map(String) : [];
    state.defaultModel = String((list && list.default) || names[0] || "");
    const select = $("model");
    select.replaceChildren(
      ...names.map((name) =>
        el("option", { value: name, selected: name === state.defaultModel ? "" : null }, name === state.defaultModel && name !== "default" ? `${name} (default)` : name),
      ),
    );
    select.value = state.defaultModel;
    select.disabled = names.length === 0;
    const filter = $("filter-model");
    const current = filter.value;
    filter.replaceChildren(el("option", { value: "" }, "any"), ...names.map((name) => el("option", { value: name }, name)));
    filter.value = names.includes(current) ? current : "";
  }

  // --- results: canvas and text ------------------------------------------------------------------

  function colorFor(classId) {
    const index = Number.isInteger(classId) && classId >= 0 ? classId : 0;
    return PALETTE[index % PALETTE.length];
  }

  function percent(value) {
    return typeof value === "number" && Number.isFinite(value) ? `${Math.round(value * 100)}%` : "";
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("this browser cannot show the picture"));
      img.src = url;
    });
  }

  /**
   * Draw the picture and what the model found on the canvas, at the picture's own pixel size (the
   * result is in original-image pixels). Lines are an even width on whole pixels, so a box's edge
   * is exactly its colour. What was drawn is left in canvas.dataset.drawn (JSON) for inspection.
   */
  function drawResult(canvas, img, result) {
    const width = img.naturalWidth;
    const height = img.naturalHeight;
    canvas.width = width;
    canvas.height = height;
    canvas.hidden = false;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0);
    const drawn = [];
    const size = result && result.image && typeof result.image === "object" ? result.image : null;
    const sx = size && size.width > 0 ? width / size.width : 1;
    const sy = size && size.height > 0 ? height / size.height : 1;
    const line = 2 * Math.max(1, Math.round(Math.min(width, height) / 400));
    const fontSize = Math.max(11, Math.round(Math.min(width, height) / 28));
    ctx.font = `600 ${fontSize}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    ctx.lineJoin = "miter";

    const px = (v, s) => Math.round(Number(v) * s);
    const tag = (item) => `${String(item.label ?? item.class_id ?? "?")} ${percent(item.confidence)}`.trim();

    function label(text, x, y, color) {
      const pad = 2;
      const w = Math.ceil(ctx.measureText(text).width) + 2 * pad;
      const h = fontSize + 2 * pad;
      const left = Math.min(Math.max(0, x - line / 2), Math.max(0, width - w));
      const top = y - line / 2 - h >= 0 ? y - line / 2 - h : y + line / 2;
      ctx.fillStyle = color;
      ctx.fillRect(left, top, w, h);
      ctx.fillStyle = "#000";
      ctx.fillText(text, left + pad, top + pad);
    }

    function box(b, item) {
      if (!b) return;
      const x1 = px(b.x1, sx);
      const y1 = px(b.y1, sy);
      const x2 = px(b.x2, sx);
      const y2 = px(b.y2, sy);
      const color = colorFor(item.class_id);
      ctx.strokeStyle = color;
      ctx.lineWidth = line;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      label(tag(item), x1, y1, color);
      drawn.push({ label: String(item.label ?? ""), class_id: item.class_id, confidence: item.confidence, x1, y1, x2, y2, color, line_width: line });
    }

    function polygon(points, item, closed) {
      if (!Array.isArray(points) || points.length < 2) return;
      ctx.strokeStyle = colorFor(item.class_id);
      ctx.lineWidth = line;
      ctx.beginPath();
      points.forEach(([x, y], i) => (i ? ctx.lineTo(x * sx, y * sy) : ctx.moveTo(x * sx, y * sy)));
      if (closed) ctx.closePath();
      ctx.stroke();
    }

    if (result && typeof result === "object") {
      for (const d of result.detections || []) box(d, d);
      for (const s of result.segments || []) {
        polygon(s.polygon, s, true);
        box(s.box, s);
      }
      for (const p of result.poses || []) {
        box(p.box, p);
        ctx.fillStyle = colorFor(p.class_id);
        for (const [x, y, c] of p.keypoints || []) {
          if (typeof c === "number" && c < 0.3) continue;
          ctx.beginPath();
          ctx.arc(x * sx, y * sy, line * 1.5, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
      for (const o of result.oriented_boxes || []) {
        polygon(o.corners, o, true);
        const [x, y] = (o.corners && o.corners[0]) || [0, 0];
        label(tag(o), Math.round(x * sx), Math.round(y * sy), colorFor(o.class_id));
      }
    }
    canvas.dataset.drawn = JSON.stringify(drawn);
    return drawn;
  }

  /** The result as text: captions, classes, or a count of what was found (lists as <li> text). */
  function describeResult(result) {
    const parts = [];
    if (!result || typeof result !== "object") return parts;
    if (Array.isArray(result.captions) && result.captions.length) {
      parts.push(el("ol", { class: "captions" }, ...result.captions.map((c) => el("li", {}, String(c.text ?? "")))));
    }
    if (Array.isArray(result.classes) && result.classes.length) {
      parts.push(
        el("ol", { class: "classes" }, ...result.classes.map((c) => el("li", {}, `${String(c.label ?? c.class_id ?? "?")} ${percent(c.score)}`))),
      );
    }
    const countNames = { detections: "detection_count", segments: "segment_count", poses: "pose_count", oriented_boxes: "oriented_box_count" };
    for (const [name, countName] of Object.entries(countNames)) {
      const items = result[name];
      if (!Array.isArray(items)) continue;
      const counts = new Map();
      for (const item of items) {
        const labelText = String(item.label ?? item.class_id ?? "?");
        counts.set(labelText, (counts.get(labelText) || 0) + 1);
      }
      const total = typeof result[countName] === "number" ? result[countName] : items.length;
      const summary = [...counts].map(([labelText, n]) => `${n} × ${labelText}`).join(", ");
      parts.push(el("p", { class: "summary" }, `${total} ${name.replace("_", " ")}${summary ? ": " + summary : ""}`));
    }
    if (result.truncated) parts.push(el("p", { class: "hint" }, "the summary is cut short; the full result is in PostgreSQL"));
    return parts;
  }

  // --- submitting images -------------------------------------------------------------------------

  function contentTypeOf(file) {
    if (file.type) return file.type;
    const match = /\.([A-Za-z0-9]+)$/.exec(file.name);
    return (match && TYPES_BY_EXTENSION[match[1].toLowerCase()]) || "application/octet-stream";
  }

  function badge(status) {
    return el("span", { class: "badge", dataset: { status } }, status);
  }

  function setBadge(node, status) {
    node.dataset.status = status;
    node.textContent = status;
  }

  /** One upload's card in the list: title, badge, meta line, message, canvas, text result. */
  function newCard(title, kind) {
    const status = badge("CREATING");
    const meta = el("span", { class: "card-meta mono" });
    const message = el("p", { class: "error", hidden: true });
    const body = el("div", { class: "card-body" });
    const root = el(
      "li",
      { class: `card ${kind}`, dataset: { filename: title } },
      el("div", { class: "card-head" }, el("span", { class: "card-title" }, title), status, meta),
      message,
      body,
    );
    $("uploads").prepend(root);
    return {
      root,
      body,
      setStatus(value) {
        setBadge(status, value);
        root.dataset.status = value;
      },
      setMeta(text) {
        meta.textContent = text;
      },
      fail(text) {
        setBadge(status, "ERROR");
        root.dataset.status = "ERROR";
        message.textContent = text;
        message.hidden = false;
      },
      showError(text) {
        message.textContent = text;
        message.hidden = false;
      },
    };
  }

  async function submitImage(file) {
    const card = newCard(file.name, "job");
    const pictureUrl = URL.createObjectURL(file);
    const model = $("model").value || undefined;
    let created;
    try {
      created = await api("v1/jobs", { method: "POST", body: { filename: file.name, content_type: contentTypeOf(file), model } });
    } catch (err) {
      card.fail(err.text);
      URL.revokeObjectURL(pictureUrl);
      return;
    }
    card.root.dataset.jobId = created.job_id;
    sessionPictures.set(created.job_id, pictureUrl);
    card.setMeta(`${created.job_id}${model ? " · " + model : ""}`);
    card.setStatus("UPLOADING");
    try {
      await uploadTo(created.upload, file, file.name);
      card.setStatus(created.status || "PENDING");
      const job = await pollJob(created.job_id, (j) => card.setStatus(j.status));
      await showJobResult(card, job, pictureUrl);
    } catch (err) {
      card.fail(err instanceof ApiError ? err.text : String(err.message || err));
    }
    scheduleRecentRefresh();
  }

  async function showJobResult(card, job, pictureUrl) {
    card.setStatus(job.status);
    if (job.status === "FAILED") {
      const error = job.error || {};
      card.showError(`${String(error.message ?? "the job failed")}${error.code ? ` (${String(error.code)})` : ""}`);
    }
    const canvas = el("canvas", { class: "result-canvas" });
    card.body.replaceChildren(canvas, ...describeResult(job.result));
    try {
      drawResult(canvas, await loadImage(pictureUrl), job.result);
      card.root.dataset.drawn = canvas.dataset.drawn;
    } catch (err) {
      canvas.replaceWith(el("p", { class: "hint" }, String(err.message || err)));
    }
  }

  // --- submitting a video: frames extracted here, one batch ---------------------------------------

  function once(target, event, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out waiting for the video (${what})`));
      }, timeoutMs);
      const ok = () => {
        cleanup();
        resolve();
      };
      const bad = () => {
        cleanup();
        reject(new Error("this browser cannot decode this video"));
      };
      function cleanup() {
        clearTimeout(timer);
        target.removeEventListener(event, ok);
        target.removeEventListener("error", bad);
      }
      target.addEventListener(event, ok);
      target.addEventListener("error", bad);
    });
  }

  /** A name the API accepts for frame files: letters, digits and . _ - only, starting alnum. */
  function safeBase(name) {
    const stem = name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[^A-Za-z0-9]+/, "").replace(/\.\.+/g, ".");
    return stem.slice(0, 120) || "video";
  }

  function canvasBlob(canvas) {
    return new Promise((resolve, reject) =>
      canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("could not encode a frame"))), "image/jpeg", 0.9),
    );
  }

  function framePresented(video, timeoutMs = 1000) {
    // Registered before the seek, so the frame the seek brings triggers it; never waits longer
    // than timeoutMs (a browser without requestVideoFrameCallback does not wait at all).
    if (typeof video.requestVideoFrameCallback !== "function") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      video.requestVideoFrameCallback(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  async function extractFrames(file, fps, maxFrames, progress) {
    const url = URL.createObjectURL(file);
    const video = document.createElement("video");
    video.muted = true;
    video.preload = "auto";
    video.playsInline = true;
    try {
      const loaded = once(video, "loadeddata", 20000, "metadata");
      video.src = url;
      await loaded;
      let duration = video.duration;
      if (!Number.isFinite(duration)) {
        // Streams recorded in a browser may not state a duration: seek far past the end to learn it.
        const known = once(video, "seeked", 20000, "its duration");
        video.currentTime = 1e9;
        await known;
        duration = video.duration;
      }
      if (!Number.isFinite(duration) || duration <= 0 || !video.videoWidth) {
        throw new Error("this video has no frames this browser can read");
      }
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      const ctx = canvas.getContext("2d");
      const frames = [];
      const step = 1 / fps;
      for (let index = 0; frames.length < maxFrames; index += 1) {
        const time = index * step;
        if (time >= duration) break;
        const seeked = once(video, "seeked", 20000, "a frame");
        const presented = framePresented(video);
        video.currentTime = time;
        await seeked;
        // "seeked" can fire before the new frame is on screen (seen in headless Chromium under
        // load: the previous frame was drawn); wait for it to be presented, at most a moment.
        await presented;
        ctx.drawImage(video, 0, 0);
        frames.push({ index, time_ms: Math.round(time * 1000), blob: await canvasBlob(canvas) });
        progress(frames.length);
      }
      frames.width = canvas.width;
      frames.height = canvas.height;
      return frames;
    } finally {
      video.removeAttribute("src");
      video.load();
      URL.revokeObjectURL(url);
    }
  }

  async function runLimited(items, limit, work) {
    let next = 0;
    const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const mine = next;
        next += 1;
        await work(items[mine], mine);
      }
    });
    await Promise.all(workers);
  }

  async function submitVideo(file) {
    const card = newCard(file.name, "batch");
    card.setStatus("EXTRACTING");
    const progressBar = el("progress", { max: "1", value: "0" });
    const counts = el("p", { class: "card-meta counts" });
    const frameGrid = el("div", { class: "frames" });
    card.body.replaceChildren(progressBar, counts, frameGrid);
    const fps = Math.min(10, Math.max(0.1, Number($("video-fps").value) || 1));
    const maxFrames = Math.min(200, Math.max(1, Math.round(Number($("video-max").value) || 20)));
    const model = $("model").value || undefined;
    try {
      const frames = await extractFrames(file, fps, maxFrames, (n) => (counts.textContent = `${n} frames extracted`));
      if (!frames.length) throw new Error("no frames could be extracted from this video");
      const base = safeBase(file.name);
      const items = frames.map((f) => ({
        filename: `${base}-frame-${String(f.index).padStart(6, "0")}.jpg`,
        content_type: "image/jpeg",
        // Not the CLI's frame_index (a source frame's position): the browser samples by time only.
        meta: { sample: f.index, timestamp_ms: f.time_ms },
      }));
      card.setStatus("CREATING");
      const created = await api("v1/batches", {
        method: "POST",
        body: {
          items,
          model,
          name: file.name.slice(0, 200),
          meta: { kind: "browser-frames", source: file.name.slice(0, 200), sample_fps: fps, width: frames.width, height: frames.height },
        },
      });
      card.root.dataset.batchId = created.batch_id;
      card.setMeta(`batch ${created.batch_id}${model ? " · " + model : ""}`);
      card.setStatus("UPLOADING");
      let uploaded = 0;
      const pictures = new Map();
      await runLimited(created.jobs, PARALLEL_UPLOADS, async (ticket, i) => {
        const frame = frames[i];
        const pictureUrl = URL.createObjectURL(frame.blob);
        sessionPictures.set(ticket.job_id, pictureUrl);
        pictures.set(ticket.job_id, pictureUrl);
        await uploadTo(ticket.upload, frame.blob, items[i].filename);
        uploaded += 1;
        counts.textContent = `${uploaded} of ${frames.length} frames uploaded`;
      });
      card.setStatus("RUNNING");
      const batch = await pollBatch(created.batch_id, (b) => {
        progressBar.max = Math.max(1, b.total || 0);
        progressBar.value = b.finished || 0;
        const byStatus = Object.entries(b.counts || {})
          .map(([status, n]) => `${n} ${status}`)
          .join(", ");
        counts.textContent = `${b.finished} of ${b.total} finished${byStatus ? " · " + byStatus : ""}`;
      });
      card.setStatus(batch.status);
      await showFrames(created.batch_id, frameGrid, pictures);
    } catch (err) {
      card.fail(err instanceof ApiError ? err.text : String(err.message || err));
    }
    scheduleRecentRefresh();
  }

  async function pollBatch(batchId, onUpdate) {
    const started = Date.now();
    let delay = POLL_FIRST_MS;
    for (;;) {
      let batch = null;
      try {
        batch = await api(`v1/batches/${encodeURIComponent(batchId)}`, { query: { limit: 0 } });
      } catch (err) {
        const transient = err instanceof ApiError && (err.status === 0 || err.status >= 500);
        if (!transient) throw err;
      }
      if (batch) {
        onUpdate(batch);
        if (batch.status === "complete") return batch;
      }
      if (Date.now() - started > POLL_GIVE_UP_MS) throw new ApiError(0, "timeout", "stopped waiting: the batch has not ended after 15 minutes");
      await sleep(delay);
      delay = Math.min(POLL_MAX_MS, Math.round(delay * 1.4));
    }
  }

  async function showFrames(batchId, grid, pictures) {
    const members = [];
    let cursor;
    do {
      const page = await api(`v1/batches/${encodeURIComponent(batchId)}`, { query: { limit: 100, cursor } });
      members.push(...(page.jobs || []));
      cursor = page.next_cursor || undefined;
    } while (cursor);
    const frameOf = (job) => Number((job.meta && job.meta.sample) ?? 0);
    members.sort((a, b) => frameOf(a) - frameOf(b));
    for (const job of members) {
      const canvas = el("canvas", { class: "result-canvas", dataset: { jobId: job.job_id } });
      const seconds = job.meta && typeof job.meta.timestamp_ms === "number" ? `${(job.meta.timestamp_ms / 1000).toFixed(1)} s` : "";
      const found = job.result && Array.isArray(job.result.detections) ? `${job.result.detections.length} found` : "";
      const caption = el("figcaption", {}, [`frame ${frameOf(job)}`, seconds, found].filter(Boolean).join(" · "), " ", badge(job.status));
      grid.append(el("figure", {}, canvas, caption));
      const url = pictures.get(job.job_id);
      if (url) {
        try {
          drawResult(canvas, await loadImage(url), job.result);
        } catch (err) {
          canvas.hidden = true;
        }
      }
    }
  }

  // --- submissions -------------------------------------------------------------------------------

  function submitFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    if (!apiKey()) {
      setKeyStatus("enter an API key first", true);
      return;
    }
    const videos = files.filter((f) => f.type.startsWith("video/"));
    const images = files.filter((f) => !f.type.startsWith("video/"));
    for (const video of videos) submitVideo(video);
    runLimited(images, PARALLEL_UPLOADS, (file) => submitImage(file));
  }

  // --- recent jobs -------------------------------------------------------------------------------

  function formatTime(iso) {
    const date = new Date(String(iso));
    return Number.isNaN(date.getTime()) ? String(iso ?? "") : date.toLocaleString();
  }

  function recentRow(job) {
    const row = el(
      "tr",
      { tabindex: "0", dataset: { jobId: String(job.job_id), status: String(job.status) } },
      el("td", {}, formatTime(job.created_at)),
      el("td", {}, String(job.filename ?? job.key ?? "")),
      el("td", {}, String(job.model ?? "")),
      el("td", {}, badge(String(job.status))),
      el("td", { class: "mono", title: String(job.job_id) }, String(job.job_id).slice(0, 12)),
    );
    const open = () => showDetail(String(job.job_id), row);
    row.addEventListener("click", open);
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        open();
      }
    });
    return row;
  }

  async function loadRecent(append) {
    if (!apiKey()) return;
    const seq = ++state.recentSeq;
    const errorLine = $("recent-error");
    const query = {
      limit: RECENT_PAGE,
      status: $("filter-status").value,
      model: $("filter-model").value,
      cursor: append ? state.recentCursor : undefined,
    };
    let page;
    try {
      page = await api("v1/jobs", { query });
    } catch (err) {
      if (seq !== state.recentSeq) return;
      errorLine.textContent = err.text;
      errorLine.hidden = false;
      return;
    }
    if (seq !== state.recentSeq) return; // a newer request (filter change) superseded this one
    errorLine.hidden = true;
    const rows = $("recent-rows");
    if (!append) rows.replaceChildren();
    for (const job of page.jobs || []) rows.append(recentRow(job));
    if (!rows.children.length) rows.append(el("tr", { class: "empty" }, el("td", { colspan: "5" }, "no jobs")));
    state.recentCursor = page.next_cursor || null;
    $("recent-more").hidden = !state.recentCursor;
    $("recent-panel").dataset.loaded = String(seq);
  }

  function scheduleRecentRefresh() {
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(() => loadRecent(false), 300);
  }

  async function showDetail(jobId, row) {
    for (const selected of document.querySelectorAll("#recent-rows tr.selected")) selected.classList.remove("selected");
    if (row) row.classList.add("selected");
    const detail = $("detail");
    const title = $("detail-title");
    const json = $("detail-json");
    const canvas = $("detail-canvas");
    detail.hidden = false;
    detail.dataset.jobId = jobId;
    title.textContent = jobId;
    json.textContent = "loading…";
    canvas.hidden = true;
    let job;
    try {
      job = await api(`v1/jobs/${encodeURIComponent(jobId)}`);
    } catch (err) {
      json.textContent = err.text;
      return;
    }
    if (detail.dataset.jobId !== jobId) return; // another row was clicked meanwhile
    title.textContent = `${String(job.filename ?? job.key ?? jobId)} · ${String(job.status)}`;
    json.textContent = JSON.stringify(job, null, 2);
    const pictureUrl = sessionPictures.get(jobId);
    if (pictureUrl) {
      try {
        drawResult(canvas, await loadImage(pictureUrl), job.result);
      } catch (err) {
        canvas.hidden = true;
      }
    }
  }

  // --- wiring ------------------------------------------------------------------------------------

  function init() {
    $("key-save").addEventListener("click", connect);
    $("api-key").addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        connect();
      }
    });
    $("key-forget").addEventListener("click", forgetKey);

    const input = $("files");
    input.addEventListener("change", () => {
      submitFiles(input.files);
      input.value = "";
    });
    const drop = $("drop");
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      submitFiles(event.dataTransfer && event.dataTransfer.files);
    });
    drop.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        input.click();
      }
    });

    $("filter-status").addEventListener("change", () => loadRecent(false));
    $("filter-model").addEventListener("change", () => loadRecent(false));
    $("recent-refresh").addEventListener("click", () => loadRecent(false));
    $("recent-more").addEventListener("click", () => loadRecent(true));

    if (apiKey()) connect();
    else setKeyStatus("enter an API key to start");
    document.body.dataset.ready = "true";
  }

  init();
})();
