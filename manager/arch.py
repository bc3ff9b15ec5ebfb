"""A backbone spec's architecture without its weights: headless tensor shapes, heads, counts.

Checking a weights file against a spec, and accounting storage, need only the shapes of the
spec's headless model. timm gives them by building the model on the meta device, which costs
seconds of CPU for importing torch and timm alone, so they are looked up first:

1. ``archs.json`` beside this module: the default backbone and its kin, as timm built them
   (``tests/test_arch.py`` checks it against timm; ``python tests/make_archs.py`` rewrites it);
2. ``<home>/cache/archs/``: every other spec, once timm has built it in this home (an entry
   made by another timm version is built again);
3. timm, on the meta device (torch and timm are imported here only).

Reading a ``.safetensors`` header goes through safetensors' own reader, tensors untouched.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from manager.errors import BadInput, MgrError
from manager.specs import validate_backbone_spec
from manager.store.fs import Store

if TYPE_CHECKING:
    from torch import nn

DEFAULT_HEADS = ("head", "head_dist")  # timm ViT/DeiT classifier names
SHIPPED = Path(__file__).with_name("archs.json")
# Width of the timm ViT/DeiT families by name, to find architectures a weights file fits.
_WIDTHS = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Arch:
    """The headless model of a spec: its state-dict shapes, head names and sizes."""

    tensors: Shapes
    heads: tuple[str, ...]
    params: int  # parameters (not buffers) of the headless model
    num_features: int

    def to_json(self) -> dict[str, Any]:
        return {
            "tensors": {k: list(v) for k, v in self.tensors.items()},
            "heads": list(self.heads),
            "params": self.params,
            "num_features": self.num_features,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Arch:
        return cls(
            tensors={k: tuple(int(n) for n in v) for k, v in d["tensors"].items()},
            heads=tuple(d["heads"]),
            params=int(d["params"]),
            num_features=int(d["num_features"]),
        )


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"deit_tiny_patch16_224:img_size=32"`` -> ``("deit_tiny_patch16_224", {"img_size": 32})``.

    Raises `BadInput` for a name timm does not know, with the closest known names.
    """
    import timm

    # Also for a spec read from the catalog: only allow-listed options reach timm.create_model.
    name, kwargs = validate_backbone_spec(spec)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise BadInput(f"unknown timm model {name!r}{hint}")
    return name, kwargs


def meta_model(spec: str) -> nn.Module:
    """The headless model of ``spec`` on the meta device: shapes and config, no memory."""
    import timm
    import torch

    name, kwargs = parse_spec(spec)
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as e:  # an option the model does not take
        raise MgrError(f"backbone {spec!r}: {e}") from None
    except Exception as e:  # timm raises RuntimeError/ValueError/AssertionError/... too
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MgrError(f"backbone {spec!r} cannot be built by timm: {msg}") from None


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The classifier module names of a timm model (``pretrained_cfg["classifier"]``)."""
    heads = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or DEFAULT_HEADS
    return (heads,) if isinstance(heads, str) else tuple(heads)


def is_head(key: str, heads: Iterable[str]) -> bool:
    return any(key == h or key.startswith(h + ".") for h in heads)


def arch_of_model(model: nn.Module) -> Arch:
    """The `Arch` of a built (headless) model."""
    heads = head_names(model)
    tensors = {k: tuple(v.shape) for k, v in model.state_dict().items() if not is_head(k, heads)}
    params = sum(p.numel() for p in model.parameters())
    return Arch(tensors, heads, int(params), int(getattr(model, "num_features", 0)))


@cache
def shipped() -> dict[str, Arch]:
    """The architectures that ship with mgr, by spec."""
    return {k: Arch.from_json(v) for k, v in json.loads(SHIPPED.read_text()).items()}


def _timm_version() -> str | None:
    """The installed timm's version, from its metadata (timm itself is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("timm")
    except PackageNotFoundError:
        return None


def _cache_file(store: Store, spec: str) -> Path:
    # A spec holds ':', ',' and '=': a digest names the file on every filesystem.
    return store.cache / "archs" / f"{hashlib.sha256(spec.encode()).hexdigest()[:32]}.json"


