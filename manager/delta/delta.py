"""``Delta``: a task's consolidated weight change, and its one-file safetensors format.

File layout (format version 1), one safetensors file:

* tensors ``layers.<param>.<part>``: per adapted weight ``<param>`` (e.g.
  ``blocks.0.attn.qkv.weight``) its kind's parts. Kinds: ``consolidator`` -> ``values`` (1-D, the
  union support's values in plan order, see ``structure.py``; no index arrays); ``dense`` ->
  ``values`` (out x in);
  ``lora`` -> ``A`` (r x in), ``B`` (out x r), with any scaling folded into ``B``.
* tensors ``whole.<param>``: tensors stored whole and *set* on apply (biases, LayerNorms, head).
* ``__metadata__`` (string values): ``format`` = ``mgr-delta``, ``format_version`` = ``1``,
  ``method``, ``backbone``, ``backbone_hash``, ``dtype`` (e.g. ``float32``), ``num_classes``, and
  ``layers``: JSON ``{param: {"kind": ..., "shape": [out, in], ...kind fields}}`` where the
  consolidator kind adds ``"branches": [[g, shuffle], ...]``.

Every tensor is stored in ``dtype``; applying computes ``W0 + values.to(W0.dtype)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from manager.delta.structure import Structure, normalize, support_numel, union_plan
from manager.errors import Corrupt, MgrError

FORMAT = "mgr-delta"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_REQUIRED_META = (
    "format",
    "format_version",
    "method",
    "backbone",
    "backbone_hash",
    "dtype",
    "num_classes",
    "layers",
)


def dtype_name(dtype: torch.dtype) -> str:
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    raise MgrError(f"unsupported delta dtype {dtype}; use one of {', '.join(DTYPES)}")


def _shape(spec: dict, where: str) -> tuple[int, int]:
    shape = spec.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) for d in shape)):
        raise Corrupt(f"{where}: bad or missing shape {shape!r}")
    return shape[0], shape[1]


@dataclass
class ConsolidatorLayer:
    """Values of ``dW`` on the union of the branches' supports (positions follow from structure)."""

    kind: ClassVar[str] = "consolidator"
    shape: tuple[int, int]
    branches: Structure
    values: Tensor

    def __post_init__(self) -> None:
        # Hashable forms: the support plans are cached by (shape, structure).
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        self.branches = normalize(self.branches)

    def tensors(self) -> dict[str, Tensor]:
        return {"values": self.values}

    def spec(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "branches": [[g, s] for g, s in self.branches]}

    @classmethod
    def from_parts(cls, spec: dict, tensors: dict[str, Tensor], where: str) -> ConsolidatorLayer:
        shape = _shape(spec, where)
        try:
            branches = normalize(spec["branches"])
        except (KeyError, TypeError, ValueError):
            raise Corrupt(f"{where}: bad or missing branches") from None
        if not branches:
            raise Corrupt(f"{where}: no branches")
        union_plan(shape, branches)  # raises a clear error for a g that does not divide
        values = _only(tensors, ("values",), where)["values"]
        expected = support_numel(shape, branches)
        if values.dim() != 1 or values.numel() != expected:
            raise Corrupt(
                f"{where}: {values.numel()} stored values, but structure "
                f"{branches} on {shape[0]}x{shape[1]} has a support of {expected}"
            )
        return cls(shape, branches, values)


@dataclass
class DenseLayer:
    """A full ``dW`` (out x in): for methods without structure."""

    kind: ClassVar[str] = "dense"
    shape: tuple[int, int]
    values: Tensor

    def __post_init__(self) -> None:
        self.shape = (int(self.shape[0]), int(self.shape[1]))

    def tensors(self) -> dict[str, Tensor]:
        return {"values": self.values}

    def spec(self) -> dict[str, Any]:
        return {"shape": list(self.shape)}

    @classmethod
    def from_parts(cls, spec: dict, tensors: dict[str, Tensor], where: str) -> DenseLayer:
        shape = _shape(spec, where)
        values = _only(tensors, ("values",), where)["values"]
        if tuple(values.shape) != shape:
            raise Corrupt(f"{where}: values of shape {tuple(values.shape)}, expected {shape}")
        return cls(shape, values)


