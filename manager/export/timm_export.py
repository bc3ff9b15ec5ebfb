"""A task version as a plain timm model: merged weights and timm's own config, nothing of mgr.

The weights are W0 with the version's delta applied by the same exact writes as ``mgr switch``
(through a `Switcher` in fp32 on the CPU), plus the task's head, so the export computes what
``mgr predict`` computes. ``config.json`` is timm's Hugging Face layout (``architecture``,
``num_classes``, ``model_args``, ``pretrained_cfg``, ``label_names``), so either of these rebuilds
the model without mgr::

    timm.create_model("local-dir:DIR", pretrained=True)
    timm.create_model(cfg["architecture"], pretrained_cfg_overlay=cfg["pretrained_cfg"],
                      **cfg["model_args"])  # then load_state_dict(load_file(...))
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

import manager
from manager.catalog import Catalog
from manager.home import Home
from manager.store.fs import Store

WEIGHTS_NAME, CONFIG_NAME, ONNX_NAME = "model.safetensors", "config.json", "model.onnx"
# Where the exported weights came from; meaningless (or wrong) for a fine-tuned export.
_SOURCE_KEYS = ("url", "hf_hub_id", "hf_hub_filename", "file", "state_dict", "source", "tag")


@dataclass
class ExportReport:
    """What ``mgr export`` wrote (``to_dict`` is its JSON)."""

    task: str
    version: int
    method: str
    architecture: str
    num_classes: int
    out: str
    files: dict[str, int]  # name -> bytes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class MergedModel:
    """A version merged onto its backbone, in fp32 on the CPU, with what describes it."""

    model: nn.Module
    spec: str
    backbone_hash: str
    task: str
    version: int
    method: str
    content_hash: str
    class_names: list[str]


def merged_model(home: Home, catalog: Catalog, task: str, number: int | None) -> MergedModel:
    """W0 + the version's delta (exact writes, artifact and backbone checked) and its head."""
    from manager.switch.switcher import Switcher

    sw = Switcher(home, catalog, device="cpu", precision="fp32")
    sw.switch(task, number)
    assert sw.model is not None and sw.current is not None and sw.backbone is not None
    ref = sw.current
    return MergedModel(
        sw.model.eval(),
        sw.backbone.spec,
        sw.backbone.content_hash,
        ref.task,
        ref.number,
        ref.method,
        ref.content_hash,
        list(sw.class_names),
    )


def timm_config(merged: MergedModel) -> dict[str, Any]:
    """timm's ``config.json`` for the merged model, with the kwargs that rebuild it."""
    from timm.models import PretrainedCfg

    from manager.arch import parse_spec
    from manager.datasets.transforms import data_config

    model = merged.model
    name, kwargs = parse_spec(merged.spec)
    dc = data_config(model)
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    source = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg = {k: v for k, v in source.items() if k in known and k not in _SOURCE_KEYS}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    cfg.pop("test_input_size", None)
    cfg.pop("test_crop_pct", None)
    cfg.update(
        # mgr's preprocessing: a bicubic resize of the whole image to a square, no crop.
        input_size=[3, dc["img_size"], dc["img_size"]],
        interpolation="bicubic",
        crop_pct=1.0,
        crop_mode="squash",
        mean=list(dc["mean"]),
        std=list(dc["std"]),
        num_classes=len(merged.class_names),
        custom_load=False,
    )
    cfg.pop("architecture", None)
    config: dict[str, Any] = {
        "architecture": name,
        "num_classes": len(merged.class_names),
        "num_features": int(getattr(model, "num_features", 0)) or None,
        "global_pool": getattr(model, "global_pool", None) or None,
        "model_args": {**kwargs, "num_classes": len(merged.class_names)},
        "pretrained_cfg": cfg,
        "label_names": list(merged.class_names),
        # timm ignores this; it says where the export came from.
        "mgr": {
            "task": merged.task,
            "version": merged.version,
            "method": merged.method,
            "backbone": merged.spec,
            "backbone_content_hash": merged.backbone_hash,
            "artifact_sha256": merged.content_hash,
            "mgr_version": manager.__version__,
        },
    }
    config = {k: v for k, v in config.items() if v is not None}
    json.dumps(config)  # fails here, not half-way through writing, if anything is not JSON
    return config


def weights_bytes(merged: MergedModel) -> bytes:
    """The merged model's full state dict (head included) as safetensors bytes."""
    import safetensors.torch

    # Each tensor copied out: the switcher's weights are views of one flat buffer, and
    # safetensors refuses tensors that share memory.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in merged.model.state_dict().items()}
    meta = {"format": "pt", "mgr_task": merged.task, "mgr_version": str(merged.version)}
    return safetensors.torch.save(state, metadata=meta)


def export_version(
    home: Home,
    catalog: Catalog,
    task: str,
    number: int | None,
    out: str | Path,
    *,
    force: bool = False,
    onnx: bool = False,
) -> ExportReport:
    """Write ``model.safetensors`` + ``config.json`` (and ``model.onnx`` if asked) into ``out``.

    Nothing is written until every file is ready in memory; then `Store.write_export` puts them
    in place atomically (a non-empty ``out`` is refused unless ``force``).
    """
    from manager.export.onnx import onnx_bytes, require_onnx

    if onnx:
        require_onnx()  # before the work, so a missing package costs nothing
    Store.of(home).user_path(out, "the export")  # a bad --out costs nothing either
    merged = merged_model(home, catalog, task, number)
    config = timm_config(merged)
    files = {
        WEIGHTS_NAME: weights_bytes(merged),
        CONFIG_NAME: (json.dumps(config, indent=2) + "\n").encode(),
    }
    if onnx:
        size = config["pretrained_cfg"]["input_size"]
        files[ONNX_NAME] = onnx_bytes(merged.model, tuple(size))
    dest = Store.of(home).write_export(out, files, force=force)
    return ExportReport(
        merged.task,
        merged.version,
        merged.method,
        config["architecture"],
        config["num_classes"],
        str(dest),
        {n: len(b) for n, b in files.items()},
    )
