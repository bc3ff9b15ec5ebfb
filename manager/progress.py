"""Progress you can see: rich bars on a terminal, a plain line per epoch in logs, or nothing.

The CLI picks one ``Display`` for the whole command (``showing(Display.for_stderr(quiet))``); the
work reports to ``current()`` where it happens (each epoch in ``train.loop``, a decode in
``train.data``, the server's start-up phases in ``serve.lifecycle``), so no callback travels down
the layers. Nothing is configured by default: a library caller gets no output it did not ask for.

- ``bars`` (stderr is a terminal): a transient rich bar per epoch (steps, img/s, ETA), per decoded
  split (images, images/s, ETA) and over the server's start-up phases; each epoch leaves its one
  summary line.
- ``lines`` (stderr is not a terminal: CI, logs): the epoch lines only, nothing per step.
- ``off``: nothing (``--quiet``, ``--json``, library use, torchrun ranks other than 0).

``Display.transient()`` keeps the bars and drops the lasting lines: a ``--tune`` trial's epochs
show as bars on a terminal, and only the tuner's one line per trial stays (in logs too).

rich is imported only when a bar is drawn, so commands that show none do not pay for it. The
current display is a module global, not a context variable: the server's start-up runs on a worker
thread, which would not see the caller's context.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

Mode = Literal["bars", "lines", "off"]
MODES: tuple[Mode, ...] = ("bars", "lines", "off")


class Tracker:
    """One piece of long work on show: ``advance`` it as work is done (a no-op without a bar)."""

    def __init__(self, bar: Any = None, task: Any = None):
        self._bar, self._task = bar, task

    def advance(self, n: float = 1, **fields: Any) -> None:
        """``n`` more units done; ``fields`` update the bar's other columns (loss, lr, step)."""
        if self._bar is not None:
            self._bar.update(self._task, advance=n, **fields)

    def above(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` for use while the bar is live: its lines printed above the bar, through the
        bar's console (``click.echo`` would write past rich's redirection, onto the bar's line);
        ``log`` itself when there is no bar."""
        if self._bar is None:
            return log
        console = self._bar.console
        return lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)


class Display:
    """Where and how progress is shown (see the module doc for the modes)."""

    def __init__(self, mode: Mode = "off", console: Any = None, lasting: bool = True):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self._console = console  # a rich Console; made on first use for stderr
        self.lasting = lasting  # whether `say` lines stay (False: bars only)

    @classmethod
    def for_stderr(cls, quiet: bool = False) -> Display:
        """Bars when stderr is a terminal, else lines; nothing when ``quiet`` or on a torchrun
        rank other than 0 (rank 0 speaks for the run)."""
        if quiet or os.environ.get("RANK", "0") != "0":
            return cls("off")
        return cls("bars" if sys.stderr.isatty() else "lines")

    def transient(self) -> Display:
        """This display without its lasting lines: the bars while work runs, nothing after it,
        and nothing at all in logs. For work whose caller reports it in its own words (a tuning
        trial: one line per trial, not one per epoch of each)."""
        return Display(self.mode if self.mode == "bars" else "off", self._console, lasting=False)

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    def say(self, line: str) -> None:
        """A line that stays (a summary), in the bars and lines modes; above a live bar."""
        if not self.lasting:
            return
        if self.mode == "bars":
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        elif self.mode == "lines":
            print(line, file=sys.stderr, flush=True)

    @contextmanager
    def epoch(self, epoch: int, epochs: int, steps: int, images: int) -> Iterator[Tracker]:
        """A bar over one epoch's ``images`` (advance by a batch's images, with ``step=``,
        ``loss=``): the step, img/s, the loss as of its last check and the ETA."""
        columns = self._columns(
            "epoch {task.fields[epoch]}/{task.fields[epochs]}",
            "bar",
            "step {task.fields[step]}/{task.fields[steps]}",
            "rate:img/s",
            "loss {task.fields[loss]:.4f}",
            "ETA",
            "eta",
        )
        fields = {"epoch": epoch, "epochs": epochs, "step": 0, "steps": steps, "loss": float("nan")}
        with self._bar(columns, images, fields) as tracker:
            yield tracker

    @contextmanager
    def count(self, what: str, total: int, unit: str = "images") -> Iterator[Tracker]:
        """A bar over ``total`` units of ``what`` (e.g. decoding a split): done/total, rate, ETA."""
        columns = self._columns(
            "{task.description}", "bar", f"of:{unit}", f"rate:{unit}/s", "ETA", "eta"
        )
        with self._bar(columns, total, {}, what) as tracker:
            yield tracker

    @contextmanager
    def phases(self, what: str, total: int) -> Iterator[Tracker]:
        """A spinner and a bar over ``total`` phases (e.g. a server's start-up), with the time
        so far; advance once per phase done."""
        columns = self._columns("spinner", "{task.description}", "bar", "of:phases", "elapsed")
        with self._bar(columns, total, {}, what) as tracker:
            yield tracker

    def _columns(self, *specs: str) -> list[Any]:
        if self.mode != "bars":
            return []
        return [_column(s) for s in specs]

    @contextmanager
    def _bar(
        self, columns: list[Any], total: float, fields: dict[str, Any], what: str = ""
    ) -> Iterator[Tracker]:
        if self.mode != "bars":
            yield Tracker()
            return
        from rich.progress import Progress

        # Transient: the bar goes when the work ends (or fails), leaving the summary lines and
        # any error message clean; lines printed meanwhile (click.echo, warnings) go above it.
        with Progress(*columns, console=self.console, transient=True) as bar:
            yield Tracker(bar, bar.add_task(what, total=total, **fields))


def _column(spec: str) -> Any:
    """A rich column from a short spec: 'bar', 'eta', 'elapsed', 'spinner', 'of:UNIT' (done/total
    UNIT), 'rate:UNIT' (units a second), else a text template over ``task``."""
    from rich import progress as rp

    kind, _, unit = spec.partition(":")
    if spec == "bar":
        return rp.BarColumn()
    if spec == "eta":
        return rp.TimeRemainingColumn()
    if spec == "elapsed":
        return rp.TimeElapsedColumn()
    if spec == "spinner":
        return rp.SpinnerColumn()
    if kind == "of":
        return rp.TextColumn(f"{{task.completed:,.0f}}/{{task.total:,.0f}} {unit}")
    if kind == "rate":
        return _rate_column(unit)
    return rp.TextColumn(spec, markup=False)  # names (a split, a task) are shown as written


def _rate_column(unit: str) -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        """rich's own speed estimate (its recent window) in ``unit``; '?' before it has one."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            shown = "?" if speed is None else f"{speed:,.0f}"
            return Text(f"{shown} {unit}", style="progress.data.speed")

    return Rate()


_current = Display("off")


def current() -> Display:
    """The display work reports to (``off`` unless a caller chose one with ``showing``)."""
    return _current


@contextmanager
def showing(display: Display) -> Iterator[Display]:
    """Make ``display`` the current one for the block (the previous one is restored after)."""
    global _current
    before, _current = _current, display
    try:
        yield display
    finally:
        _current = before