@dataclass
class LoRALayer:
    """``dW = B @ A`` (any scaling folded into ``B``)."""

    kind: ClassVar[str] = "lora"
    shape: tuple[int, int]
    A: Tensor
    B: Tensor

    def __post_init__(self) -> None:
        self.shape = (int(self.shape[0]), int(self.shape[1]))

    def tensors(self) -> dict[str, Tensor]:
        return {"A": self.A, "B": self.B}

    def spec(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "rank": int(self.A.shape[0])}

    @classmethod
    def from_parts(cls, spec: dict, tensors: dict[str, Tensor], where: str) -> LoRALayer:
        out, in_ = _shape(spec, where)
        t = _only(tensors, ("A", "B"), where)
        r = spec.get("rank")
        if t["A"].shape != (r, in_) or t["B"].shape != (out, r):
            raise Corrupt(
                f"{where}: A {tuple(t['A'].shape)} / B {tuple(t['B'].shape)} "
                f"do not match shape {out}x{in_} rank {r}"
            )
        return cls((out, in_), t["A"], t["B"])


LayerDelta = ConsolidatorLayer | DenseLayer | LoRALayer
LAYER_KINDS: dict[str, type] = {k.kind: k for k in (ConsolidatorLayer, DenseLayer, LoRALayer)}


def _only(tensors: dict[str, Tensor], parts: tuple[str, ...], where: str) -> dict[str, Tensor]:
    missing = [p for p in parts if p not in tensors]
    extra = sorted(set(tensors) - set(parts))
    if missing or extra:
        raise Corrupt(f"{where}: missing tensors {missing}, unexpected {extra}")
    return tensors


@dataclass
class DeltaMeta:
    method: str
    backbone: str
    backbone_hash: str
    dtype: torch.dtype = torch.float32
    num_classes: int = 0
    format_version: int = FORMAT_VERSION


