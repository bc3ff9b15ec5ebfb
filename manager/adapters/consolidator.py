"""Consolidator (Hao et al., ICLR 2023): mergeable adapters with grouped connections.

A frozen linear layer gets a sum of branches; branch ``i`` is a grouped connection with ``g_i``
groups (block-diagonal, ``g_i`` blocks of ``out/g_i x in/g_i``), optionally preceded by a channel
reorder of the input (view ``[g, in/g]``, transpose, flatten), and followed by per-sample DropPath::

    y = x W0^T + b + sum_i DropPath_i(branch_i(x))

All branches are linear, so after training they fold into ``W0`` (see ``manager.delta``). They are
linear during training too, so the forward is one matmul with ``W0 + sum_i P_i(BD_i)`` and the
backward keeps only the block-diagonal part of the weight gradient (``_GroupedLinear``): close to
the frozen backbone's own cost, well under full fine-tuning's. Per-sample DropPath groups the
samples by the branches they keep, one matmul per group.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from manager.delta.structure import (
    check_divisible,
    format_structure,
    parse_structure,
    positions,
    scatter_branches,
    support_view,
)
from manager.errors import MgrError


@dataclass(frozen=True)
class Branch:
    """One grouped connection: ``g`` groups, input channels reordered first when ``shuffle``."""

    g: int
    shuffle: bool = False

    def __str__(self) -> str:
        return f"{self.g}{'s' if self.shuffle else ''}"


@dataclass(frozen=True)
class ConsolidatorConfig:
    """The branches of every adapted layer and the DropPath rate applied to each branch's output."""

    branches: tuple[Branch, ...] = (Branch(384),)
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        if not self.branches:
            raise MgrError("a consolidator needs at least one branch")
        for b in self.branches:
            if b.g < 1:
                raise MgrError(f"branch groups must be positive, got g={b.g}")
        if not 0.0 <= self.drop_path < 1.0:
            raise MgrError(f"drop_path must be in [0, 1), got {self.drop_path}")

    @classmethod
    def parse(
        cls, spec: str | Iterable, *, shuffle: bool = False, drop_path: float = 0.0
    ) -> ConsolidatorConfig:
        """Any spelling of a structure (see ``parse_structure``): ``"384,192"`` (all reordered if
        ``shuffle``), ``"96,96s"`` (``s``: reordered), ``[[96, False], [96, True]]``."""
        branches = parse_structure(spec, shuffle=shuffle)
        return cls(tuple(Branch(g, s) for g, s in branches), drop_path)

    def __str__(self) -> str:
        return format_structure(self.branches)

    def to_json(self) -> str:
        """A stable JSON form for the catalog."""
        return json.dumps(
            {"branches": format_structure(self.branches, "json"), "drop_path": self.drop_path}
        )

    @classmethod
    def from_json(cls, text: str) -> ConsolidatorConfig:
        d = json.loads(text)
        return cls.parse(d["branches"], drop_path=float(d["drop_path"]))


def branch_forward(x: Tensor, w: Tensor, shuffle: bool) -> Tensor:
    """One grouped connection on ``x (..., in)`` with weights ``w (g, o, c)`` -> ``(..., g*o)``.

    The reference form (tests, clarity): reorder = reshape/transpose, then a batched matmul over the
    block view. Training uses ``grouped_linear`` instead, which is faster.
    """
    g, o, c = w.shape
    lead = x.shape[:-1]
    return torch.einsum("ngc,goc->ngo", _reorder(x.reshape(-1, g * c), g, shuffle), w).reshape(
        *lead, g * o
    )


