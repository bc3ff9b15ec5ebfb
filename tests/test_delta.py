"""Supports as strided views, union layout, the Delta file format and projected sizes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_vit
from safetensors.torch import load_file

from manager.adapters import ConsolidatorConfig, inject_consolidator
from manager.adapters.consolidator import Branch
from manager.adapters.fold import consolidate
from manager.adapters.sizing import (
    finest_fitting,
    projected_bytes,
    projected_tensor_bytes,
    single_branch_candidates,
    stored_values,
)
from manager.delta.delta import Delta
from manager.delta.structure import (
    format_structure,
    gather_union,
    parse_structure,
    positions,
    scatter_branches,
    scatter_union,
    support_numel,
    support_view,
    union_plan,
    view_geometry,
)
from manager.errors import MgrError

# (out, in, g, shuffle): no shuffle; g | c; c | g; c == g; g = 1; c = 1; neither (index fallback).
CASES = [
    (6, 8, 2, False),
    (12, 16, 4, False),
    (8, 16, 2, True),  # c = 8, g | c
    (6, 32, 2, True),  # c = 16, g | c
    (12, 8, 4, True),  # c = 2, c | g
    (6, 24, 6, True),  # c = 4, neither
    (16, 16, 4, True),  # c = g = 4
    (10, 12, 1, True),  # g = 1
    (9, 9, 9, True),  # c = 1
    (24, 36, 12, True),  # c = 3, c | g
    (8, 12, 4, True),  # c = 3, neither
]


def reference_dense(out: int, in_: int, g: int, shuffle: bool, w: torch.Tensor) -> torch.Tensor:
    """dW = BD @ P straight from the definition: x' = reorder(x), y = BD x'."""
    bd = torch.block_diag(*w)  # g blocks of (out/g x in/g)
    perm = torch.arange(in_)
    if shuffle:
        perm = perm.view(g, in_ // g).t().reshape(-1)  # view [g, c], transpose, flatten
    p = torch.eye(in_, dtype=w.dtype)[perm]  # (P x)[j] = x[perm[j]]
    return bd @ p


@pytest.mark.parametrize(("out", "in_", "g", "shuffle"), CASES)
def test_view_matches_bruteforce(out, in_, g, shuffle):
    o, c = out // g, in_ // g
    w = torch.arange(1, g * o * c + 1, dtype=torch.float64).view(g, o, c)  # unique markers
    ref = reference_dense(out, in_, g, shuffle, w)
    expect_view = (not shuffle) or c % g == 0 or g % c == 0
    assert (view_geometry((out, in_), g, shuffle) is not None) == expect_view
    if expect_view:
        dense = torch.zeros(out, in_, dtype=torch.float64)
        view = support_view(dense, g, shuffle)
        view.copy_(w.view(view.shape))
        assert torch.equal(dense, ref)
        assert torch.equal(view.reshape(-1), w.reshape(-1))  # element order = w.flatten()
    # the flat positions (used by the fallback) agree with the definition too
    assert torch.equal(ref.reshape(-1)[positions((out, in_), g, shuffle)], w.reshape(-1))
    assert torch.equal(scatter_branches((out, in_), [(g, shuffle)], [w]), ref)
    # a single branch whose view exists never uses an index
    (seg,) = union_plan((out, in_), ((g, shuffle),))
    assert (seg.index is None) == expect_view


def test_view_shares_storage_with_offset():
    big = torch.zeros(3, 12, 8)
    w = big[1]  # non-zero storage offset
    support_view(w, 4, True).fill_(1.0)
    assert big[0].sum() == 0 and big[2].sum() == 0 and big[1].sum() == 12 * 8 / 4


@pytest.mark.parametrize(
    ("shape", "branches", "kinds"),
    [
        ((16, 16), [(8, False), (4, False)], ["view"]),  # nested: g=8 inside g=4
        ((16, 16), [(4, False), (2, True)], None),
        ((8, 8), [(4, False), (4, True)], None),
        ((16, 16), [(4, False), (4, True)], ["view", "index"]),  # partial overlap
        ((12, 24), [(6, True), (3, False), (4, True)], None),
        ((8, 8), [(2, False), (2, False)], ["view"]),  # duplicate: contained
    ],
)
def test_union_layout(shape, branches, kinds):
    rng = torch.Generator().manual_seed(0)
    ws = [torch.randn(g, shape[0] // g, shape[1] // g, generator=rng) for g, _ in branches]
    mask = torch.zeros(shape, dtype=torch.bool)
    for (g, s), w in zip(branches, ws, strict=True):
        mask |= reference_dense(*shape, g, s, torch.ones_like(w)) != 0
    assert support_numel(shape, branches) == int(mask.sum())
    dense = scatter_branches(shape, branches, ws)
    values = gather_union(dense, branches)
    assert values.numel() == int(mask.sum())
    assert torch.equal(scatter_union(values, shape, branches), dense * mask)
    plan = union_plan(shape, tuple(branches))
    if kinds is not None:
        assert ["view" if s.index is None else "index" for s in plan] == kinds


def test_vit_base_counts():
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    cfg = ConsolidatorConfig((Branch(384),))
    assert stored_values(model, cfg) == 221_184
    from manager.adapters.inject import bias_params, norm_params

    assert sum(p.numel() for p in bias_params(model).values()) == 82_944
    assert sum(p.numel() for p in norm_params(model).values()) == 38_400
    head = 10 * 768 + 10
    total = 221_184 + 82_944 + 38_400 + head
    assert projected_tensor_bytes(model, cfg) == 4 * total
    assert projected_tensor_bytes(model, cfg, torch.bfloat16) == 2 * total
    # the same from shapes alone (e.g. a safetensors header), no module
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert projected_tensor_bytes(shapes, cfg) == 4 * total
    assert projected_bytes(shapes, cfg, backbone_hash="h") == projected_bytes(
        model, cfg, backbone_hash="h"
    )


def _trained_delta(dtype=torch.float32, branches=((8, False), (4, True)), seed=0):
    model = tiny_vit(num_classes=3, seed=seed)
    cfg = ConsolidatorConfig(tuple(Branch(g, s) for g, s in branches))
    inject_consolidator(model, cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    return model, cfg, consolidate(model, backbone_name="tiny", backbone_hash="abc", dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_roundtrip_and_exact_size(tmp_path, dtype):
    _, cfg, delta = _trained_delta(dtype)
    path = tmp_path / "v1.safetensors"
    written = path.write_bytes(delta.to_bytes())
    assert path.stat().st_size == written
    assert written == projected_bytes(
        tiny_vit(num_classes=7),
        cfg,
        dtype,
        num_classes=3,
        backbone_name="tiny",
        backbone_hash="abc",
    )
    back = Delta.load(path)
    assert back.meta == delta.meta
    assert back.layers.keys() == delta.layers.keys() and back.whole.keys() == delta.whole.keys()
    for name, lay in delta.layers.items():
        assert back.layers[name].branches == lay.branches
        assert back.layers[name].values.dtype == dtype
        assert torch.equal(back.layers[name].values, lay.values)
    for name, t in delta.whole.items():
        assert torch.equal(back.whole[name], t)
    assert set(delta.whole) >= {"head.weight", "norm.bias", "blocks.1.mlp.fc2.bias"}
    assert not any(k.endswith("qkv.weight") for k in delta.whole)
    # one file, no index arrays: only values, whole tensors and metadata
    raw = load_file(path)
    assert all(k.startswith(("layers.", "whole.")) for k in raw)
    assert all(k.endswith(".values") for k in raw if k.startswith("layers."))
    # stored values = union support size
    for lay in delta.layers.values():
        assert lay.values.numel() == support_numel(lay.shape, lay.branches)


def test_file_metadata(tmp_path):
    _, _, delta = _trained_delta()
    path = tmp_path / "d.safetensors"
    path.write_bytes(delta.to_bytes())
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["__metadata__"]
    assert meta["format"] == "mgr-delta" and meta["format_version"] == "1"
    assert meta["method"] == "consolidator" and meta["backbone_hash"] == "abc"
    assert meta["dtype"] == "float32" and meta["num_classes"] == "3"
    layers = json.loads(meta["layers"])
    assert layers["blocks.0.attn.qkv.weight"] == {
        "kind": "consolidator",
        "shape": [576, 192],
        "branches": [[8, False], [4, True]],
    }


def test_load_refuses_bad_files(tmp_path):
    _, _, delta = _trained_delta()
    tensors, meta = delta.state()
    from safetensors.torch import save_file

    def write(t, m):
        p = tmp_path / "bad.safetensors"
        save_file(t, p, metadata=m)
        return p

    with pytest.raises(MgrError, match="format version 2"):
        Delta.load(write(tensors, {**meta, "format_version": "2"}))
    with pytest.raises(MgrError, match="lacks backbone_hash"):
        Delta.load(write(tensors, {k: v for k, v in meta.items() if k != "backbone_hash"}))
    short = dict(tensors)
    key = "layers.blocks.0.mlp.fc1.weight.values"
    short[key] = short[key][:-1].clone()
    with pytest.raises(MgrError, match="stored values"):
        Delta.load(write(short, meta))
    with pytest.raises(MgrError, match="missing tensors"):
        Delta.load(write({k: v for k, v in tensors.items() if k != key}, meta))
    with pytest.raises(MgrError, match="unexpected tensor"):
        Delta.load(write({**tensors, "layers.nope.values": torch.zeros(1)}, meta))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(MgrError, match="not a valid safetensors"):
        Delta.load(tmp_path / "junk.safetensors")
    with pytest.raises(MgrError, match="cannot read"):
        Delta.load(tmp_path / "missing.safetensors")


def test_finest_fitting():
    model = tiny_vit(num_classes=3)
    cands = single_branch_candidates(model)
    assert [c.branches[0].g for c in cands][:4] == [1, 2, 3, 4]
    sizes = {c.branches[0].g: projected_bytes(model, c) for c in cands}
    budget = sizes[16]
    best = finest_fitting(model, cands, budget)
    assert best.branches[0].g == 16
    assert finest_fitting(model, cands, budget - 1).branches[0].g > 16
    with pytest.raises(MgrError, match="smallest needs"):
        finest_fitting(model, cands, 100)
    with pytest.raises(MgrError, match="layer sizes"):
        finest_fitting(model, [ConsolidatorConfig((Branch(5),))], 10**9)


def test_one_parse_and_format_for_every_spelling_of_a_structure():
    want = ((96, False), (96, True))
    spellings = [
        "96,96s",
        " 96, 96S",
        [[96, False], [96, True]],
        want,
        (Branch(96), Branch(96, True)),
    ]
    for spelling in spellings:
        assert parse_structure(spelling) == want
        assert format_structure(spelling) == "96,96s"
        assert format_structure(spelling, "json") == [[96, False], [96, True]]
    assert json.loads(json.dumps(format_structure(want, "json"))) == [[96, False], [96, True]]
    assert parse_structure("384,192", shuffle=True) == ((384, True), (192, True))
    assert parse_structure(format_structure(((8, True), (4, False)))) == ((8, True), (4, False))
    for bad in ("", "0", "x", "12,,3", "-4", [], [[0, False]], [[1.5, True]], [["8", False]], 7):
        with pytest.raises(MgrError):
            parse_structure(bad)


def test_nonfinite_lists_exactly_the_bad_tensors():
    _, _, delta = _trained_delta()
    assert delta.nonfinite() == []
    layer = next(iter(delta.layers.values()))
    layer.values[3] = float("inf")
    delta.whole["head.bias"][0] = float("nan")
    bad = delta.nonfinite()
    assert len(bad) == 2 and any("head.bias" in b for b in bad)
