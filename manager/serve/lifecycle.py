"""A server's life: start-up in phases, readiness, and a clean shutdown on SIGTERM or SIGINT.

- The port is bound and answering before the model loads: ``/livez`` is 200 at once, ``/readyz``
  and ``/v2/health/ready`` are 503 until the backbone is loaded, the deltas resident and the
  costs measured, and predictions until then get a 503 saying so. Each phase prints a line.
- SIGTERM or SIGINT (what Kubernetes, systemd and Ctrl-C send) drains: ``/readyz`` turns 503 and
  new predictions get a 503, what is queued or in flight is answered for up to
  ``--drain-seconds``, whatever is left then gets a 503, the listener closes, "stopped" is
  printed and the process exits 0. Nothing accepted is dropped without an answer. A second
  signal stops at once.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from manager import progress
from manager.serve.state import ServeState

STARTUP_PHASES = 3  # the lines engine.start reports: backbone, deltas, calibration


def make_starter(
    state: ServeState, log: Callable[[str], None], started: float
) -> Callable[[], bool]:
    """The model worker's first job: load and measure, then mark the server ready."""

    def start() -> bool:
        engine = state.engine
        try:
            # A bar over the phases (backbone, deltas, calibration) on a terminal; each phase
            # still prints its line, above the bar.
            with progress.current().phases("starting", STARTUP_PHASES) as bar:
                say = bar.above(log)

                def phase(message: str) -> None:
                    say(message)
                    bar.advance()

                engine.start(warn=lambda m: say(f"note: {m}"), progress=phase)
        except Exception as exc:  # one line, and the server stops: nothing to serve with
            state.failed = f"start-up failed: {' '.join(str(exc).split()) or type(exc).__name__}"
            return False
        if state.draining:
            return False
        state.metrics.set_live()  # from here on requests and batches count
        state.ready = True
        why = engine.servable()
        n = sum(1 for w in why.values() if w is None)
        log(
            f"ready: serving {n} of {len(why)} task(s) on {engine.device}, "
            f"{len(engine.switchers)} backbone(s) loaded, in "
            f"{time.perf_counter() - started:.1f} s from start"
        )
        return True

    return start


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with signals that drain first and a normal exit afterwards."""

    def __init__(self, config: uvicorn.Config, state: ServeState, log: Callable[[str], None]):
        super().__init__(config)
        self.state = state
        self.log = log
        self._drain_thread: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn's own handler would re-raise the signal once shut down (exit 143 on SIGTERM).
        if self._drain_thread is not None:  # a second signal: stop now
            self.force_exit = True
            self.should_exit = True
            return
        self._drain_thread = threading.Thread(
            target=self.drain, args=(signal.Signals(sig).name,), name="mgr-drain", daemon=True
        )
        self._drain_thread.start()

    def drain(self, why: str) -> None:
        """Answer what was accepted, refuse the rest, then let uvicorn close (see module doc)."""
        state = self.state
        seconds = state.config.drain_seconds
        state.draining = True
        state.scheduler.close_intake()
        self.log(f"draining ({why}): {state.inflight} request(s) in flight, up to {seconds:g} s")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and (state.inflight or not state.scheduler.idle()):
            time.sleep(0.01)
        state.scheduler.stop()  # what is still queued gets a 503
        grace = time.monotonic() + 5  # for those answers to be written
        while time.monotonic() < grace and state.inflight:
            time.sleep(0.01)
        self.should_exit = True

    def stop_on_failure(self) -> None:
        """Start-up failed: close without draining."""
        self.should_exit = True


def watch_startup(server: DrainingServer, state: ServeState) -> None:
    """Close the server if start-up fails (a thread: the failure happens on the model worker)."""

    def watch() -> None:
        while not server.should_exit:
            if state.failed is not None:
                server.stop_on_failure()
                return
            if state.ready:
                return
            time.sleep(0.05)

    threading.Thread(target=watch, name="mgr-start-watch", daemon=True).start()
