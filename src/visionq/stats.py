"""`visionq stats`: scrape the workers' (and the API's) ``/metrics`` and print what they say.

    run_stats(["127.0.0.1:9464"], interval=1.0)   # two scrapes 1 s apart; the text to print

Images per second is the increase of ``visionq_images_processed_total`` (summed over every endpoint)
between two scrapes, divided by the time between them; with one scrape there is no rate. Counters
and histograms are summed over the endpoints; gauges take the largest value (every worker samples
the same queue, so summing would count it once per worker). Means (batch size, time per stage) are
over everything the endpoints counted since they started.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from visionq.metrics import STAGES

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]


@dataclass
class Snapshot:
    """What the endpoints said at ``taken_at`` (``time.monotonic()``): sample name and labels -> value."""

    taken_at: float
    values: dict[Key, float] = field(default_factory=dict)
    scraped: list[str] = field(default_factory=list)  # the endpoints that answered
    errors: dict[str, str] = field(default_factory=dict)  # endpoint -> why it did not
    processed: dict[str, float] = field(default_factory=dict)  # endpoint -> its images processed so far

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)

    def by(self, name: str, label: str, **where: str) -> dict[str, float]:
        """``name``'s values summed by ``label``, over the samples whose labels include ``where``."""
        out: dict[str, float] = defaultdict(float)
        for (sample, labels), value in self.values.items():
            found = dict(labels)
            if sample == name and label in found and all(found.get(k) == v for k, v in where.items()):
                out[found[label]] += value
        return dict(out)

    def total(self, name: str) -> float:
        return sum(value for (sample, _), value in self.values.items() if sample == name)


PROCESSED = "visionq_images_processed_total"


def metrics_url(endpoint: str) -> str:
    """``host:port``, ``http://host:port`` or a full URL -> the URL of its metrics."""
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    scheme, _, rest = url.partition("://")
    return url if "/" in rest.strip("/") else f"{scheme}://{rest.rstrip('/')}/metrics"


def parse(text: str, into: dict[Key, float] | None = None) -> dict[Key, float]:
    """Samples of a Prometheus text exposition (buckets and creation times left out), added into
    ``into``: counters and histograms summed, gauges by their largest value."""
    values = {} if into is None else into
    for family in text_string_to_metric_families(text):
        is_gauge = family.type == "gauge"
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created")):
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in values:
                values[key] = max(values[key], sample.value) if is_gauge else values[key] + sample.value
            else:
                values[key] = float(sample.value)
    return values


def collect(urls: Iterable[str], *, timeout: float = 5.0) -> Snapshot:
    """Scrape every endpoint once; one that does not answer is named in ``errors``."""
    snapshot = Snapshot(taken_at=time.monotonic())
    with httpx.Client(timeout=timeout) as client:
        for endpoint in urls:
            url = metrics_url(endpoint)
            try:
                response = client.get(url)
                response.raise_for_status()
                before = snapshot.total(PROCESSED)
                parse(response.text, snapshot.values)
                snapshot.processed[url] = snapshot.total(PROCESSED) - before
            except (httpx.HTTPError, ValueError) as exc:
                snapshot.errors[url] = str(exc) or type(exc).__name__
                continue
            snapshot.scraped.append(url)
    return snapshot


def images_per_second(snapshot: Snapshot, previous: Snapshot) -> float | None:
    """The processed-images counter's increase per second between the two scrapes (None: no time
    passed; a restarted worker's counter going back counts as no increase)."""
    seconds = snapshot.taken_at - previous.taken_at
    if seconds <= 0:
        return None
    # Over the endpoints that answered both times: one that answered once (a worker restarting)
    # would add or hide its whole lifetime's count.
    both = snapshot.processed.keys() & previous.processed.keys()
    return sum(max(0.0, snapshot.processed[url] - previous.processed[url]) for url in both) / seconds


