"""Counters and histograms of the server, written in the Prometheus text format (version 0.0.4).

A handful of series, so the exposition is written here rather than pulling in a client library.
Every update takes one lock: the event loop, the request threads and the model worker all count.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative buckets, a sum and a count (one label set)."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, n in zip([*self.buckets, float("inf")], self.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{braces} {self.sum:.6f}")
        out.append(f"{name}_count{braces} {self.count}")
        return out


class Metrics:
    """What ``GET /metrics`` shows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = defaultdict(int)  # by HTTP status
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batches: dict[str, int] = defaultdict(int)  # by mode: merged, mixed
        self.images = 0
        self.switches = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.mixed_builds = 0
        self.queued = 0  # images waiting, a gauge

    def request(self, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[str(status)] += 1
            self.latency.observe(seconds)

    def batch(self, mode: str, size: int) -> None:
        with self._lock:
            self.batches[mode] += 1
            self.batch_size.observe(size)
            self.images += size

    def add(self, field: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + n)

    def render(self) -> str:
        """The exposition text."""
        with self._lock:
            out = [
                "# HELP mgr_requests_total Prediction requests answered, by HTTP status.",
                "# TYPE mgr_requests_total counter",
            ]
            out += [
                f'mgr_requests_total{{status="{k}"}} {v}' for k, v in sorted(self.requests.items())
            ]
            out += [
                "# HELP mgr_request_seconds Time from a request's arrival to its answer.",
                "# TYPE mgr_request_seconds histogram",
                *self.latency.lines("mgr_request_seconds"),
                "# HELP mgr_batch_size Images per model batch.",
                "# TYPE mgr_batch_size histogram",
                *self.batch_size.lines("mgr_batch_size"),
                "# HELP mgr_batches_total Model batches, by mode (merged: one task switched in; "
                "mixed: several tasks unmerged).",
                "# TYPE mgr_batches_total counter",
            ]
            out += [f'mgr_batches_total{{mode="{k}"}} {v}' for k, v in sorted(self.batches.items())]
            for name, kind, help_, value in (
                ("mgr_images_total", "counter", "Images classified.", self.images),
                ("mgr_switches_total", "counter", "Fused switches of the merged model.",
                 self.switches),
                ("mgr_cache_hits_total", "counter", "Switches to a resident delta.",
                 self.cache_hits),
                ("mgr_cache_misses_total", "counter", "Switches that read an artifact.",
                 self.cache_misses),
                ("mgr_mixed_builds_total", "counter", "Mixed-task models built.",
                 self.mixed_builds),
                ("mgr_queued_images", "gauge", "Images waiting for the model.", self.queued),
            ):  # fmt: skip
                out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(out) + "\n"
