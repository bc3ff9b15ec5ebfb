"""Many tasks in one batch without merging: ``x @ W0`` once, plus each sample's own small delta.

A merged model serves one task at a time. `MultiTaskModel` serves a batch whose samples belong to
different tasks: every adapted linear computes ``x @ W0.T`` once for the whole batch and adds each
sample's grouped delta as one batched matmul per branch (``[N, g, L, c] @ [N, g, c, o]``: 1/g of a
dense matmul, whatever the number of tasks), with per-sample biases, LayerNorm affines and heads
gathered from per-task tables by the sample's task id. Heads of different sizes are padded to the
largest; padded logits are ``-inf`` (softmax gives them 0).

Supported deltas: the Consolidator's and those that store only whole tensors (linear probe,
BitFit, BitFit+LN). Dense and LoRA layer deltas are refused: serve those merged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manager.adapters.inject import head_name, norm_params, target_modules
from manager.delta.delta import ConsolidatorLayer, Delta
from manager.delta.structure import canonical, positions, scatter_union
from manager.errors import MgrError


def branch_blocks(lay: ConsolidatorLayer) -> dict[tuple[int, bool], Tensor]:
    """``{(g, shuffle): w}`` with ``w`` of shape ``(g, out/g, in/g)``, summing exactly to the
    layer's stored delta: each union position is owned by the branch that stores it."""
    out, in_ = lay.shape
    remaining = scatter_union(lay.values.float(), lay.shape, lay.branches).reshape(-1)
    blocks = {}
    for g, shuffle in canonical(lay.branches):
        pos = positions((out, in_), g, shuffle)
        blocks[(g, shuffle)] = remaining[pos].reshape(g, out // g, in_ // g).clone()
        remaining[pos] = 0
    return blocks


# Input channels per group up to which a branch is computed as c multiply-adds (see forward).
SMALL_C = 8


class _TaskIds:
    """The batch's task ids, shared by every wrapped layer during one forward."""

    ids: Tensor | None = None


def _per_sample(table: Tensor, ids: Tensor, like: Tensor) -> Tensor:
    """``table[ids]`` shaped to broadcast over ``like``'s middle dimensions (tokens)."""
    rows = table[ids]
    return rows.view(rows.shape[0], *([1] * (like.ndim - 2)), rows.shape[-1])


class MultiTaskLinear(nn.Module):
    """A frozen linear plus, per sample, its task's bias and grouped-branch delta."""

    def __init__(
        self,
        base: nn.Linear,
        ids: _TaskIds,
        bias: Tensor | None,
        branches: dict[tuple[int, bool], Tensor],
    ):
        super().__init__()
        self.weight = base.weight
        self.ids = ids
        self.register_buffer("bias_table", bias)
        self.keys = list(branches)
        for i, key in enumerate(self.keys):
            self.register_buffer(f"branch_{i}", branches[key])

    def forward(self, x: Tensor) -> Tensor:
        ids = self.ids.ids
        n, in_ = x.shape[0], x.shape[-1]
        y = F.linear(x, self.weight)
        rows = y.view(n, -1, y.shape[-1])
        # Low precision: bias and branches add up in float32 and round once onto y, as a merged
        # layer's matmul accumulates in float32 (each in-place add would round again).
        low = y.dtype != torch.float32
        acc = torch.zeros(rows.shape, dtype=torch.float32, device=y.device) if low else rows
        if self.bias_table is not None:
            acc.add_(self.bias_table[ids].to(acc.dtype).unsqueeze(1))
        tokens = x.reshape(n, -1, in_).to(acc.dtype)
        for i, (g, shuffle) in enumerate(self.keys):
            w = getattr(self, f"branch_{i}")[ids].to(acc.dtype)  # (N, g, o, c)
            c, o = in_ // g, w.shape[2]
            xb = tokens.view(n, -1, g, c)
            if shuffle:  # x'[k*c + t] = x[(k*c + t) % g * c + (k*c + t) // g]
                xb = xb.transpose(2, 3).reshape(xb.shape)
            if min(c, o) <= SMALL_C:
                # A few multiply-adds per output: a handful of fused passes beat a batched matmul
                # of N*g tiny (L x c) @ (c x o) products. Loop over the shorter of c and o.
                out = acc.view(n, -1, g, o)
                if c <= o:
                    for t in range(c):
                        out.addcmul_(xb[..., t : t + 1], w[:, None, :, :, t])
                else:
                    for r in range(o):
                        out[..., r] += (xb * w[:, None, :, r, :]).sum(-1)
            else:
                yb = torch.matmul(xb.transpose(1, 2), w.transpose(-1, -2))  # (N, g, L, o)
                acc.add_(yb.transpose(1, 2).reshape(acc.shape))
        if low:
            rows.add_(acc.to(y.dtype))
        return y


class MultiTaskLayerNorm(nn.Module):
    """LayerNorm whose affine (weight, bias) is the sample's task's."""

    def __init__(self, base: nn.LayerNorm, ids: _TaskIds, weight: Tensor, bias: Tensor):
        super().__init__()
        self.normalized_shape, self.eps, self.ids = base.normalized_shape, base.eps, ids
        self.register_buffer("weight_table", weight)
        self.register_buffer("bias_table", bias)

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        ids = self.ids.ids
        w, b = self.weight_table.to(y.dtype), self.bias_table.to(y.dtype)
        return torch.addcmul(_per_sample(b, ids, y), y, _per_sample(w, ids, y))


class MultiTaskModel(nn.Module):
    """``forward(x, task_ids)``: logits of every sample under its own task's delta.

    ``model`` is a timm ViT holding W0 (its layers are wrapped in place); ``deltas[t]`` is task
    ``t``'s delta. Returns ``(N, max classes)`` logits; ``num_classes[t]`` says how many are real.
    """

    def __init__(self, model: nn.Module, deltas: Sequence[Delta]):
        super().__init__()
        if not deltas:
            raise MgrError("a multi-task model needs at least one task's delta")
        self.ids = _TaskIds()
        self.model = model
        params = {n: p.detach() for n, p in model.named_parameters()}
        self._check(deltas, params)
        head = head_name(model)
        self.num_classes = [_head_rows(d, head) for d in deltas]
        for name, module in target_modules(model):
            bias = None
            if getattr(module, "bias", None) is not None:
                bias = _table(deltas, f"{name}.bias", params[f"{name}.bias"])
            blocks = [
                branch_blocks(d.layers[f"{name}.weight"]) if f"{name}.weight" in d.layers else {}
                for d in deltas
            ]
            keys = sorted({k for b in blocks for k in b})
            branches = {k: _stack([b.get(k) for b in blocks], module.weight, k) for k in keys}
            model.set_submodule(name, MultiTaskLinear(module, self.ids, bias, branches))
        norms = {n.rsplit(".", 1)[0] for n in norm_params(model)}
        for name in sorted(norms):
            prefix = f"{name}." if name else ""
            ln = model.get_submodule(name)
            w = _table(deltas, f"{prefix}weight", params[f"{prefix}weight"])
            b = _table(deltas, f"{prefix}bias", params[f"{prefix}bias"])
            model.set_submodule(name, MultiTaskLayerNorm(ln, self.ids, w, b))
        self.register_buffer("head_weight", _pad_heads(deltas, f"{head}.weight", 0.0))
        self.register_buffer("head_bias", _pad_heads(deltas, f"{head}.bias", float("-inf")))

    @staticmethod
    def _check(deltas: Sequence[Delta], params: dict[str, Tensor]) -> None:
        allowed = set(params)
        for t, d in enumerate(deltas):
            for name, lay in d.layers.items():
                if not isinstance(lay, ConsolidatorLayer):
                    raise MgrError(
                        f"task {t}: a {lay.kind} layer delta cannot be served unmerged; "
                        "serve it merged (switch to it)"
                    )
                if name not in allowed or tuple(params[name].shape) != tuple(lay.shape):
                    raise MgrError(f"task {t}: the delta's {name} does not fit this backbone")

    @torch.no_grad()
    def forward(self, x: Tensor, task_ids: Tensor) -> Tensor:
        ids = task_ids.to(x.device, torch.long)
        if ids.shape != (x.shape[0],):
            raise MgrError("task_ids needs one task index per sample")
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(self.num_classes)):
            raise MgrError(f"task ids must be in 0..{len(self.num_classes) - 1}")
        self.ids.ids = ids
        try:
            feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        finally:
            self.ids.ids = None
        w, b = self.head_weight[ids].to(feats.dtype), self.head_bias[ids].to(feats.dtype)
        return torch.einsum("nd,ncd->nc", feats, w) + b