def format_snapshot(snapshot: Snapshot, previous: Snapshot | None = None) -> str:
    """The snapshot as lines of text; ``previous``, an earlier scrape of the same endpoints, gives
    the images per second."""
    head = f"endpoints: {len(snapshot.scraped)} answered"
    lines = [head + (f", {len(snapshot.errors)} did not" if snapshot.errors else "")]
    lines += [f"  {url}: {why}" for url, why in sorted(snapshot.errors.items())]

    queues = sorted(snapshot.by("visionq_queue_messages", "queue"))
    for queue in queues:
        depth = {
            state: int(snapshot.get("visionq_queue_messages", queue=queue, state=state))
            for state in ("visible", "in_flight", "delayed")
        }
        ages = snapshot.by("visionq_queue_oldest_message_age_seconds", "queue")
        age = f"; oldest message seen {ages[queue]:.1f} s old" if queue in ages else ""
        summary = f"{depth['visible']} visible, {depth['in_flight']} in flight, {depth['delayed']} delayed"
        lines.append(f"queue {queue}: {summary}{age}")
    if not queues:
        lines.append("queue: not sampled (no worker endpoint, or none sampled yet)")

    if previous is None:
        lines.append("images/s: n/a (one scrape)")
    else:
        rate = images_per_second(snapshot, previous)
        seconds = snapshot.taken_at - previous.taken_at
        lines.append("images/s: n/a" if rate is None else f"images/s: {rate:.2f} (over {seconds:.1f} s)")

    status = snapshot.by("visionq_images_processed_total", "status")
    lines.append(f"images: {int(status.get('succeeded', 0))} succeeded, {int(status.get('failed', 0))} failed")
    per_model = sorted(snapshot.by("visionq_images_processed_total", "model").items())
    if len(per_model) > 1:
        lines.append("  by model: " + ", ".join(f"{model} {int(n)}" for model, n in per_model))
    failures = sorted(snapshot.by("visionq_image_failures_total", "code").items(), key=lambda kv: (-kv[1], kv[0]))
    if failures:
        lines.append("failed by code: " + ", ".join(f"{code} {int(n)}" for code, n in failures))

    batches = snapshot.total("visionq_batch_size_count")
    if batches:
        mean = snapshot.total("visionq_batch_size_sum") / batches
        lines.append(f"batch size: mean {mean:.2f} over {int(batches)} batches")
    else:
        lines.append("batch size: no batches yet")

    counts = snapshot.by("visionq_stage_seconds_count", "stage")
    sums = snapshot.by("visionq_stage_seconds_sum", "stage")
    order = [s for s in STAGES if counts.get(s)] + sorted(s for s in counts if s not in STAGES and counts[s])
    if order:
        lines.append("time per image by stage (mean ms):")
        lines += [
            f"  {stage:<12} {sums.get(stage, 0.0) / counts[stage] * 1000:10.2f}   ({int(counts[stage])})"
            for stage in order
        ]

    loads = sorted(snapshot.by("visionq_model_load_seconds", "model").items())
    if loads:
        lines.append("model load: " + ", ".join(f"{model} {seconds:.2f} s" for model, seconds in loads))

    requests = snapshot.by("visionq_api_requests_total", "route")
    if requests:
        latency = snapshot.by("visionq_api_request_seconds_sum", "route")
        lines.append("API requests (mean ms):")
        lines += [
            f"  {route:<28} {int(n):8d}   {latency.get(route, 0.0) / n * 1000:8.2f}"
            for route, n in sorted(requests.items())
            if n
        ]
    return "\n".join(lines)


def run_stats(urls: Iterable[str], interval: float = 1.0) -> str:
    """Scrape ``urls`` twice, ``interval`` seconds apart (0: once, without a rate); the text to print."""
    urls = list(urls)
    first = collect(urls)
    if interval <= 0:
        return format_snapshot(first)
    time.sleep(interval)
    return format_snapshot(collect(urls), previous=first)
