"""``mgr export``: a version leaves mgr as plain timm files that predict what ``mgr predict`` does.

The exports are loaded here with timm and safetensors only (no manager code): the kwargs that
rebuild the model come from config.json, the preprocessing from timm's own transform.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import CLI, assert_clean_error
from PIL import Image
from safetensors.torch import load_file
from switch_helpers import fork_mgr, one_thread  # noqa: F401

pytestmark = pytest.mark.trained_home  # `home`: a copy of the trained switch template
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A noise image of another size and aspect than the model's input: the resize matters."""
    path = tmp_path / "noise.png"
    pixels = np.random.default_rng(7).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def plain_timm(out: Path) -> torch.nn.Module:
    """The model rebuilt the way any timm user would: config.json's kwargs and preprocessing
    (``pretrained_cfg``), then a strict load of the weights."""
    cfg = json.loads((out / "config.json").read_text())
    model = timm.create_model(
        cfg["architecture"],
        pretrained=False,
        pretrained_cfg_overlay=cfg["pretrained_cfg"],
        **cfg["model_args"],
    )
    model.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    return model.eval()


def probabilities(model: torch.nn.Module, image: Path) -> torch.Tensor:
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    with torch.no_grad():
        return model(transform(Image.open(image).convert("RGB"))[None]).softmax(-1)[0]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# One version of each kind: CLI-trained consolidator, bitfit_ln, a bf16 delta, a LoRA.
@pytest.mark.parametrize("label", ["shapes@1", "pets3@2", "pets3@3", "digits@2"])
def test_the_export_predicts_what_mgr_predict_does(home, tmp_path, image, label):
    out = tmp_path / "export"
    report = fork_mgr(home, "export", label, "--out", str(out), "--json").json()
    task, number = label.split("@")
    assert (report["task"], report["version"]) == (task, int(number))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert report["files"]["model.safetensors"] == (out / "model.safetensors").stat().st_size
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_args"] == {"img_size": 32, "depth": 2, "num_classes": cfg["num_classes"]}
    assert cfg["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert len(cfg["label_names"]) == cfg["num_classes"]

    model = plain_timm(out)
    probs = probabilities(model, image)
    k = str(cfg["num_classes"])
    pred = fork_mgr(home, "predict", str(image), "--task", label, "--top-k", k, "--json").json()
    assert (pred["task"], pred["version"]) == (task, int(number))
    top = pred["predictions"][0]["top"]
    assert top[0]["index"] == int(probs.argmax())
    for t in top:
        assert t["class"] == cfg["label_names"][t["index"]]
        assert abs(t["probability"] - float(probs[t["index"]])) <= 1e-5, t


def test_timm_loads_the_folder_by_itself(home, tmp_path, image):
    out = tmp_path / "export"
    fork_mgr(home, "export", "pets3", "--out", str(out))
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert model.num_classes == 3
    assert torch.equal(probabilities(model, image), probabilities(plain_timm(out), image))


def test_unknown_task_or_version_is_one_line(home, tmp_path):
    out = tmp_path / "export"
    assert_clean_error(CLI(home)("export", "nosuch", "--out", str(out), ok=False))
    proc = fork_mgr(home, "export", "pets3@9", "--out", str(out), ok=False)
    assert_clean_error(proc)
    assert "no version 9" in proc.stderr
    proc = fork_mgr(home, "export", "pets3@nosuch", "--out", str(out), ok=False)
    assert_clean_error(proc)
    assert "nosuch" in proc.stderr
    assert not out.exists()


def test_an_alias_names_the_version_to_export(home, tmp_path):
    champion = fork_mgr(
        home, "export", "pets3@champion", "--out", str(tmp_path / "a"), "--json"
    ).json()
    active = fork_mgr(home, "export", "pets3", "--out", str(tmp_path / "b"), "--json").json()
    assert champion["version"] == active["version"]
    a, b = (tmp_path / d / "model.safetensors" for d in "ab")
    assert a.read_bytes() == b.read_bytes()


def test_a_non_empty_folder_is_refused_without_force_and_kept_with_it(home, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "config.json").write_text("{}")
    before = snapshot(out)
    proc = fork_mgr(home, "export", "shapes", "--out", str(out), ok=False)
    assert_clean_error(proc)
    assert "--force" in proc.stderr
    assert snapshot(out) == before
    fork_mgr(home, "export", "shapes", "--out", str(out), "--force")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert json.loads((out / "config.json").read_text())["mgr"]["task"] == "shapes"


def test_a_symlinked_out_dir_is_written_where_it_points_and_nothing_is_deleted(home, tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    report = fork_mgr(home, "export", "digits", "--out", str(link), "--json").json()
    assert report["out"] == str(target.resolve())
    assert link.is_symlink() and sorted(os.listdir(target)) == ["config.json", "model.safetensors"]
    # A second export into the now non-empty target: refused, the link and files intact.
    before = snapshot(target)
    assert_clean_error(fork_mgr(home, "export", "pets3", "--out", str(link), ok=False))
    assert link.is_symlink() and snapshot(target) == before
    # A dangling link: the export creates the folder it names.
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "later")
    fork_mgr(home, "export", "digits", "--out", str(dangling))
    assert dangling.is_symlink() and (tmp_path / "later" / "model.safetensors").is_file()


def test_out_may_not_be_a_file_or_inside_the_home(home, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_clean_error(fork_mgr(home, "export", "shapes", "--out", str(afile), ok=False))
    assert afile.read_text() == "x"
    proc = fork_mgr(home, "export", "shapes", "--out", str(home / "artifacts" / "x"), ok=False)
    assert_clean_error(proc)
    assert "inside the manager home" in proc.stderr
    assert not (home / "artifacts" / "x").exists()


@pytest.mark.skipif(not HAS_ONNX, reason="onnx and onnxscript are not installed")
def test_onnx_export_computes_the_same_logits(home, tmp_path, image):
    import onnx
    from onnx.reference import ReferenceEvaluator

    out = tmp_path / "export"
    report = fork_mgr(home, "export", "shapes", "--out", str(out), "--onnx", "--json").json()
    assert set(report["files"]) == {"config.json", "model.safetensors", "model.onnx"}
    proto = onnx.load(out / "model.onnx")
    onnx.checker.check_model(proto)
    model = plain_timm(out)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    x = transform(Image.open(image).convert("RGB"))[None]
    x = torch.cat([x, x.flip(-1)])  # the batch axis is dynamic
    with torch.no_grad():
        want = model(x).numpy()
    got = ReferenceEvaluator(proto).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.skipif(HAS_ONNX, reason="onnx is installed: the refusal cannot happen")
def test_onnx_without_the_package_says_how_to_install_it(home, tmp_path):
    out = tmp_path / "export"
    proc = fork_mgr(home, "export", "shapes", "--out", str(out), "--onnx", ok=False)
    assert_clean_error(proc)
    assert "pip install onnx" in proc.stderr
    assert not out.exists()


def test_export_help_teaches(cli):
    proc = cli("export", "--help")
    assert "local-dir:" in proc.stdout and "--force" in proc.stdout
