"""Consolidator (Hao et al., ICLR 2023): mergeable adapters with grouped connections.

A frozen linear layer gets a sum of branches; branch ``i`` is a grouped connection with ``g_i``
groups (block-diagonal, ``g_i`` blocks of ``out/g_i x in/g_i``), optionally preceded by a channel
reorder of the input (view ``[g, in/g]``, transpose, flatten), and followed by per-sample DropPath::

    y = x W0^T + b + sum_i DropPath_i(branch_i(x))

All branches are linear, so after training they fold into ``W0`` (see ``manager.delta``).

Training has two forms, both built from python ints fixed at construction (no index tensors per
call, no data-dependent shapes: torch.compile sees one graph):

* no DropPath (and eval): the branches ride on the frozen layer's matmul, ``x (W0 + dW)^T``, with
  a backward that keeps only the block-diagonal part of the weight gradient (``_Merged``). Its
  extra cost is building ``dW`` (weight-sized) and the block gradient (1/g of a dense matmul).
* DropPath: samples need different weights, so ``F.linear(x, W0, b)`` plus each branch on its
  own, on the input times its per-sample mask (``_Masked``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manager.adapters.config import Branch, ConsolidatorConfig
from manager.delta.structure import check_divisible, scatter_branches
from manager.errors import BadInput

__all__ = ["Branch", "ConsolidatorConfig", "ConsolidatorLinear", "branch_forward"]


def branch_forward(x: Tensor, w: Tensor, shuffle: bool) -> Tensor:
    """One grouped connection on ``x (..., in)`` with weights ``w (g, o, c)`` -> ``(..., g*o)``.

    The reference form (tests, clarity): reorder = reshape/transpose, then a batched matmul over the
    block view. Training uses the faster forms below; the tests hold them to this one.
    """
    g, o, c = w.shape
    lead = x.shape[:-1]
    xb = _blocks(x.reshape(-1, g * c), _Geometry.of(g, o, c, shuffle))
    return torch.einsum("ngc,goc->ngo", xb, w).reshape(*lead, g * o)


@dataclass(frozen=True)
class _Geometry:
    """A branch's shapes, fixed at construction: ``g`` blocks of ``o x c``, ``q`` of them per
    matmul where tiny blocks are multiplied a few at a time (see ``_block_grad``)."""

    g: int
    o: int
    c: int
    shuffle: bool
    q: int

    @classmethod
    def of(cls, g: int, o: int, c: int, shuffle: bool) -> _Geometry:
        q = next((q for q in range(1, g + 1) if g % q == 0 and q * min(o, c) >= 16), g)
        return cls(g, o, c, shuffle, q)


def _blocks(x2: Tensor, geo: _Geometry) -> Tensor:
    """``(N, in)`` -> ``(N, g, c)`` blocks of the (reordered) input: a view unless reordered."""
    xb = x2.view(-1, geo.g, geo.c)
    # x'[a*g + b] = x[b*c + a]: view [g, c], transpose to [c, g], flatten, regroup as [g, c].
    return xb.transpose(1, 2).reshape(xb.shape) if geo.shuffle else xb


def _dense(w: Tensor, geo: _Geometry) -> Tensor:
    """``P(BD)`` as a dense ``out x in`` matrix, built from views alone (no index tensors)."""
    g, o, c = geo.g, geo.o, geo.c
    bd = torch.diag_embed(w.permute(1, 2, 0), dim1=0, dim2=2).reshape(g * o, g * c)
    if geo.shuffle:  # column reorder: dW[:, b*c + a] = BD[:, a*g + b]
        bd = bd.view(g * o, c, g).transpose(1, 2).reshape(g * o, g * c)
    return bd


def _block_diag_q(w: Tensor, geo: _Geometry) -> Tensor:
    """``(g/q, q*o, q*c)``: each run of ``q`` neighbouring blocks as one block-diagonal matrix."""
    G, q, o, c = geo.g // geo.q, geo.q, geo.o, geo.c
    wq = w.view(G, q, o, c).permute(0, 2, 3, 1)
    return torch.diag_embed(wq, dim1=1, dim2=3).reshape(G, q * o, q * c)


def _block_grad(gy2: Tensor, xb: Tensor, geo: _Geometry) -> Tensor:
    """``sum_n gy[n, k, r] * x'[n, k, t]`` -> ``(g, o, c)``.

    Tiny blocks (g=384 on ViT-B: 8x2) make a g-batched matmul slow, so ``q`` neighbouring blocks are
    multiplied densely together and the diagonal blocks kept: q times the (negligible) flops, but
    matmuls of a useful size (measured ~5x faster than the plain einsum on ViT-B shapes).
    """
    n = gy2.shape[0]
    g, q, o, c = geo.g, geo.q, geo.o, geo.c
    big = torch.bmm(
        gy2.reshape(n, g // q, q * o).permute(1, 2, 0), xb.reshape(n, g // q, q * c).transpose(0, 1)
    )
    diag = torch.diagonal(big.view(g // q, q, o, q, c), dim1=1, dim2=3)  # (G, o, c, q)
    return diag.permute(0, 3, 1, 2).reshape(g, o, c)


class _Merged(torch.autograd.Function):
    """``y = x (W0 + sum_i P_i(BD_i))^T + b``: the branches ride on the frozen layer's matmul.

    Backward: ``dx = dy W_eff`` (the frozen layer needs this matmul anyway), ``dw_i`` the
    block-diagonal part of ``dy^T x'`` (``_block_grad``), never the dense ``dy^T x`` full
    fine-tuning pays for. Under autocast ``F.linear`` runs in the autocast dtype and the backward
    computes in the incoming gradient's dtype, casting each gradient to its input's dtype.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, geoms, *ws):
        w_eff = weight
        for geo, w in zip(geoms, ws, strict=True):
            w_eff = w_eff + _dense(w, geo).to(weight.dtype)
        ctx.geoms = geoms
        ctx.save_for_backward(x, w_eff, *ws)
        return F.linear(x, w_eff, bias)

    @staticmethod
    def backward(ctx, gy):
        x, w_eff, *ws = ctx.saved_tensors
        need = ctx.needs_input_grad
        out, in_ = w_eff.shape
        gy2, x2 = gy.reshape(-1, out), x.reshape(-1, in_).to(gy.dtype)
        gx = gw0 = gb = None
        if need[0]:
            gx = (gy2 @ w_eff.to(gy.dtype)).view(x.shape).to(x.dtype)
        if need[1]:
            gw0 = (gy2.T @ x2).to(w_eff.dtype)
        if need[2]:
            gb = gy2.sum(0).to(w_eff.dtype)
        gws = [
            _block_grad(gy2, _blocks(x2, geo), geo).to(w.dtype) if need[4 + i] else None
            for i, (geo, w) in enumerate(zip(ctx.geoms, ws, strict=True))
        ]
        return gx, gw0, gb, None, *gws