def arch(spec: str, store: Store | None = None) -> Arch:
    """The headless architecture of ``spec`` (see the module's docstring for where it comes
    from); `MgrError` in one line if timm cannot build it."""
    if spec in shipped():
        return shipped()[spec]
    path = _cache_file(store, spec) if store is not None else None
    key = {"spec": spec, "timm": _timm_version()}
    if path is not None and path.is_file():
        try:
            d = json.loads(path.read_text())
            if {k: d.get(k) for k in key} == key:
                return Arch.from_json(d)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged cache entry is only a cache: rebuilt below
    found = arch_of_model(meta_model(spec))
    if store is not None and path is not None:
        # Only a cache: a home that cannot hold it (read-only, full) still gets the answer.
        with contextlib.suppress(OSError, MgrError):
            store.write_bytes(path, json.dumps({**key, **found.to_json()}).encode())
    return found


def header_shapes(path: Path) -> Shapes:
    """Tensor names and shapes from a ``.safetensors`` header (safetensors' reader; no tensor
    is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as e:
        raise BadInput(f"{path}: not a safetensors file ({e})") from None


def misfit(
    own: Mapping[str, tuple[int, ...]], shapes: Mapping[str, tuple[int, ...]]
) -> tuple[str, str] | None:
    """The first tensor that does not fit and why, or None. A position table for another
    image size fits (it is resampled on load, as timm does)."""
    for k, want in own.items():
        got = shapes.get(k)
        if got is None:
            return k, "missing from the file"
        if got != want and not (k == "pos_embed" and got[-1:] == want[-1:]):
            return k, f"file {got} vs model {want}"
    extra = next((k for k in shapes if k not in own), None)
    return (extra, "not in the model") if extra is not None else None


def check_weights_header(path: Path, spec: str, store: Store | None = None) -> None:
    """Refuse, in one line, a ``.safetensors`` weights file whose tensor names and shapes do not
    fit ``spec`` (its header only), naming the timm architectures that fit. Other formats are
    checked when the backbone is first built."""
    if path.suffix.lower() != ".safetensors":
        return
    shapes = header_shapes(path)
    if shapes and all(k.startswith("module.") for k in shapes):
        shapes = {k[len("module.") :]: v for k, v in shapes.items()}
    own = arch(spec, store)
    shapes = {k: v for k, v in shapes.items() if not is_head(k, own.heads)}
    bad = misfit(own.tensors, shapes)
    if bad is None:
        return
    fit = fitting_architectures(shapes)
    fits = f"; it fits {', '.join(fit)}" if fit else "; no timm ViT/DeiT architecture fits it"
    raise BadInput(
        f"{path.name} does not fit backbone {spec}: {bad[0]} {bad[1]}{fits}",
        hint="choose one with --backbone" if fit else None,
    )


def fitting_architectures(shapes: Mapping[str, tuple[int, ...]], limit: int = 2) -> list[str]:
    """timm ViT/DeiT specs whose headless shapes fit ``shapes`` (a depth other than the
    architecture's is given as ``:depth=N``), found from the width and patch size."""
    import timm

    cls = shapes.get("cls_token") or shapes.get("pos_embed")
    proj = shapes.get("patch_embed.proj.weight")
    if cls is None or proj is None or len(proj) != 4:
        return []
    width, patch = cls[-1], proj[-1]
    family = _WIDTHS.get(width)
    if family is None:
        return []
    depth = 1 + max(
        (
            int(k.split(".")[1])
            for k in shapes
            if k.startswith("blocks.") and k.split(".")[1].isdigit()
        ),
        default=-1,
    )
    names = [
        n
        for n in timm.list_models(f"*_{family}_patch{patch}_*")
        if n.startswith(("deit_", "vit_")) and "distilled" not in n
    ]
    out = []
    for name in sorted(names, key=lambda n: (not n.startswith("deit_"), len(n), n)):
        try:
            model = meta_model(name)
        except Exception:  # an architecture that needs other arguments
            continue
        spec = name
        if len(getattr(model, "blocks", [])) != depth:
            spec = f"{name}:depth={depth}"
            try:
                model = meta_model(spec)
            except Exception:
                continue
        if misfit(arch_of_model(model).tensors, shapes) is None:
            out.append(spec)
        if len(out) >= limit:
            break
    return out
