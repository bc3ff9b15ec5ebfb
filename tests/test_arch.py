"""A spec's architecture without timm: the shipped table is timm's, the home's cache is used and
survives damage, and a weights header is checked against either."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from conftest import ROOT, TINY_SPEC
from make_archs import render, table
from test_catalog_imports import weights_file

from manager.arch import SHIPPED, arch, arch_of_model, check_weights_header, meta_model, shipped
from manager.errors import BadInput
from manager.home import Home
from manager.store.fs import Store


def test_the_shipped_architectures_are_timms() -> None:
    """If timm changes one of them, rerun ``python tests/make_archs.py`` and review the diff."""
    assert SHIPPED.read_text() == render(table())
    assert "vit_base_patch16_224" in shipped()  # the default backbone ships


def test_arch_matches_a_real_model() -> None:
    model = timm.create_model("deit_tiny_patch16_224", num_classes=0)
    got = arch("deit_tiny_patch16_224")
    assert got == arch_of_model(model)
    assert got.params == sum(p.numel() for p in model.parameters()) == 5_524_416
    assert "head.weight" not in got.tensors and got.heads == ("head",)


def test_a_spec_is_built_once_per_home_then_read_without_timm(tmp_path: Path) -> None:
    store = Store(Home(tmp_path.resolve()))
    built = arch(TINY_SPEC, store)
    assert built == arch_of_model(meta_model(TINY_SPEC))
    assert len(built.tensors) < len(arch("deit_tiny_patch16_224").tensors)  # depth 2, not 12
    (cached,) = (store.cache / "archs").iterdir()
    assert json.loads(cached.read_text())["spec"] == TINY_SPEC
    probe = (
        "import sys, json; from pathlib import Path; from manager.arch import arch;"
        "from manager.home import Home; from manager.store.fs import Store;"
        f"a = arch({TINY_SPEC!r}, Store(Home(Path(sys.argv[1]))));"
        "print(json.dumps([a.params, 'timm' in sys.modules, 'torch' in sys.modules]))"
    )
    run = [sys.executable, "-c", probe, str(tmp_path.resolve())]
    out = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout) == [built.params, False, False]
    # A damaged entry, or one another timm version made, is only a cache: rebuilt, rewritten.
    entry = json.loads(cached.read_text())
    assert entry["timm"] == timm.__version__
    for bad in ("{not json", "[]", json.dumps({**entry, "timm": "0.0.1", "params": 1})):
        cached.write_text(bad)
        assert arch(TINY_SPEC, store) == built
        assert json.loads(cached.read_text()) == entry


def test_a_cache_that_cannot_be_written_still_answers(tmp_path: Path) -> None:
    store = Store(Home(tmp_path.resolve()))
    store.cache.mkdir(parents=True)
    (store.cache / "archs").write_text("a file where the cache's folder would be")
    assert arch(TINY_SPEC, store) == arch_of_model(meta_model(TINY_SPEC))


def test_weights_header_fits_or_names_what_fits(tmp_path: Path) -> None:
    store = Store(Home((tmp_path / "home").resolve()))
    deit = weights_file(tmp_path / "deit.safetensors", "deit_tiny_patch16_224")
    check_weights_header(deit, "deit_tiny_patch16_224", store)  # shipped shapes
    check_weights_header(deit, "deit_tiny_patch16_224:img_size=48", store)  # pos_embed resampled
    with pytest.raises(BadInput, match=r"cls_token file .* it fits deit_tiny_patch16_224") as e:
        check_weights_header(deit, "vit_base_patch16_224", store)
    assert e.value.hint == "choose one with --backbone"
    twelve = r"blocks\.\d+\..* not in the model; it fits deit_tiny_patch16_224"
    with pytest.raises(BadInput, match=twelve):
        check_weights_header(deit, TINY_SPEC, store)  # two blocks, the file has twelve
    tiny = weights_file(tmp_path / "tiny.safetensors", TINY_SPEC)
    check_weights_header(tiny, TINY_SPEC, store)  # built once, cached
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(BadInput, match="not a safetensors file"):
        check_weights_header(odd, TINY_SPEC, store)
    check_weights_header(tmp_path / "w.pth", TINY_SPEC, store)  # other formats: checked on build
