"""Sizes known before training: the structure alone fixes the artifact's bytes.

``projected_bytes`` is the exact size of the file ``Delta.save`` will write (safetensors header with
its metadata included), so a budget check before training and the bytes on disk after it agree,
provided the same ``backbone_name``/``backbone_hash``/``method`` are given (they are in the header).
``projected_tensor_bytes`` is the tensor data alone.

The backbone is an ``nn.Module`` (a ``meta``-device model is fine, nothing is allocated for it) or a
mapping of its plain tensor names to shapes (e.g. read from a safetensors header); for a mapping,
targets, LayerNorms and the head are recognised by timm ViT names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from manager.adapters.consolidator import Branch, ConsolidatorConfig
from manager.adapters.inject import (
    TARGETS,
    bias_params,
    head_name,
    norm_params,
    target_modules,
)
from manager.delta.delta import ConsolidatorLayer, Delta, DeltaMeta
from manager.delta.structure import check_divisible, normalize, support_numel
from manager.errors import MgrError

Shapes = Mapping[str, Sequence[int]]
_TARGET_RE = re.compile(r"^blocks\.\d+\.(" + "|".join(re.escape(t) for t in TARGETS) + r")\.")
_NORM_RE = re.compile(r"(^|\.)(norm\d*|fc_norm|norm_pre|q_norm|k_norm)\.(weight|bias)$")


def _layout(
    backbone: nn.Module | Shapes, num_classes: int | None
) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, ...]], int]:
    """``(adapted weight shapes, whole tensor shapes, classes)``; head sized for ``num_classes``."""
    if isinstance(backbone, nn.Module):
        layers = {f"{n}.weight": tuple(m.weight.shape) for n, m in target_modules(backbone)}
        params = {**bias_params(backbone), **norm_params(backbone)}
        whole = {n: tuple(p.shape) for n, p in params.items()}
        found = head_name(backbone)
        w = getattr(backbone.get_submodule(found), "weight", None) if found else None
        head = found or "head"
        features = int(w.shape[1]) if w is not None else int(getattr(backbone, "num_features", 0))
        classes = int(w.shape[0]) if w is not None else 0
    else:
        shapes = {k: tuple(v) for k, v in backbone.items()}
        layers = {k: v for k, v in shapes.items() if _TARGET_RE.match(k) and k.endswith(".weight")}
        if not layers:
            raise MgrError("no ViT target layers (blocks.N.attn.qkv, ...) among the given shapes")
        whole = {
            k: v
            for k, v in shapes.items()
            if (_TARGET_RE.match(k) and k.endswith(".bias")) or _NORM_RE.search(k)
        }
        head = "head"
        norm = shapes.get("fc_norm.weight") or shapes.get("norm.weight") or (0,)
        features, classes = shapes.get("head.weight", (0, norm[0]))[::-1]
    classes = classes if num_classes is None else num_classes
    if classes:
        whole[f"{head}.weight"] = (classes, features)
        whole[f"{head}.bias"] = (classes,)
    return layers, whole, classes


def _zero_delta(
    backbone: nn.Module | Shapes,
    config: ConsolidatorConfig,
    dtype: torch.dtype,
    num_classes: int | None,
    backbone_name: str,
    backbone_hash: str,
    method: str,
) -> Delta:
    layer_shapes, whole_shapes, classes = _layout(backbone, num_classes)
    structure = normalize(config.branches)
    layers = {}
    for name, shape in layer_shapes.items():
        for g, _ in structure:
            check_divisible(shape, g, name.removesuffix(".weight"))
        layers[name] = ConsolidatorLayer(
            shape, structure, torch.zeros(support_numel(shape, structure), dtype=dtype)
        )
    whole = {n: torch.zeros(s, dtype=dtype) for n, s in whole_shapes.items()}
    return Delta(layers, whole, DeltaMeta(method, backbone_name, backbone_hash, dtype, classes))


def projected_bytes(
    backbone: nn.Module | Shapes,
    config: ConsolidatorConfig,
    dtype: torch.dtype = torch.float32,
    *,
    num_classes: int | None = None,
    backbone_name: str = "",
    backbone_hash: str = "",
    method: str = "consolidator",
) -> int:
    """Exact bytes of the delta file this structure will produce (header included).

    The file is built zero-filled in memory (a few MB at most for grouped structures) and measured,
    so the answer is the safetensors writer's own. ``num_classes`` sizes the new head (default: the
    backbone's own head, if any).
    """
    delta = _zero_delta(backbone, config, dtype, num_classes, backbone_name, backbone_hash, method)
    return len(delta.to_bytes())


def projected_tensor_bytes(
    backbone: nn.Module | Shapes,
    config: ConsolidatorConfig,
    dtype: torch.dtype = torch.float32,
    *,
    num_classes: int | None = None,
) -> int:
    """Bytes of the tensor data alone (delta values + biases + LayerNorms + head)."""
    delta = _zero_delta(backbone, config, dtype, num_classes, "", "", "consolidator")
    return delta.numel() * torch.empty((), dtype=dtype).element_size()


def stored_values(backbone: nn.Module | Shapes, config: ConsolidatorConfig) -> int:
    """Delta values on the union supports, all adapted layers (the structure's "fineness")."""
    layers, _, _ = _layout(backbone, None)
    return sum(support_numel(s, config.branches) for s in layers.values())


def single_branch_candidates(
    backbone: nn.Module | Shapes, shuffle: bool = False, drop_path: float = 0.0
) -> list[ConsolidatorConfig]:
    """One-branch structures for every ``g`` dividing all adapted dimensions, finest first."""
    layers, _, _ = _layout(backbone, None)
    dims = {d for s in layers.values() for d in s}
    g_max = min(dims)
    gs = [g for g in range(1, g_max + 1) if all(d % g == 0 for d in dims)]
    return [ConsolidatorConfig((Branch(g, shuffle),), drop_path) for g in gs]


def finest_fitting(
    backbone: nn.Module | Shapes,
    candidates: Sequence[ConsolidatorConfig],
    budget_bytes: int,
    dtype: torch.dtype = torch.float32,
    *,
    num_classes: int | None = None,
    backbone_name: str = "",
    backbone_hash: str = "",
) -> ConsolidatorConfig:
    """The candidate with the most stored values whose file fits ``budget_bytes``.

    Ties go to the smaller file. Candidates whose ``g`` does not divide the layers are skipped.
    """
    best: tuple[int, int, ConsolidatorConfig] | None = None
    smallest: int | None = None
    for cfg in candidates:
        try:
            size = projected_bytes(
                backbone,
                cfg,
                dtype,
                num_classes=num_classes,
                backbone_name=backbone_name,
                backbone_hash=backbone_hash,
            )
        except MgrError:
            continue
        smallest = size if smallest is None else min(smallest, size)
        if size <= budget_bytes:
            key = (stored_values(backbone, cfg), -size, cfg)
            if best is None or key[:2] > best[:2]:
                best = key
    if best is None:
        if smallest is None:
            raise MgrError("no candidate structure fits this backbone's layer sizes")
        raise MgrError(
            f"no candidate structure fits the budget of {budget_bytes} bytes: "
            f"the smallest needs {smallest} bytes"
        )
    return best[2]
