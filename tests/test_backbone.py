"""Backbones by spec: weights from files (safetensors, npz, pth), seeded random, content hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import TINY_SPEC

from manager.arch import parse_spec
from manager.backbone import (
    backbone_file_bytes,
    backbone_state,
    build_backbone,
    content_hash,
    load_backbone_file,
    param_count,
)
from manager.errors import MgrError

DEIT = "deit_tiny_patch16_224"


class Payload:
    """Would run code when unpickled, if the loader allowed arbitrary objects."""

    def __reduce__(self):
        return (print, ("PAYLOAD RAN",))


def test_parse_spec():
    name, kw = parse_spec("deit_tiny_patch16_224:img_size=32,depth=2,drop_rate=0.1,qkv_bias=false")
    assert name == DEIT
    assert kw == {"img_size": 32, "depth": 2, "drop_rate": 0.1, "qkv_bias": False}
    assert parse_spec(DEIT) == (DEIT, {})
    with pytest.raises(MgrError, match="unknown timm model 'deit_tiny_patch16_225'"):
        parse_spec("deit_tiny_patch16_225")
    with pytest.raises(MgrError, match="key=value"):
        parse_spec("deit_tiny_patch16_224:img_size")


def test_random_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_backbone(TINY_SPEC, "random", num_classes=3)
    assert torch.equal(torch.rand(1), before)
    b = build_backbone(TINY_SPEC, "random", num_classes=3)
    assert content_hash(backbone_state(a)) == content_hash(backbone_state(b))
    assert torch.equal(a.head.weight, b.head.weight)
    assert not a.training
    other = build_backbone(TINY_SPEC.replace("depth=2", "depth=3"), "random")
    assert content_hash(backbone_state(other)) != content_hash(backbone_state(a))


def test_hash_excludes_head_and_follows_values():
    a = build_backbone(TINY_SPEC, "random", num_classes=3)
    b = build_backbone(TINY_SPEC, "random", num_classes=7)
    assert "head.weight" not in backbone_state(a)
    assert content_hash(a.state_dict()) == content_hash(backbone_state(b))
    state = backbone_state(a)
    state["blocks.0.norm1.bias"] = state["blocks.0.norm1.bias"] + 1e-6
    assert content_hash(state) != content_hash(backbone_state(a))
    assert param_count(a) == sum(v.numel() for v in backbone_state(a).values())


def test_real_deit_same_hash_from_every_format(assets: Path, tmp_path: Path):
    path = assets / "deit_tiny_patch16_224.safetensors"
    file_state = safetensors.torch.load_file(path)
    model = build_backbone(DEIT, path, num_classes=10)
    own = model.state_dict()
    for k, v in file_state.items():  # every backbone key loaded as is; the head is new
        if not k.startswith("head."):
            assert torch.equal(own[k], v), k
    assert own["head.weight"].shape == (10, 192)
    assert param_count(model) == 5_524_416  # 5,717,416 minus the 1000-class head
    digest = content_hash(backbone_state(model))
    assert content_hash(file_state) == digest

    pth = tmp_path / "deit.pth"
    torch.save(file_state, pth)  # a plain state dict, head included
    assert content_hash(backbone_state(build_backbone(DEIT, pth))) == digest
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": file_state, "epoch": 300}, wrapped)
    assert content_hash(backbone_state(build_backbone(DEIT, wrapped))) == digest
    npz = tmp_path / "deit.npz"
    np.savez(npz, **{k: v.numpy() for k, v in file_state.items()})
    assert content_hash(backbone_state(build_backbone(DEIT, npz))) == digest

    saved = tmp_path / "backbones" / f"{digest}.safetensors"
    data, written_digest = backbone_file_bytes(model)
    assert written_digest == digest
    saved.parent.mkdir()
    saved.write_bytes(data)
    assert "head.weight" not in safetensors.torch.load_file(saved)
    again = load_backbone_file(saved, DEIT, num_classes=5, expected_hash=digest)
    assert content_hash(backbone_state(again)) == digest
    with pytest.raises(MgrError, match="does not match"):
        load_backbone_file(saved, DEIT, expected_hash="0" * 64)


def test_real_deit_resamples_pos_embed(assets: Path):
    model = build_backbone(f"{DEIT}:img_size=64", assets / "deit_tiny_patch16_224.safetensors")
    assert model.pos_embed.shape == (1, 1 + 16, 192)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 192)


def test_real_deit_into_wrong_model(assets: Path):
    with pytest.raises(MgrError, match=r"unexpected \(blocks\.") as e:
        build_backbone(TINY_SPEC, assets / "deit_tiny_patch16_224.safetensors")
    assert "does not fit" in str(e.value)
    with pytest.raises(MgrError, match="another shape"):
        build_backbone(f"{DEIT}:mlp_ratio=2", assets / "deit_tiny_patch16_224.safetensors")


def test_bad_files(tmp_path: Path):
    with pytest.raises(MgrError, match="not found"):
        build_backbone(TINY_SPEC, tmp_path / "nope.safetensors")
    odd = tmp_path / "w.h5"
    odd.write_bytes(b"x")
    with pytest.raises(MgrError, match="unknown weights format"):
        build_backbone(TINY_SPEC, odd)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(MgrError, match="cannot read weights"):
        build_backbone(TINY_SPEC, broken)
    scalars = tmp_path / "scalars.pth"
    torch.save({"pos_embed": torch.zeros(1), "lr": 0.1}, scalars)
    with pytest.raises(MgrError, match="not a state dict of tensors"):
        build_backbone(TINY_SPEC, scalars)
    jax = tmp_path / "jax.npz"
    np.savez(jax, **{"Transformer/encoder_norm/scale": np.ones(3, np.float32)})
    with pytest.raises(MgrError, match="not a JAX ViT checkpoint"):
        build_backbone(TINY_SPEC, jax)
    with pytest.raises(MgrError, match="unknown options 'foo'"):  # an allow-list (issue 18)
        build_backbone(f"{TINY_SPEC},foo=1", "random")


def test_pickle_payload_is_refused(tmp_path: Path, capsys):
    evil = tmp_path / "evil.pth"
    state = backbone_state(build_backbone(TINY_SPEC, "random"))
    torch.save({"model": state, "extra": Payload()}, evil)
    capsys.readouterr()
    with pytest.raises(MgrError, match="refused") as e:
        build_backbone(TINY_SPEC, evil)
    assert "\n" not in str(e.value)
    assert "PAYLOAD RAN" not in capsys.readouterr().out


def test_offline_hub_gives_clear_error(monkeypatch, tmp_path: Path):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(MgrError, match="HF_HUB_OFFLINE is set") as e:
        build_backbone(TINY_SPEC, None)
    assert "--weights PATH" in e.value.hint and "--weights random" in e.value.hint
