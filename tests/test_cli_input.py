"""Bad input to the CLI's parsers: one ``error:`` line and a non-zero exit, never a traceback.

The CLI cases run `mgr` in process (click's CliRunner, conftest's `cli`) against an empty home;
one budget round-trips through the real CLI in a subprocess. Most name a task that does not
exist: the error must still be about the bad value (so the value was refused by click, before
the catalog was read or anything ran), not "unknown task".
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import pytest
from conftest import CLI, TINY_SPEC, InProcessCLI, assert_clean_error

from manager.errors import MgrError

HUGE = "9" * 400
INT64_MAX = 2**63 - 1


def _refused(proc, *needles: str) -> str:
    assert_clean_error(proc)
    assert "unknown task" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    return proc.stderr


def _all_refused(cli: InProcessCLI, cases: list[tuple[tuple[str, ...], str]]) -> None:
    """Run every case (they only read an empty home) and check each refusal."""
    for args, needle in cases:
        _refused(cli(*args, ok=False), needle)


# --- 1. sizes and versions above int64 --------------------------------------------------------


def test_sizes_and_versions_above_int64_refused(cli: InProcessCLI) -> None:
    _all_refused(
        cli,
        [
            (("budget", "set", "9223372036854775808"), "too large"),
            (("budget", "set", "9223372036854775808", "--task", "nosuch"), "too large"),
            (("task", "add", "x", "--budget", HUGE, "--dataset", "synthetic"), "too large"),
            (("task", "add", "x", "--budget", "1e22", "--dataset", "synthetic"), "bad size"),
            (("train", "nosuch", "--budget", "9223372036854775808"), "too large"),
            (("switch", "nosuch@99999999999999999999999"), "bad version"),
            # str.isdigit() takes these; int() does not (or reads another script's digits)
            (("switch", "nosuch@²"), "bad version"),
            (("switch", "nosuch@٣"), "bad version"),
        ],
    )


def test_int64_max_is_a_valid_budget(mgr: CLI) -> None:
    mgr("budget", "set", str(INT64_MAX))
    assert mgr.json("budget", "show")["global"]["max_bytes"] == INT64_MAX


# --- 2. version references: ASCII digits only -----------------------------------------------


def test_parse_version_ref() -> None:
    from manager.names import parse_version_ref

    assert parse_version_ref("pets") == ("pets", None)
    assert parse_version_ref("pets@v3") == ("pets", 3)
    assert parse_version_ref(f"pets@{INT64_MAX}") == ("pets", INT64_MAX)
    for bad in ["pets@²", "pets@" + HUGE, f"pets@{INT64_MAX + 1}", "pets@-1", "pets@ 1", "@1"]:
        with pytest.raises(MgrError):
            parse_version_ref(bad)


# --- 3. data-set and backbone spec options, checked when the task is added -------------------


@pytest.mark.slow
def test_dataset_spec_options_checked_when_task_added(cli: InProcessCLI) -> None:
    bad = {
        "synthetic:num_classes=abc": "num_classes must be an integer",
        "synthetic:seed=abc": "seed must be an integer",
        "synthetic:per_class=100000000000": "per_class must be 1..10000",
    }
    # The default backbone: `task add` then never imports timm, which keeps this test fast.
    args = ("task", "add", "t", "--weights", "random", "--dataset")
    _all_refused(cli, [((*args, spec), needle) for spec, needle in bad.items()])
    assert cli.json("task", "list") == []  # nothing recorded by a refused add
    added = cli.json(*args, "synthetic:seed=3,num_classes=4")
    assert added["num_classes"] == 4 and added["dataset"] == "synthetic:seed=3,num_classes=4"


def test_backbone_spec_values_checked(cli: InProcessCLI) -> None:
    cases = [
        (TINY_SPEC.replace("img_size=32", "img_size=abc"), "img_size must be an integer"),
        (TINY_SPEC.replace("depth=2", "depth=-1"), "depth must be 1..256"),
        (TINY_SPEC.replace("depth=2", "depth=2.5"), "depth must be an integer"),
    ]
    # --backbone first: click checks options in command-line order, so no data set is loaded.
    args = ("task", "add", "t", "--weights", "random", "--backbone")
    _all_refused(cli, [((*args, spec, "--dataset", "synthetic"), needle) for spec, needle in cases])
    assert cli.json("task", "list") == []


def test_spec_validators_in_process() -> None:
    from manager.datasets.registry import validate_dataset_spec
    from manager.specs import parse_value, validate_backbone_spec

    assert validate_dataset_spec("synthetic:seed=7") == ("synthetic", {"seed": 7})
    assert validate_dataset_spec("vtab1k:task=dtd") == ("vtab1k", {"task": "dtd"})
    assert validate_dataset_spec("pets:") == ("pets", {})
    for bad in ["synthetic:seed=-1", "synthetic:img_size=1e400", "flowers102:x=1", "nosuch"]:
        with pytest.raises(MgrError):
            validate_dataset_spec(bad)
    assert validate_backbone_spec(TINY_SPEC) == (
        "deit_tiny_patch16_224",
        {"img_size": 32, "depth": 2},
    )
    for bad in ["vit:drop_rate=nan", "vit:embed_dim=0", "vit:qkv_bias=1", "v t", ":depth=2"]:
        with pytest.raises(MgrError):
            validate_backbone_spec(bad)
    # Only ASCII numbers are numbers; "nan" and "1_0" stay text (and fail a typed check).
    assert parse_value("٣") == "٣" and parse_value("1_0") == "1_0" and parse_value("nan") == "nan"
    assert parse_value(" 32 ") == 32 and parse_value("1e-3") == 1e-3


# --- 4-6. numeric options of `mgr train` -------------------------------------------------------


def test_train_numbers_refused_before_anything_runs(cli: InProcessCLI) -> None:
    cases = [
        (("--seed", "99999999999999999999999"), "'--seed'"),
        (("--lr", "inf"), "'--lr': 'inf' is not a finite number"),
        (("--lr", "nan"), "'--lr': 'nan' is not a finite number"),
        (("--weight-decay", "nan"), "'--weight-decay': 'nan' is not a finite number"),
        (("--drop-path", "nan"), "'--drop-path': 'nan' is not a finite number"),
        (("--lora-rank", "100000"), "'--lora-rank': '100000' is not in the range 1..4096"),
        (("--groups", "96,²"), "bad branch '²'"),
        (("--epochs", "١٠"), "'--epochs'"),  # int() reads Arabic-Indic digits; we do not
        (("--device", "cuda:x"), "'cuda:x' is not a device"),
    ]
    _all_refused(cli, [(("train", "nosuch", *args), needle) for args, needle in cases])


def test_predict_and_history_options(cli: InProcessCLI, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    _all_refused(
        cli,
        [
            (("predict", str(image), "--task", "nosuch@²"), "bad version"),
            (("predict", str(image), "--device", "gpu"), "'gpu' is not a device"),
            (("history", "--limit", "99999999999999999999"), "'--limit'"),
        ],
    )


# --- 7. one source of defaults, one --device option -------------------------------------------


def test_train_defaults_come_from_train_config() -> None:
    from manager.cli.train import command
    from manager.train.config import TrainConfig

    params = {p.name: p for p in command.params}
    checked = 0
    for field in dataclasses.fields(TrainConfig):
        param = params.get(field.name)
        if param is not None and not param.is_flag and field.default is not dataclasses.MISSING:
            assert param.default == field.default, field.name
            checked += 1
    assert checked >= 9


def test_one_device_option_for_every_command() -> None:
    from manager.cli import main
    from manager.cli.types import DEVICE

    with_device = {
        name: next(p for p in cmd.params if p.name == "device")
        for name, cmd in main.commands.items()
        if any(p.name == "device" for p in getattr(cmd, "params", []))
    }
    assert {"train", "predict"} <= set(with_device)
    assert all(p.type is DEVICE for p in with_device.values())
    assert len({json.dumps(p.to_info_dict(), sort_keys=True) for p in with_device.values()}) == 1
    assert DEVICE.convert("CUDA:1", None, None) == "cuda:1"
    for bad in ["cuda:128", "gpu", "cuda:", "cpu:0"]:
        with pytest.raises(click.BadParameter):
            DEVICE.convert(bad, None, None)


def test_param_types_in_process() -> None:
    from manager.cli.types import SEED, FiniteFloat, Groups, Int64, Size

    assert SEED.convert(str(INT64_MAX), None, None) == INT64_MAX
    assert Int64(1, 4096).convert(" 0008 ", None, None) == 8
    assert FiniteFloat(0, 1, max_open=True).convert("0.5", None, None) == 0.5
    assert Size(allow_none=True).convert("off", None, None) is None
    assert Size().convert("1.5MiB", None, None) == 1_572_864
    assert Groups().convert("96, 96s", None, None) == "96, 96s"
    cases = [
        (SEED, "-1"),
        (SEED, "99999999999999999999999"),
        (FiniteFloat(0, min_open=True), "1e400"),
        (Groups(), "abc"),
        (Groups(), "96,0"),
        (Int64(), "٣"),
        (Int64(), "1_000"),
        (FiniteFloat(), "nan"),
        (FiniteFloat(), "-inf"),
        (FiniteFloat(0, 1, max_open=True), "1"),
        (FiniteFloat(0, min_open=True), "0"),
        (Size(), "none"),
        (Size(), "inf"),
        (Groups(), "96,,96"),
    ]
    for param_type, text in cases:
        with pytest.raises(click.BadParameter):
            param_type.convert(text, None, None)
