"""Per-task queues and the one worker thread that owns the model.

Requests queue per task version. The worker waits for the first request, then up to
``max_wait`` seconds more (or until ``max_batch`` images wait), takes queues oldest head first up to
``max_batch`` images, and serves them: one group runs merged; several groups either switch one
after another (the live one first) or run as one mixed-task batch, whichever the engine's
`CostModel` says is cheaper (``schedule="switch"`` or ``"mixed"`` forces one, for tests and
benchmarks). A group whose artifact fails to load fails alone; the others are answered.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from manager.catalog.refs import VersionRef
from manager.errors import MgrError
from manager.serve.engine import Engine, Key, key_of
from manager.serve.errors import ServeError
from manager.serve.metrics import Metrics
from manager.serve.state import SCHEDULES

__all__ = ["SCHEDULES", "Job", "Result", "Scheduler", "ServeError"]


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


@dataclass
class Result:
    """A job's answer: probabilities ``(n, classes)`` and how they were made."""

    probs: Tensor
    ref: VersionRef
    class_names: list[str]
    mode: str  # merged or mixed
    batch_images: int
    batch_tasks: int
    queue_s: float
    model_s: float
    switched: bool


@dataclass
class Job:
    """One request's images for one task version; ``done`` gets a Result or a ServeError."""

    ref: VersionRef
    class_names: list[str]
    images: Tensor | Sequence[Any]
    done: Callable[[Result | ServeError], None]
    arrived: float = field(default_factory=time.monotonic)

    @property
    def n(self) -> int:
        return len(self.images)