def _reorder(x2: Tensor, g: int, shuffle: bool) -> Tensor:
    """``(N, in)`` -> ``(N, g, c)`` blocks of the (reordered) input."""
    xb = x2.view(-1, g, x2.shape[-1] // g)
    # x'[a*g + b] = x[b*c + a]: view [g, c], transpose to [c, g], flatten, regroup as [g, c].
    return xb.transpose(1, 2).reshape(xb.shape) if shuffle else xb


def _merged_weight(weight: Tensor, structure, scales, ws) -> Tensor:
    """``W0 + sum_i s_i P_i(BD_i)`` (dense, per forward: cheap next to the matmul it feeds)."""
    w_eff = weight.detach().clone()
    for b, s, w in zip(structure, scales, ws, strict=True):
        if s == 0:
            continue
        view = support_view(w_eff, b.g, b.shuffle)
        if view is not None:
            view.add_(w.detach().view(view.shape), alpha=s)
        else:
            idx = positions(tuple(w_eff.shape), b.g, b.shuffle).to(w_eff.device)
            w_eff.view(-1).index_add_(0, idx, w.detach().reshape(-1), alpha=s)
    return w_eff


def _block_grad(gy2: Tensor, xb: Tensor, g: int) -> Tensor:
    """``sum_n gy[n, k, r] * x'[n, k, t]`` -> ``(g, o, c)``.

    Tiny blocks (g=384 on ViT-B: 8x2) make a g-batched matmul slow, so ``q`` neighbouring blocks are
    multiplied densely together and the diagonal blocks kept: q times the (negligible) flops, but
    matmuls of a useful size (measured ~5x faster than the plain einsum on ViT-B shapes).
    """
    n, out = gy2.shape
    o, c = out // g, xb.shape[-1]
    q = next((q for q in range(1, g + 1) if g % q == 0 and q * min(o, c) >= 16), g)
    big = torch.bmm(
        gy2.reshape(n, g // q, q * o).permute(1, 2, 0), xb.reshape(n, g // q, q * c).transpose(0, 1)
    )
    diag = torch.diagonal(big.view(g // q, q, o, q, c), dim1=1, dim2=3)  # (G, o, c, q)
    return diag.permute(0, 3, 1, 2).reshape(g, o, c)


class _GroupedLinear(torch.autograd.Function):
    """``y = x (W0 + sum_i s_i P_i(BD_i))^T + b``: the branches ride on the frozen layer's matmul.

    Backward: ``dx = dy W_eff`` (the frozen layer needs this matmul anyway), ``dw_i = s_i`` times
    the block-diagonal part of ``dy^T x'``, never the dense ``dy^T x`` full fine-tuning pays for.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, structure, scales, *ws):
        ctx.save_for_backward(x, weight, *ws)
        ctx.structure, ctx.scales = structure, scales
        return F.linear(x, _merged_weight(weight, structure, scales, ws).to(x.dtype), bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, weight, *ws = ctx.saved_tensors
        need = ctx.needs_input_grad
        gy2, x2 = gy.reshape(-1, weight.shape[0]), x.reshape(-1, weight.shape[1])
        gx = gw0 = gb = None
        if need[0]:
            w_eff = _merged_weight(weight, ctx.structure, ctx.scales, ws)
            gx = (gy2 @ w_eff.to(gy.dtype)).view(x.shape).to(x.dtype)
        if need[1]:
            gw0 = (gy2.T @ x2.to(gy.dtype)).to(weight.dtype)
        if need[2]:
            gb = gy2.sum(0).to(weight.dtype)
        gws = []
        for i, (b, s, w) in enumerate(zip(ctx.structure, ctx.scales, ws, strict=True)):
            if not need[5 + i] or s == 0:
                gws.append(None)
                continue
            xb = _reorder(x2.to(gy.dtype), b.g, b.shuffle)
            gws.append((_block_grad(gy2, xb, b.g) * s).to(w.dtype))
        return gx, gw0, gb, None, None, *gws


def grouped_linear(x: Tensor, weight: Tensor, bias: Tensor | None, structure, scales, ws) -> Tensor:
    """``x W0^T + b + sum_i s_i branch_i(x)``, computed as one matmul with the merged weight."""
    if all(s == 0 for s in scales):
        return F.linear(x, weight, bias)
    return _GroupedLinear.apply(x, weight, bias, tuple(structure), tuple(scales), *ws)


class ConsolidatorLinear(nn.Module):
    """A frozen ``nn.Linear`` plus grouped-connection branches.

    ``weight`` and ``bias`` are the wrapped layer's own parameters, kept under the same names, so
    the adapted model's state dict uses the plain backbone's keys (plus ``branches.N``).
    """

    def __init__(self, base: nn.Linear, config: ConsolidatorConfig, name: str = "layer"):
        super().__init__()
        out, in_ = base.weight.shape
        for b in config.branches:
            check_divisible((out, in_), b.g, name)
        self.in_features, self.out_features = in_, out
        self.weight = base.weight
        self.bias = base.bias
        self.structure = tuple(config.branches)
        self.branches = nn.ParameterList(
            nn.Parameter(
                torch.empty(
                    b.g, out // b.g, in_ // b.g, device=self.weight.device, dtype=self.weight.dtype
                )
            )
            for b in self.structure
        )
        self.drop_paths = nn.ModuleList(DropPath(config.drop_path) for _ in self.structure)
        self.reset_branches()

    @torch.no_grad()
    def reset_branches(self, bound: float = 1e-3) -> None:
        """Small, not zero (the paper's init): uniform in ``[-bound, bound]``."""
        for w in self.branches:
            w.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        ws = list(self.branches)
        rates = [d.drop_prob if self.training else 0.0 for d in self.drop_paths]
        if not any(rates):
            return grouped_linear(x, self.weight, self.bias, self.structure, [1.0] * len(ws), ws)
        # Per-sample DropPath: samples that keep the same branches share one merged weight, so each
        # pattern of kept branches is one matmul (a kept branch is scaled by 1/keep, as timm does).
        keep = torch.stack([torch.rand(x.shape[0], device=x.device) >= r for r in rates])
        codes = sum(k.long() << i for i, k in enumerate(keep))
        y = None
        for code in codes.unique().tolist():
            rows = (codes == code).nonzero().squeeze(1)
            scales = [1.0 / (1.0 - r) if code >> i & 1 else 0.0 for i, r in enumerate(rates)]
            part = grouped_linear(x[rows], self.weight, self.bias, self.structure, scales, ws)
            if y is None:
                y = part.new_empty(*x.shape[:-1], self.out_features)
            y[rows] = part
        return y

    def delta_weight(self) -> Tensor:
        """Dense ``dW = sum_i P_i(BD_i)`` (out x in), float32 at least; offline use only."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        ws = [w.detach().to(dtype) for w in self.branches]
        return scatter_branches((self.out_features, self.in_features), self.structure, ws)

    def to_linear(self, merge: bool = True) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's bias; weight ``W0 + dW`` when ``merge``."""
        lin = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="meta"
        )
        weight = self.weight
        if merge:
            with torch.no_grad():
                weight = nn.Parameter(
                    (self.weight.to(torch.float32) + self.delta_weight()).to(self.weight.dtype),
                    requires_grad=self.weight.requires_grad,
                )
        lin.weight = weight
        lin.bias = self.bias
        return lin

    def extra_repr(self) -> str:
        branches = ",".join(str(b) for b in self.structure)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, branches={branches}"
        )
