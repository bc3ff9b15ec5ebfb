"""The GPU-grade loop on the CPU: autocast precisions, torch.compile, data kept on the device as
uint8 and normalised there, and the settings recorded with the version."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_SPEC, assert_clean_error, tiny_vit
from safetensors import safe_open

from manager.errors import MgrError

SMALL = "synthetic:per_class=8"


def add_task(mgr, name: str, dataset: str = SMALL) -> None:
    mgr("task", "add", name, "--dataset", dataset, "--backbone", TINY_SPEC, "--weights", "random")


def _tiny_data(n: int = 16, classes: int = 3):
    from manager.train.data import ImageTensors
    from manager.train.train_adapter import TrainData

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % classes
    return TrainData(ImageTensors(images, labels), ImageTensors(images[:6], labels[:6]))


def _train_in_process(**over):
    from manager.delta.delta import DeltaMeta
    from manager.train.config import TrainConfig
    from manager.train.methods import get_method
    from manager.train.train_adapter import prepare_model, train_adapter

    model = tiny_vit(num_classes=3)
    cfg = TrainConfig.from_json(dict(**{"epochs": 2, "batch_size": 8, "lr": 1e-3, **over}))
    method = get_method(cfg.method)
    prepare_model(model, method, cfg)
    meta = DeltaMeta(cfg.method, TINY_SPEC, "0" * 64, torch.float32, 3)
    return train_adapter(model, method, cfg, _tiny_data(), "cpu", meta=meta)


@pytest.mark.slow
def test_bf16_run_records_a_float32_artifact_and_its_settings(mgr):
    add_task(mgr, "mixed")
    out = mgr.json(
        "train",
        "mixed",
        "--precision",
        "bf16",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--seed",
        "1",
    )
    assert math.isfinite(out["metrics"]["top1"]) and math.isfinite(out["metrics"]["final_loss"])
    assert out["metrics"]["train_images_per_s"] > 0
    with safe_open(out["path"], "pt") as f:
        names = f.keys()
        dtypes = {f.get_tensor(k).dtype for k in names}
    assert dtypes == {torch.float32}  # autocast computes in bf16; the artifact keeps its dtype
    (version,) = mgr.json("versions", "mixed")
    hp = version["hyperparams"]
    assert (hp["precision"], hp["compile"], hp["batch_size"], hp["world_size"]) == (
        "bf16",
        False,
        16,
        1,
    )
    # The default on the CPU is fp32, recorded by name.
    mgr("train", "mixed", "--epochs", "1", "--batch-size", "16", "--method", "linear")
    assert mgr.json("versions", "mixed")[-1]["hyperparams"]["precision"] == "fp32"


def test_fp16_with_a_grad_scaler_trains_on_the_cpu():
    delta, metrics = _train_in_process(precision="fp16")
    assert delta.nonfinite() == [] and math.isfinite(metrics["final_loss"])
    assert {t.dtype for t in delta.whole.values()} == {torch.float32}


def test_precisions_differ_but_stay_close():
    """bf16 autocast really changes the arithmetic (so it is on), yet trains to nearby weights."""
    d32, _ = _train_in_process(method="linear", precision="fp32")
    d16, _ = _train_in_process(method="linear", precision="bf16")
    for name, w in d32.whole.items():
        assert not torch.equal(w, d16.whole[name]), name
        torch.testing.assert_close(w, d16.whole[name], atol=5e-3, rtol=0.05)


@pytest.mark.slow
def test_compile_trains_a_tiny_model():
    delta, metrics = _train_in_process(method="linear", compile=True, epochs=1)
    eager, _ = _train_in_process(method="linear", compile=False, epochs=1)
    assert delta.nonfinite() == [] and math.isfinite(metrics["final_loss"])
    for name, w in delta.whole.items():
        torch.testing.assert_close(w, eager.whole[name], atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_a_compile_that_cannot_build_is_one_line(mgr, tmp_path):
    """A machine without a working C++ compiler: --compile fails with one line, nothing kept."""
    add_task(mgr, "nocc")
    env = {"CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    proc = mgr("train", "nocc", "--compile", "--method", "linear", "--epochs", "1", ok=False, **env)
    assert_clean_error(proc)
    assert "torch.compile failed" in proc.stderr and "; run without --compile" in proc.stderr
    assert mgr.json("versions", "nocc") == []


def test_bad_precision_is_one_line(cli):
    mgr = cli  # in process: refused before anything is built
    add_task(mgr, "bad")
    proc = mgr("train", "bad", "--precision", "fp8", "--epochs", "1", ok=False)
    assert_clean_error(proc)
    assert "fp8" in proc.stderr
    assert mgr.json("versions", "bad") == []
    from manager.device import resolve_precision

    with pytest.raises(MgrError, match="unknown precision 'int4'"):
        resolve_precision("int4", torch.device("cpu"))


# -- the data path ---------------------------------------------------------------------------


def _old_cpu_batches(images, labels, batch_size, mean, std, generator):
    """The loop's former data path, verbatim: float conversion on the host, per batch."""
    order = torch.randperm(len(labels), generator=generator)
    mean = mean.view(1, -1, 1, 1)
    scale = (255.0 * std).view(1, -1, 1, 1)
    for start in range(0, len(labels), batch_size):
        sel = order[start : start + batch_size]
        yield images[sel].float().sub_(255.0 * mean).div_(scale), labels[sel]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_data_lives_on_the_device_as_uint8_and_normalises_exactly(device):
    from manager.train.data import ImageTensors, Normalise

    data = _tiny_data(n=21).train
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    on_dev = data.to(device)
    assert on_dev.images.dtype == torch.uint8 and on_dev.images.device.type == device
    assert on_dev.labels.device.type == device
    assert isinstance(on_dev, ImageTensors) and len(on_dev) == 21
    norm = Normalise(mean, std, device)
    new = list(on_dev.epoch(8, norm, generator=torch.Generator().manual_seed(5)))
    old = list(
        _old_cpu_batches(data.images, data.labels, 8, mean, std, torch.Generator().manual_seed(5))
    )
    assert [b.n for b in new] == [8, 8, 5]
    for b, (x, y) in zip(new, old, strict=True):
        assert b.x.device.type == device and b.x.dtype == torch.float32
        assert torch.equal(b.x.cpu(), x), "normalisation on the device differs from the host's"
        assert torch.equal(b.y.cpu(), y)


