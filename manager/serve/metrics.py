"""The server's metrics through ``prometheus_client`` (``GET /metrics``).

Each server has its own registry: the process and Python collectors plus the ``mgr_*`` series.
Nothing is counted until the server is ready (``Metrics.live``), so start-up's calibration
switches, cache loads and mixed builds never show as traffic: before the first request every
request and batch counter reads zero.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import (
    disable_created_metrics as _disable_created,
)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_disable_created()  # one sample per counter: `*_created` series would double the exposition

_COUNTERS = {
    "switches": ("mgr_switches", "Fused switches of the merged model."),
    "cache_hits": ("mgr_cache_hits", "Switches to a resident delta."),
    "cache_misses": ("mgr_cache_misses", "Switches that read an artifact."),
    "mixed_builds": ("mgr_mixed_builds", "Mixed-task models built."),
    "backbone_evictions": ("mgr_backbone_evictions", "Backbones unloaded to fit --max-memory."),
    "resolver_hits": ("mgr_resolver_hits", "Requests resolved from the in-memory catalog view."),
    "resolver_refreshes": (
        "mgr_resolver_refreshes",
        "Catalog reads by the resolver (a change seen, or a first use of a name).",
    ),
}


class Metrics:
    """What ``GET /metrics`` shows; safe to update from any thread."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        self.live = False  # set when start-up is over: nothing before it counts
        self._requests = Counter(
            "mgr_requests", "Prediction requests answered, by HTTP status.", ["status"],
            registry=reg,
        )  # fmt: skip
        self._latency = Histogram(
            "mgr_request_seconds", "Time from a request's arrival to its answer.", registry=reg
        )
        self._batch_size = Histogram(
            "mgr_batch_size", "Images per model batch.", buckets=BATCH_BUCKETS, registry=reg
        )
        self._batches = Counter(
            "mgr_batches",
            "Model batches, by mode (merged: one task switched in; mixed: several tasks unmerged).",
            ["mode"],
            registry=reg,
        )
        self._images = Counter("mgr_images", "Images classified.", registry=reg)
        self._counters = {
            field: Counter(name, help_, registry=reg) for field, (name, help_) in _COUNTERS.items()
        }
        self._queued = Gauge("mgr_queued_images", "Images waiting for the model.", registry=reg)
        self._ready = Gauge("mgr_ready", "1 once the server answers predictions.", registry=reg)
        self._backbone_bytes = Gauge(
            "mgr_backbone_resident_bytes",
            "Bytes held per loaded backbone: W0, its serving copy, resident deltas, mixed tables.",
            ["backbone"],
            registry=reg,
        )
        self._backbone_labels: set[str] = set()

    def set_live(self) -> None:
        self.live = True
        self._ready.set(1)

    def set_backbones(self, held: dict[str, int]) -> None:
        """Bytes per loaded backbone (a state, counted during start-up too); unloaded ones go."""
        for gone in self._backbone_labels - set(held):
            self._backbone_bytes.remove(gone)
        for label, n in held.items():
            self._backbone_bytes.labels(label).set(n)
        self._backbone_labels = set(held)

    def request(self, status: int, seconds: float) -> None:
        self._requests.labels(str(status)).inc()
        self._latency.observe(seconds)

    def batch(self, mode: str, size: int) -> None:
        if not self.live:
            return
        self._batches.labels(mode).inc()
        self._batch_size.observe(size)
        self._images.inc(size)

    def add(self, field: str, n: int = 1) -> None:
        if field == "queued":  # a gauge: it must balance whenever it moves
            self._queued.inc(n)
        elif self.live and n:
            self._counters[field].inc(n)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
