"""Stage 1: a trained, consolidator-adapted model -> ``Delta``.

Each ``ConsolidatorLinear`` folds its branches into ``dW = sum_i P_i(BD_i)`` (summed in float32, the
forward's own order), of which only the values on the union support are kept. Target biases,
LayerNorms and the head are stored whole.
"""

from __future__ import annotations

import torch
from torch import nn

from manager.adapters.inject import consolidator_layers, delta_whole_params, head_name
from manager.delta.delta import ConsolidatorLayer, Delta, DeltaMeta, dtype_name
from manager.delta.structure import gather_union, normalize
from manager.errors import MgrError


def num_classes_of(model: nn.Module) -> int:
    """Rows of the classifier's weight (0 when the model has no classifier)."""
    name = head_name(model)
    if not name:
        return 0
    w = getattr(model.get_submodule(name), "weight", None)
    return int(w.shape[0]) if w is not None else 0


@torch.no_grad()
def consolidate(
    model: nn.Module,
    *,
    backbone_name: str,
    backbone_hash: str,
    dtype: torch.dtype = torch.float32,
) -> Delta:
    """The model's consolidated delta (values stored in ``dtype``: float32, float16 or bfloat16)."""
    dtype_name(dtype)  # refuse unsupported storage dtypes early
    adapted = consolidator_layers(model)
    if not adapted:
        raise MgrError("nothing to consolidate: the model has no consolidator layers")
    layers = {}
    for name, module in adapted:
        dw = module.delta_weight()
        values = gather_union(dw, module.structure).to("cpu", dtype)
        shape = (module.out_features, module.in_features)
        layers[f"{name}.weight"] = ConsolidatorLayer(shape, normalize(module.structure), values)
    whole = {n: t.to("cpu", dtype).clone() for n, t in delta_whole_params(model).items()}
    meta = DeltaMeta("consolidator", backbone_name, backbone_hash, dtype, num_classes_of(model))
    return Delta(layers, whole, meta)