def test_checkpoints_carry_the_grad_scaler_and_resume(tmp_path: Path):
    """An fp16 run checkpoints its loss scale; resuming from epoch 1 gives the straight run."""
    from manager.delta.delta import DeltaMeta
    from manager.train.config import TrainConfig
    from manager.train.methods import get_method
    from manager.train.train_adapter import prepare_model, train_adapter

    class Memory:
        def __init__(self):
            self.states = []

        def save(self, state):  # a copy, as a file would hold: the optimizer state lives on
            self.states.append(copy.deepcopy(state))

        def load(self):
            return self.states[0]

    def run(cfg, ck, resume=False):
        model = tiny_vit(num_classes=3)
        method = get_method(cfg.method)
        prepare_model(model, method, cfg)
        meta = DeltaMeta(cfg.method, TINY_SPEC, "0" * 64, torch.float32, 3)
        return train_adapter(
            model, method, cfg, _tiny_data(), "cpu", meta=meta, checkpoint=ck, resume=resume
        )

    cfg = TrainConfig.from_json(
        dict(method="bitfit", epochs=2, batch_size=8, lr=1e-3, precision="fp16")
    )
    straight = Memory()
    full, _ = run(cfg, straight)
    assert "scaler" in straight.states[0]["step"]
    resumed, _ = run(cfg, straight, resume=True)  # from epoch 1's checkpoint
    for name, w in full.whole.items():
        assert torch.equal(w, resumed.whole[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_cuda_step_never_waits_for_the_host(precision):
    """Batches from the device-resident split and TrainStep's steps (fused AdamW, autocast,
    GradScaler) queue work without one synchronising call, checked by CUDA's sync debug mode."""
    from manager.device import resolve_precision
    from manager.train.data import Normalise
    from manager.train.groups import param_groups
    from manager.train.step import TrainStep, make_optimizer

    device = torch.device("cuda")
    model = tiny_vit(num_classes=3).to(device).train()
    opt = make_optimizer(param_groups(model, 1e-4), 1e-3)
    assert opt.defaults["fused"]
    dtype = resolve_precision(precision, device)
    step = TrainStep(model, opt, dtype=dtype, device=device)
    data = _tiny_data(n=64).train.to(device)
    norm = Normalise(torch.zeros(3), torch.ones(3), device)
    batches = data.epoch(8, norm, generator=torch.Generator().manual_seed(0))  # order moved once
    total = torch.zeros((), dtype=torch.float64, device=device)
    for _ in range(2):  # optimizer state and the loss scale are created on the first steps
        total += step(next(batches))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            total += step(next(batches)).to(torch.float64)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert math.isfinite(total.item())