@dataclass
class Delta:
    """Per-layer structured deltas (keyed by weight name) plus tensors stored whole."""

    layers: dict[str, LayerDelta]
    whole: dict[str, Tensor]
    meta: DeltaMeta
    extra: dict[str, str] = field(default_factory=dict)  # unknown metadata kept on round trip

    def numel(self) -> int:
        """Stored values, all tensors."""
        n = sum(t.numel() for lay in self.layers.values() for t in lay.tensors().values())
        return n + sum(t.numel() for t in self.whole.values())

    def nonfinite(self) -> list[str]:
        """Names of the stored tensors holding a NaN or an infinity (empty: the delta is finite).

        Checked in the storage dtype, so a value that overflows on the cast counts too. A delta
        with any is never written, recorded or applied.
        """
        tensors, _ = self.state()
        return sorted(k for k, t in tensors.items() if not bool(torch.isfinite(t).all()))

    def state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """The safetensors tensors and metadata of this delta."""
        tensors: dict[str, Tensor] = {}
        layers = {}
        for name, lay in self.layers.items():
            layers[name] = {"kind": lay.kind, **lay.spec()}
            for part, t in lay.tensors().items():
                tensors[f"layers.{name}.{part}"] = t
        for name, t in self.whole.items():
            tensors[f"whole.{name}"] = t
        dt = self.meta.dtype
        tensors = {k: v.detach().to("cpu", dt).contiguous() for k, v in tensors.items()}
        meta = {
            **self.extra,
            "format": FORMAT,
            "format_version": str(self.meta.format_version),
            "method": self.meta.method,
            "backbone": self.meta.backbone,
            "backbone_hash": self.meta.backbone_hash,
            "dtype": dtype_name(dt),
            "num_classes": str(self.meta.num_classes),
            "layers": json.dumps(layers, sort_keys=True, separators=(",", ":")),
        }
        return tensors, meta

    def to_bytes(self) -> bytes:
        tensors, meta = self.state()
        return st_save(tensors, metadata=meta)

    def apply_to(self, model: torch.nn.Module) -> torch.nn.Module:
        """Merge this delta into ``model``'s weights in place; returns ``model``.

        ``model`` is the plain backbone the delta was trained from (W0), with a head of
        ``meta.num_classes`` classes: each layer becomes ``W0 + dW`` on its support by exact writes
        (``manager.delta.apply``), whole tensors (biases, norms, head) are set. Shapes are checked
        before anything is written; a mismatch is one ``MgrError`` line and the model is unchanged.
        """
        from manager.delta.apply import apply

        live = model.state_dict()  # shares storage with the parameters: written in place
        base = {n: live[n].clone() for n in self.layers if n in live}
        apply(live, base, self)
        return model

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Delta:
        """Read and validate a delta file; every problem is a clear ``MgrError``."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise MgrError(f"cannot read delta {path}: {e.strerror or e}") from None
        return cls.from_bytes(data, where=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "delta") -> Delta:
        try:
            tensors = st_load(data)
            meta = _read_metadata(data)
        except (SafetensorError, ValueError, OSError) as e:
            raise Corrupt(f"{where}: not a valid safetensors file ({e})") from None
        return cls.from_state(tensors, meta, where)

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], meta: dict[str, str], where: str) -> Delta:
        if meta.get("format") != FORMAT:
            raise Corrupt(f"{where}: not an mgr delta (format {meta.get('format')!r})")
        missing = [k for k in _REQUIRED_META if k not in meta]
        if missing:
            raise Corrupt(f"{where}: metadata lacks {', '.join(missing)}")
        version = meta["format_version"]
        if version != str(FORMAT_VERSION):
            raise Corrupt(
                f"{where}: delta format version {version}; this mgr reads version "
                f"{FORMAT_VERSION} (a newer mgr may have written it)"
            )
        if meta["dtype"] not in DTYPES:
            raise Corrupt(f"{where}: unsupported dtype {meta['dtype']!r}")
        dtype = DTYPES[meta["dtype"]]
        try:
            specs = json.loads(meta["layers"])
            num_classes = int(meta["num_classes"])
        except ValueError:
            raise Corrupt(f"{where}: unreadable layers/num_classes metadata") from None
        if not isinstance(specs, dict):
            raise Corrupt(f"{where}: the layers metadata is not a mapping")

        parts: dict[str, dict[str, Tensor]] = {name: {} for name in specs}
        whole: dict[str, Tensor] = {}
        for key, t in tensors.items():
            if t.dtype != dtype:
                raise Corrupt(f"{where}: tensor {key} is {t.dtype}, the file says {meta['dtype']}")
            if key.startswith("whole."):
                whole[key[len("whole.") :]] = t
                continue
            name, _, part = key.removeprefix("layers.").rpartition(".")
            if not key.startswith("layers.") or name not in parts:
                raise Corrupt(f"{where}: unexpected tensor {key}")
            parts[name][part] = t
        layers = {}
        for name, spec in specs.items():
            kind = spec.get("kind") if isinstance(spec, dict) else None
            if kind not in LAYER_KINDS:
                raise Corrupt(f"{where}: layer {name} has unknown kind {kind!r}")
            layers[name] = LAYER_KINDS[kind].from_parts(spec, parts[name], f"{where}: {name}")
        known = set(_REQUIRED_META)
        return cls(
            layers,
            whole,
            DeltaMeta(meta["method"], meta["backbone"], meta["backbone_hash"], dtype, num_classes),
            extra={k: v for k, v in meta.items() if k not in known},
        )


def _read_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("bad __metadata__")
    return meta