class _Masked(torch.autograd.Function):
    """``y = x W0^T + b + sum_i m_i * branch_i(x)``, ``m_i`` a per-sample scale (DropPath).

    Each branch is computed on its own (samples need different weights), ``q`` blocks per matmul
    (``_block_diag_q``: a ``g``-batched matmul of ``c``-wide products is slow, c=2 in the paper's
    setting), and accumulated straight into ``y`` by the matmul (``baddbmm_`` on a view): the
    mask is applied to the input (``m x``), so no branch-sized output is written, read back and
    added. Backward likewise reads ``dy`` once per branch matmul. Measured on CPU, a plain
    autograd form (branch output, masked add, its backward) paid ~8 output-sized passes per
    branch, more than the dense weight gradient full fine-tuning computes.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, masks, geoms, *ws):
        n_samples, in_ = x.shape[0], x.shape[-1]
        x2 = x.reshape(-1, in_)
        y = F.linear(x2, weight, bias)  # autocast decides the compute dtype here
        for geo, m, w in zip(geoms, masks, ws, strict=True):
            xq = _masked_blocks(x2, m, geo, n_samples, y.dtype)
            G = geo.g // geo.q
            wq = _block_diag_q(w, geo).to(y.dtype).transpose(1, 2)
            yq = y.view(-1, G, geo.q * geo.o).transpose(0, 1)
            if torch.compiler.is_compiling():
                # Traced graphs are functional (in-place on a view is rewritten, and not always
                # viewable back); the compiler fuses the add itself.
                y = torch.baddbmm(yq, xq.transpose(0, 1), wq).transpose(0, 1).reshape(y.shape)
            else:
                yq.baddbmm_(xq.transpose(0, 1), wq)
        ctx.geoms = geoms
        ctx.save_for_backward(x, weight, masks, *ws)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, gy):
        x, weight, masks, *ws = ctx.saved_tensors
        need = ctx.needs_input_grad
        n_samples, (out, in_) = x.shape[0], weight.shape
        ct = gy.dtype
        gy2, x2 = gy.reshape(-1, out), x.reshape(-1, in_)
        gx = gw0 = gb = None
        if need[0]:
            gx = gy2 @ weight.to(ct)
        if need[1]:
            gw0 = (gy2.T @ x2.to(ct)).to(weight.dtype)
        if need[2]:
            gb = gy2.sum(0).to(weight.dtype)
        gws = []
        for i, (geo, m, w) in enumerate(zip(ctx.geoms, masks, ws, strict=True)):
            G, q = geo.g // geo.q, geo.q
            if need[5 + i]:
                xq = _masked_blocks(x2, m, geo, n_samples, ct)
                gws.append(_block_grad(gy2, xq, geo).to(w.dtype))
            else:
                gws.append(None)
            if gx is not None:  # dx += m * P^T(BD^T dy), added through a view of dx
                t = torch.bmm(
                    gy2.view(-1, G, q * geo.o).transpose(0, 1), _block_diag_q(w, geo).to(ct)
                ).transpose(0, 1)  # (N, G, q*c), blocks of the reordered input
                mrow = m.to(ct).view(n_samples, 1, 1, 1)
                if geo.shuffle:  # x'.view(c, g) is x.view(g, c) transposed
                    t = t.reshape(n_samples, -1, geo.c, geo.g)
                    dst = gx.view(n_samples, -1, geo.g, geo.c).transpose(2, 3)
                else:
                    t = t.reshape(n_samples, -1, G, q * geo.c)
                    dst = gx.view(n_samples, -1, G, q * geo.c)
                if torch.compiler.is_compiling():  # functional, as in forward
                    gx = torch.addcmul(dst, t, mrow)
                    gx = (gx.transpose(2, 3) if geo.shuffle else gx).reshape(-1, in_)
                else:
                    dst.addcmul_(t, mrow)
        if gx is not None:
            gx = gx.view(x.shape).to(x.dtype)
        return gx, gw0, gb, None, None, *gws


def _masked_blocks(x2: Tensor, m: Tensor, geo: _Geometry, n_samples: int, dtype) -> Tensor:
    """``(N, g/q, q*c)``: the (reordered) input scaled by its sample's mask, ``q`` blocks a row."""
    xm = (x2.view(n_samples, -1, x2.shape[-1]) * m.to(dtype).view(-1, 1, 1)).to(dtype)
    return _blocks(xm.view(x2.shape), geo).reshape(x2.shape[0], geo.g // geo.q, -1)


class ConsolidatorLinear(nn.Module):
    """A frozen ``nn.Linear`` plus grouped-connection branches.

    ``weight`` and ``bias`` are the wrapped layer's own parameters, kept under the same names, so
    the adapted model's state dict uses the plain backbone's keys (plus ``branches.N``).
    """

    def __init__(self, base: nn.Linear, config: ConsolidatorConfig, name: str = "layer"):
        super().__init__()
        out, in_ = base.weight.shape
        if config.branches is None:
            raise BadInput("choose the branches (ConsolidatorConfig.for_model) before wrapping")
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
        # Everything structural is fixed here (python ints), so a forward builds no index tensors
        # and torch.compile sees constants.
        self.geoms = tuple(
            _Geometry.of(b.g, out // b.g, in_ // b.g, b.shuffle) for b in self.structure
        )
        self.drop_path = float(config.drop_path)
        self.reset_branches()

    @torch.no_grad()
    def reset_branches(self, bound: float = 1e-3) -> None:
        """Small, not zero (the paper's init): uniform in ``[-bound, bound]``."""
        for w in self.branches:
            w.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.drop_path > 0):
            # The merged form whenever all samples share the weights: measured faster than the
            # masked form with an all-ones mask (bench/consolidator_layer.py, dp 0 vs dp 0.2 rows),
            # since the branches add no pass over the activations at all.
            return _Merged.apply(x, self.weight, self.bias, self.geoms, *self.branches)
        # Per-sample DropPath on each branch's output (timm's rule: a kept branch is scaled by
        # 1/keep): one uniform per sample and branch, from the global generator, in branch order.
        keep = 1.0 - self.drop_path
        draws = torch.rand(len(self.geoms), x.shape[0], device=x.device)
        masks = (draws >= self.drop_path).to(torch.float32) / keep
        return _Masked.apply(x, self.weight, self.bias, masks, self.geoms, *self.branches)

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