def _table(deltas: Sequence[Delta], name: str, base: Tensor) -> Tensor:
    """``(tasks, *shape)``: each task's value of a whole tensor, W0's where it has none."""
    return torch.stack([d.whole.get(name, base).to(base.device, base.dtype) for d in deltas])


def _stack(blocks: list[Tensor | None], weight: Tensor, key: tuple[int, bool]) -> Tensor:
    g = key[0]
    out, in_ = weight.shape
    zero = torch.zeros(g, out // g, in_ // g, dtype=weight.dtype, device=weight.device)
    return torch.stack(
        [b.to(weight.device, weight.dtype) if b is not None else zero for b in blocks]
    )


def _head_rows(delta: Delta, head: str | None) -> int:
    if head is None or f"{head}.weight" not in delta.whole:
        raise MgrError("every task's delta needs its classifier head to be served unmerged")
    return int(delta.whole[f"{head}.weight"].shape[0])


def _pad_heads(deltas: Sequence[Delta], name: str, fill: float) -> Tensor:
    rows = [d.whole[name].float() for d in deltas]
    most = max(r.shape[0] for r in rows)
    out = torch.full((len(rows), most, *rows[0].shape[1:]), fill)
    for t, r in enumerate(rows):
        out[t, : r.shape[0]] = r
    return out
