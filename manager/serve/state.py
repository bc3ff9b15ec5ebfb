"""What one server holds, kept on ``app.state.mgr``: its configuration, engine, scheduler,
resolver, decoder pool, metrics and where it is in its life (starting, ready, draining)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from manager.serve.accesslog import AccessLog
    from manager.serve.engine import Engine
    from manager.serve.inputs import Decoder
    from manager.serve.metrics import Metrics
    from manager.serve.resolver import Resolver
    from manager.serve.scheduler import Scheduler


SCHEDULES = ("auto", "switch", "mixed")  # the scheduler's choices (``serve.scheduler``)


@dataclass
class ServeConfig:
    """What ``mgr serve`` was asked for (the limits apply per request)."""

    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    precision: str | None = None
    max_batch: int = 64
    max_wait_ms: float = 5.0
    resident: int = 8
    pins: tuple[str, ...] = ()
    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_request_pixels: int = 200_000_000
    max_images: int = 256
    max_queue: int = 4096
    schedule: str = "auto"
    threads: int = 0  # torch intra-op threads of the model; 0: torch's default
    timeout_s: float = 120.0
    api_keys: tuple[str, ...] = ()  # never printed: see __repr__
    protect_metrics: bool = False
    allow_unauthenticated: bool = False
    access_log: str | None = None  # a file; None: stderr
    log_level: str = "info"
    drain_seconds: float = 30.0
    docs: bool = True
    decode_workers: int = 0  # 0: one per CPU, at most 8
    max_memory: int | None = None  # bytes the backbones may hold together; None: no bound

    def __repr__(self) -> str:  # the keys must never reach a log or a traceback
        fields = {k: v for k, v in self.__dict__.items() if k != "api_keys"}
        return f"ServeConfig({fields}, api_keys=<{len(self.api_keys)} hidden>)"


@dataclass
class ServeState:
    """One server's parts and phase (see the module docstring)."""

    config: ServeConfig
    engine: Engine
    scheduler: Scheduler
    resolver: Resolver
    decoder: Decoder
    metrics: Metrics
    access: AccessLog
    ready: bool = False
    draining: bool = False
    failed: str | None = None  # start-up's fatal error, one line
    inflight: int = 0  # prediction requests between arrival and answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self) -> None:
        with self.lock:
            self.inflight += 1

    def leave(self) -> None:
        with self.lock:
            self.inflight -= 1