class Scheduler:
    """Batches jobs for one `Engine` on a worker thread (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.005,
        max_queue: int = 4096,
        schedule: str = "auto",
        threads: int = 0,
        metrics: Metrics | None = None,
    ):
        if schedule not in SCHEDULES:
            raise MgrError(f"unknown schedule {schedule!r} (one of {', '.join(SCHEDULES)})")
        self.engine = engine
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.schedule, self.threads = schedule, threads
        self.metrics = metrics or engine.metrics
        self._queues: OrderedDict[Key, deque[Job]] = OrderedDict()
        self._queued = 0
        self._cond = threading.Condition()
        self._running = False
        self._accepting = False  # False before start-up is over and once draining begins
        self._busy = False  # the worker holds a batch
        self._on_start: Callable[[], bool] | None = None
        self._started = False
        self._thread = threading.Thread(target=self._loop, name="mgr-serve-model", daemon=True)

    def start(self, on_start: Callable[[], bool] | None = None) -> None:
        """Start the worker; it first runs ``on_start`` (loading the model: torch work stays on
        this one thread) and accepts jobs once that returns True."""
        self._running = True
        self._on_start = on_start
        if on_start is None:
            self._accepting = True
        self._thread.start()

    @property
    def accepting(self) -> bool:
        return self._accepting

    def close_intake(self) -> None:
        """Refuse new jobs (503) from now on; queued ones are still served."""
        with self._cond:
            self._accepting = False

    def idle(self) -> bool:
        """Nothing queued and no batch in the model."""
        with self._cond:
            return not self._queued and not self._busy

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker (after its batch); jobs still queued get a 503."""
        with self._cond:
            self._running = False
            self._accepting = False
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._cond:
            left = [job for q in self._queues.values() for job in q]
            self._queues.clear()
            self.metrics.add("queued", -self._queued)
            self._queued = 0
        for job in left:
            job.done(ServeError(503, "the server is shutting down; retry"))

    @property
    def queued(self) -> int:
        return self._queued

    def submit(self, job: Job) -> None:
        """Queue ``job``; ServeError(503) when the queue is full or the worker has stopped."""
        with self._cond:
            if not self._accepting:
                if self._running and self._on_start is not None and not self._started:
                    raise ServeError(503, "the server is starting; retry when /readyz says ready")
                raise ServeError(503, "the server is shutting down; retry")
            if self._queued and self._queued + job.n > self.max_queue:
                raise ServeError(503, f"queue full ({self._queued} images waiting); retry later")
            self._queues.setdefault(key_of(job.ref), deque()).append(job)
            self._queued += job.n
            self.metrics.add("queued", job.n)
            self._cond.notify()

    # -- the worker ------------------------------------------------------------------------

    def _take(self) -> list[Job] | None:
        with self._cond:
            while self._running and not self._queued:
                self._cond.wait()
            if not self._running:
                return None
            oldest = min(q[0].arrived for q in self._queues.values())
            deadline = oldest + self.max_wait_s
            while self._running and self._queued < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            heads = sorted(self._queues.items(), key=lambda kv: kv[1][0].arrived)
            taken: list[Job] = []
            count = 0
            for key, q in heads:
                while q and (count == 0 or count + q[0].n <= self.max_batch):
                    job = q.popleft()
                    taken.append(job)
                    count += job.n
                if not q:
                    del self._queues[key]
                if count >= self.max_batch:
                    break
            self._queued -= count
            self._busy = True
            self.metrics.add("queued", -count)
            return taken

    def _loop(self) -> None:
        if self.threads:  # OpenMP's thread count is per thread: set it where the model runs
            import torch

            torch.set_num_threads(self.threads)
        if self._on_start is not None:
            ok = self._on_start()
            with self._cond:
                self._started = True
                self._accepting = ok and self._running
            if not ok:
                return
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                self.serve(jobs)
            except Exception as exc:  # the worker must survive anything one batch does
                status = 503 if _out_of_memory(exc) else 500
                for job in jobs:
                    job.done(ServeError(status, f"internal error: {type(exc).__name__}: {exc}"))
            finally:
                with self._cond:
                    self._busy = False

    def serve(self, jobs: Sequence[Job]) -> None:
        """Answer ``jobs`` (each gets exactly one ``done`` call)."""
        import torch

        start = time.monotonic()
        groups: OrderedDict[Key, list[Job]] = OrderedDict()
        for job in jobs:
            groups.setdefault(key_of(job.ref), []).append(job)
        xs: dict[Key, Tensor] = {}
        for key, members in list(groups.items()):
            try:
                xs[key] = torch.cat([self.engine.images(j.images) for j in members])
            except MgrError as exc:
                self._fail(groups.pop(key), ServeError.of(exc))
        if len(groups) > 1 and self.schedule != "switch" and self._mixed(groups, xs, start):
            return
        self._switching(groups, xs, start)

    def _mixed(
        self, groups: OrderedDict[Key, list[Job]], xs: dict[Key, Tensor], start: float
    ) -> bool:
        """Serve ``groups`` as one mixed batch if allowed and cheaper; False: not done."""
        engine = self.engine
        for key, members in list(groups.items()):
            try:
                ok = engine.mixable(members[0].ref)
            except MgrError as exc:  # a bad artifact fails its own requests only
                self._fail(groups.pop(key), ServeError.of(exc))
                continue
            if not ok:
                return False
        if len(groups) < 2:
            return False
        refs = [m[0].ref for m in groups.values()]
        if len({r.backbone_id for r in refs}) != 1:
            return False  # tasks on several backbones: each backbone's groups switch in turn
        sizes = [len(xs[k]) for k in groups]
        if self.schedule == "auto":
            costs = engine.costs
            if costs is None:
                return False
            switches = len(refs) - sum(engine.is_current(r) for r in refs)
            mixed = costs.mixed_cost(sizes, engine.mixed_needs_build(refs))
            if mixed is None or mixed >= costs.switching_cost(sizes, switches):
                return False
        t0 = time.monotonic()
        try:
            probs = engine.run_mixed(refs, [xs[k] for k in groups])
        except MgrError:
            return False  # served by switching, where a failure stays with its group
        model_s = time.monotonic() - t0
        total = sum(sizes)
        self.metrics.batch("mixed", total)
        for (key, members), p in zip(groups.items(), probs, strict=True):
            ref = members[0].ref
            self._answer(
                members,
                p,
                ref,
                members[0].class_names,
                "mixed",
                total,
                len(groups),
                start,
                model_s,
                False,
            )
            del key
        return True

    def _switching(
        self, groups: OrderedDict[Key, list[Job]], xs: dict[Key, Tensor], start: float
    ) -> None:
        engine = self.engine
        # The live ones first, then by backbone: each backbone is used once per batch.
        order = sorted(
            groups,
            key=lambda k: (
                not engine.is_current(groups[k][0].ref),
                groups[k][0].ref.backbone_id or 0,
            ),
        )
        total = sum(len(xs[k]) for k in order)
        for key in order:
            members = groups[key]
            t0 = time.monotonic()
            try:
                out, switched = self.engine.run_merged(members[0].ref, xs[key])
            except MgrError as exc:
                self._fail(members, ServeError.of(exc))
                continue
            self.metrics.batch("merged", len(xs[key]))
            self._answer(
                members,
                out.probs,
                out.ref,
                out.class_names,
                "merged",
                total,
                len(order),
                start,
                time.monotonic() - t0,
                switched,
            )

    def _answer(
        self,
        members: list[Job],
        probs: Tensor,
        ref: VersionRef,
        class_names: list[str],
        mode: str,
        batch_images: int,
        batch_tasks: int,
        start: float,
        model_s: float,
        switched: bool,
    ) -> None:
        at = 0
        for job in members:
            part = probs[at : at + job.n]
            at += job.n
            job.done(
                Result(
                    part,
                    ref,
                    class_names,
                    mode,
                    batch_images,
                    batch_tasks,
                    start - job.arrived,
                    model_s,
                    switched,
                )
            )

    @staticmethod
    def _fail(members: list[Job], error: ServeError) -> None:
        for job in members:
            job.done(error)
