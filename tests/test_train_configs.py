"""``mgr train``'s defaults are the config dataclasses' fields, and each config checks itself.

In process (click's own parameter objects and ``--help`` through CliRunner): nothing here trains.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from click.testing import CliRunner

from manager.adapters.config import (
    BitFitConfig,
    ConsolidatorConfig,
    FullConfig,
    LinearProbeConfig,
    LoraConfig,
    method_config,
)
from manager.errors import BadInput
from manager.train.config import RunOptions, TrainConfig

# click parameter -> the dataclass field it must default to (never a literal in the CLI).
TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
RUN_FIELDS = {f.name: f for f in dataclasses.fields(RunOptions)}
CONSOLIDATOR = {f.name: f for f in dataclasses.fields(ConsolidatorConfig)}
LORA = {f.name: f for f in dataclasses.fields(LoraConfig)}
RENAMED = {"compile_": "compile", "storage_dtype": "storage_dtype", "budget": "budget_bytes",
           "promote_mode": "promote"}  # fmt: skip
NO_FIELD = {"task", "tune", "no_promote", "quiet", "as_json"}  # flags that only switch behaviour on


def _field_default(name: str) -> object:
    name = RENAMED.get(name, name)
    if name in ("drop_path", "shuffle"):
        return CONSOLIDATOR[name].default
    if name == "lora_rank":
        return LORA["rank"].default
    if name == "lora_alpha":
        return LORA["alpha"].default
    if name == "method":
        return TrainConfig().adapter.method
    if name == "groups":  # the default adapter's structure: the model's own ("")
        return "" if TrainConfig().adapter.branches is None else None
    field = TRAIN_FIELDS.get(name) or RUN_FIELDS[name]
    return field.default


def _train_command():
    from manager.cli.train import command

    return command


def test_every_train_option_defaults_to_a_config_field() -> None:
    params = [p for p in _train_command().params if p.name not in NO_FIELD]
    assert len(params) >= 30
    for p in params:
        assert p.default == _field_default(p.name), p.name


def test_help_shows_the_config_defaults() -> None:
    from manager.cli import main

    out = CliRunner().invoke(main, ["train", "--help"]).output
    options = out.split("Options:", 1)[1]
    entries = {
        e.split()[0]: re.sub(r"\s+", " ", e) for e in re.split(r"\n  (?=-)", options) if e.strip()
    }
    for flag, value in [
        ("--epochs", TrainConfig.epochs),
        ("--batch-size", TrainConfig.batch_size),
        ("--weight-decay", TrainConfig.weight_decay),
        ("--tune-budget", RunOptions.tune_budget),
        ("--tune-configs", RunOptions.tune_configs),
        ("--max-class-drop", RunOptions.max_class_drop),
        ("--lora-rank", LoraConfig.rank),
        ("--eval-split", RunOptions.eval_split),
        ("--promote", RunOptions.promote),
        ("--device", RunOptions.device),
    ]:
        shown = re.search(r"\[default: ([^\]]+)\]", entries[flag])
        assert shown is not None, flag
        assert shown.group(1) == str(value), flag


def test_flat_record_round_trips_and_keeps_its_old_keys() -> None:
    cfg = TrainConfig.from_json({"method": "consolidator", "groups": "96,48s", "drop_path": 0.2})
    d = cfg.to_json()
    # The catalog's record keeps the flat keys, in the order they have always had.
    assert list(d)[:6] == ["method", "groups", "shuffle", "drop_path", "lora_rank", "epochs"]
    assert d["groups"] == "96,48s" and d["drop_path"] == 0.2
    assert TrainConfig.from_json(d) == cfg
    lora = TrainConfig.from_json({"method": "lora", "lora_rank": 4})
    assert lora.adapter == LoraConfig(4) and "lora_alpha" not in lora.to_json()
    scaled = TrainConfig(adapter=LoraConfig(4, alpha=16))
    assert scaled.to_json()["lora_alpha"] == 16.0
    assert TrainConfig.from_json(scaled.to_json()).adapter.scale == 4.0
    # A setting of another method's (drop_path for LoRA) is ignored, as mgr train always did.
    assert cfg.replace(method="lora").drop_path == 0.0
    assert cfg.replace(drop_path=0.5).adapter.drop_path == 0.5


def test_shuffle_applies_to_every_branch_and_reads_back_as_given() -> None:
    c = ConsolidatorConfig("384,192", shuffle=True)
    assert all(b.shuffle for b in c.branches)
    d = TrainConfig(adapter=c).to_json()
    assert (d["groups"], d["shuffle"]) == ("384,192", True)


@pytest.mark.parametrize(
    "method, kind",
    [
        ("consolidator", ConsolidatorConfig),
        ("lora", LoraConfig),
        ("bitfit", BitFitConfig),
        ("bitfit_ln", BitFitConfig),
        ("linear", LinearProbeConfig),
        ("full", FullConfig),
    ],
)
def test_method_config_names_every_method(method: str, kind: type) -> None:
    config = method_config(method)
    assert isinstance(config, kind) and config.method == method
    assert TrainConfig(adapter=config).method == method


@pytest.mark.parametrize(
    "build, words",
    [
        (lambda: TrainConfig(epochs=0), "epochs"),
        (lambda: TrainConfig(lr=float("nan")), "lr must be a finite number"),
        (lambda: TrainConfig(lr_norm=-1.0), "lr_norm"),
        (lambda: TrainConfig(weight_decay=float("inf")), "weight_decay"),
        (lambda: TrainConfig(batch_size=0), "batch_size"),
        (lambda: TrainConfig(seed=-1), "seed"),
        (lambda: TrainConfig(storage_dtype="int8"), "storage_dtype"),
        (lambda: TrainConfig(precision="fp8"), "precision"),
        (lambda: TrainConfig(adapter="lora"), "adapter must be a method config"),
        (lambda: TrainConfig.from_json({"method": "dora"}), "unknown method"),
        (lambda: TrainConfig.from_json({"epoch": 3}), "unknown training setting"),
        (lambda: ConsolidatorConfig(None, drop_path=1.0), "drop_path"),
        (lambda: ConsolidatorConfig("0"), "bad branch"),
        (lambda: ConsolidatorConfig(None, shuffle="yes"), "shuffle"),
        (lambda: LoraConfig(0), "rank"),
        (lambda: LoraConfig(8, alpha=0.0), "alpha"),
        (lambda: RunOptions(promote="maybe"), "promote"),
        (lambda: RunOptions(gate_margin=float("nan")), "gate_margin"),
        (lambda: RunOptions(tune_configs=1), "tune_configs"),
    ],
)
def test_configs_refuse_what_can_never_work(build, words: str) -> None:
    with pytest.raises(BadInput, match=re.escape(words)):
        build()


def test_lora_alpha_is_a_field_not_the_rank() -> None:
    import torch
    from conftest import tiny_vit

    from manager.adapters.lora import LoRALinear
    from manager.api import adapt, consolidate

    model = adapt(tiny_vit(num_classes=3), LoraConfig(4, alpha=16))
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert layers and all(m.scale == 4.0 and m.r == 4 for m in layers)
    with torch.no_grad():
        for m in layers:
            m.lora_B.fill_(0.5)
    delta = consolidate(model)
    name = next(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    stored = delta.layers[f"{name}.weight"]
    # The stored B has alpha / rank folded in: 0.5 x 4.
    assert torch.equal(stored.B, torch.full_like(stored.B, 2.0))


@pytest.mark.parametrize("config, trains", [(LinearProbeConfig(), "head."), (FullConfig(), "")])
def test_linear_probe_and_full_go_through_adapt(config, trains: str) -> None:
    from conftest import tiny_vit

    from manager.api import adapt

    model = adapt(tiny_vit(num_classes=3), config)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith(trains) for n in names)
    if not trains:  # full: every tensor
        assert len(names) == len(list(model.parameters()))
