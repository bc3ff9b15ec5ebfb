"""Progress you can see: rich bars on a terminal, one plain line per epoch in logs, nothing when
asked (``manager.progress``, shown by ``train.loop``, ``train.data`` and ``mgr train``)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import Result
from conftest import TINY_SPEC, tiny_vit
from torch.utils.data import Dataset

from manager.adapters.config import LinearProbeConfig
from manager.progress import Display, current, showing
from manager.train.config import TrainConfig
from manager.train.data import ImageTensors
from manager.train.loop import fit

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  loss \S+  lr \S+  \d+ img/s$")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _terminal() -> tuple[Display, io.StringIO]:
    """A bars display on a forced terminal that writes into a string (rich's own rendering)."""
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    return Display("bars", console=console), out


def _split(n: int = 20, classes: int = 4) -> ImageTensors:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return ImageTensors(images, torch.arange(n) % classes)


def _fit(epochs: int = 2, batch: int = 8) -> None:
    """A real fit (tiny DeiT, 20 images: 3 steps an epoch) reporting to the current display."""
    model = tiny_vit(num_classes=4)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head")
    cfg = TrainConfig(adapter=LinearProbeConfig(), epochs=epochs, batch_size=batch)
    fit(model, _split(), cfg, lr=1e-3, mean=torch.zeros(3), std=torch.ones(3))


class Pixels(Dataset):
    """``n`` uint8 CHW images, what ``decode_transform`` yields."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((3, 8, 8), i % 256, dtype=torch.uint8), i % 3


def test_nothing_is_shown_unless_a_caller_asks(capfd: pytest.CaptureFixture[str]) -> None:
    assert current().mode == "off"  # a library caller gets no output it did not ask for
    _fit(epochs=1)
    ImageTensors.decode(Pixels(10))
    assert capfd.readouterr() == ("", "")


def test_a_terminal_shows_the_epoch_bar_fields_and_leaves_one_line_per_epoch() -> None:
    display, out = _terminal()
    with showing(display):
        _fit(epochs=2)
    assert current().mode == "off"  # restored after the block
    text = ANSI.sub("", out.getvalue())
    for epoch in (1, 2):
        assert f"epoch {epoch}/2" in text
        assert "step 3/3" in text  # 20 images in batches of 8
    assert re.search(r"step \d/3 +[\d,?]+ img/s +loss \S+ +ETA +\d+:\d\d:\d\d", text), text
    kept = [ln.strip() for ln in text.replace("\r", "\n").splitlines()]
    assert [int(m.group(1)) for ln in kept if (m := EPOCH_LINE.match(ln))] == [1, 2]


def test_a_transient_display_keeps_the_bars_and_drops_the_epoch_lines(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """What a tuning trial runs under: its epochs show as bars on a terminal and leave nothing."""
    display, out = _terminal()
    with showing(display.transient()):
        _fit(epochs=2)
    text = ANSI.sub("", out.getvalue())
    assert "epoch 2/2" in text and "step 3/3" in text  # the bar was drawn
    kept = [ln.strip() for ln in text.replace("\r", "\n").splitlines()]
    assert not [ln for ln in kept if EPOCH_LINE.match(ln)], text
    with showing(Display("lines").transient()):
        _fit(epochs=1)
    assert capfd.readouterr() == ("", "")  # in a log: nothing at all


def test_a_terminal_shows_the_decode_bar() -> None:
    display, out = _terminal()
    with showing(display):
        split = ImageTensors.decode(Pixels(130), name="train")
    assert len(split) == 130
    text = ANSI.sub("", out.getvalue())
    assert "decoding train" in text
    assert re.search(r"130/130 images +[\d,?]+ images/s +ETA +\d+:\d\d:\d\d", text), text


def test_a_terminal_shows_phases_and_their_lines_above_the_bar() -> None:
    display, out = _terminal()
    logged: list[str] = []
    with showing(display), display.phases("starting", 3) as bar:
        say = bar.above(logged.append)
        for name in ("backbone", "deltas"):
            say(f"{name}: loaded")
            bar.advance()
    assert logged == []  # printed by the bar's console instead, above the bar
    text = ANSI.sub("", out.getvalue())
    assert re.search(r"starting .*2/3 phases", text), text
    # Each line on a line of its own: not appended to a half-drawn bar.
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines()]
    assert "backbone: loaded" in lines and "deltas: loaded" in lines, text
    with Display("off").phases("starting", 3) as bar:
        assert bar.above(logged.append) == logged.append  # no bar: the caller's own log


def test_lines_mode_prints_one_line_per_epoch_and_nothing_per_step(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with showing(Display("lines")):
        _fit(epochs=3)
    out, err = capfd.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert [int(EPOCH_LINE.match(ln).group(1)) for ln in lines] == [1, 2, 3], err  # type: ignore[union-attr]
    assert "\r" not in err and "\x1b" not in err


def test_off_and_torchrun_ranks_show_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Display.for_stderr(quiet=True).mode == "off"
    monkeypatch.setenv("RANK", "1")  # a torchrun process other than rank 0
    assert Display.for_stderr().mode == "off"
    with pytest.raises(ValueError, match="progress mode"):
        Display("loud")  # type: ignore[arg-type]


def _task(mgr) -> tuple[str, ...]:
    mgr("task", "add", "t", "--dataset", "synthetic:per_class=4", "--backbone", TINY_SPEC,
        "--weights", "random")  # fmt: skip
    return ("train", "t", "--batch-size", "8", "--promote", "always")


@pytest.mark.slow
def test_mgr_train_in_a_log_prints_one_line_per_epoch(mgr) -> None:
    """The real CLI with stderr piped (not a terminal, as in CI): exactly one plain line per
    epoch, nothing per step or per decoded split."""
    proc = mgr(*_task(mgr), "--epochs", "2")
    lines = proc.stderr.splitlines()
    assert [int(m.group(1)) for ln in lines if (m := EPOCH_LINE.match(ln))] == [1, 2], proc.stderr
    assert len(lines) == 2 and "\r" not in proc.stderr and "\x1b" not in proc.stderr


def test_mgr_train_options_choose_the_display(home: Path) -> None:
    """In-process (click's runner; its stderr is no terminal): a line per epoch by default,
    nothing on stderr with --quiet or --json."""
    from click.testing import CliRunner

    from manager.cli import main

    def mgr(*args: str) -> Result:
        result = CliRunner().invoke(main, ["--home", str(home), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    mgr("task", "add", "t", "--dataset", "synthetic:per_class=4", "--backbone", TINY_SPEC,
        "--weights", "random")  # fmt: skip
    train = ("train", "t", "--batch-size", "8", "--promote", "always", "--epochs")
    lines = mgr(*train, "2").stderr.splitlines()
    assert [int(m.group(1)) for ln in lines if (m := EPOCH_LINE.match(ln))] == [1, 2], lines
    assert len(lines) == 2  # and nothing else: no step, no decode
    quiet = mgr(*train, "1", "--quiet")
    assert quiet.stderr == "" and "t v2" in quiet.stdout
    as_json = mgr(*train, "1", "--json")
    assert as_json.stderr == "" and json.loads(as_json.stdout)["version"] == 3
    # --tune in a log: a line per trial, then the epoch lines of the one run that is recorded.
    lines = mgr(*train, "2", "--tune", "--tune-configs", "2").stderr.splitlines()
    trials = [ln for ln in lines if ln.startswith("tune: trial ")]
    assert len(trials) == 2, lines  # 2 configs x 2 epochs: one rung
    assert [int(m.group(1)) for ln in lines if (m := EPOCH_LINE.match(ln))] == [1, 2], lines
    assert current().mode == "off"  # the command's display ended with it
