"""Model surgery on timm ViTs: the target layers, injection, freezing, unwrapping.

Targets are found by structure, not by class: any model with ``blocks`` whose items have
``attn.qkv``, ``attn.proj``, ``mlp.fc1`` and ``mlp.fc2`` (ViT, DeiT, and the like).

Parameter groups are named so every method is a set of groups (``METHOD_GROUPS``):
``branches`` (consolidator weights), ``biases`` (the target layers' biases in every block),
``norms`` (every LayerNorm), ``head`` (the classifier), ``all`` (everything).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor, nn

from manager.adapters.config import (
    TARGETS,
    AdapterConfig,
    BitFitConfig,
    ConsolidatorConfig,
    FullConfig,
    LinearProbeConfig,
    LoraConfig,
)
from manager.adapters.consolidator import ConsolidatorLinear
from manager.adapters.lora import LoRALinear
from manager.errors import BadInput, MgrError


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def target_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every target layer (plain or already wrapped), as ``(name, module)``, block by block."""
    blocks = getattr(model, "blocks", None)
    found = []
    if isinstance(blocks, Iterable) and isinstance(blocks, nn.Module):
        for i, block in enumerate(blocks):
            mods = [_get(block, t) for t in TARGETS]
            if all(m is not None for m in mods):
                found += [(f"blocks.{i}.{t}", m) for t, m in zip(TARGETS, mods, strict=True)]
    if not found:
        raise MgrError(
            f"{type(model).__name__} has no ViT blocks with attn.qkv, attn.proj, mlp.fc1, mlp.fc2: "
            "only timm VisionTransformer-like backbones can be adapted"
        )
    return found


def target_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every ``blocks.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2}`` that is a plain ``nn.Linear``."""
    return [(n, m) for n, m in target_modules(model) if type(m) is nn.Linear]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)


def default_groups(model: nn.Module) -> str:
    """The paper's released ratio, two input channels per group: g=384 on ViT-B, 96 on DeiT-tiny
    (what ``ConsolidatorConfig(branches=None)`` and ``mgr train`` without ``--groups`` use)."""
    dims = {d for _, m in target_modules(model) for d in (m.in_features, m.out_features)}
    return str(min(dims) // 2)


def inject_consolidator(model: nn.Module, config: ConsolidatorConfig) -> nn.Module:
    """Replace every target linear by a ``ConsolidatorLinear`` (in place); returns ``model``.
    Branches left None in ``config`` are the model's default (``default_groups``)."""
    config = config.for_model(model)
    targets = target_modules(model)
    if any(type(m) is not nn.Linear for _, m in targets):
        raise MgrError("the model is already adapted: its target layers are not plain nn.Linear")
    # Check every layer first so a bad g leaves the model untouched.
    wrapped = [(n, ConsolidatorLinear(m, config, name=n)) for n, m in targets]
    for name, module in wrapped:
        _set(model, name, module)
    return model


def consolidator_layers(model: nn.Module) -> list[tuple[str, ConsolidatorLinear]]:
    """The adapted layers, as ``(name, module)``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ConsolidatorLinear)]


def unwrap(model: nn.Module, *, merge: bool = True) -> nn.Module:
    """Turn every ``ConsolidatorLinear`` back into ``nn.Linear`` (in place), weights ``W0 + dW``
    when ``merge`` (else ``W0``: the branches are dropped). Returns ``model``."""
    for name, module in consolidator_layers(model):
        _set(model, name, module.to_linear(merge=merge))
    return model


# Parameter groups, by name. Names are the model's own, which for ConsolidatorLinear are the plain
# backbone's (weight/bias keep their names), so they key deltas and state dicts alike.


def branch_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {
        f"{n}.branches.{i}": w
        for n, m in consolidator_layers(model)
        for i, w in enumerate(m.branches)
    }


def bias_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The target layers' biases (qkv, proj, fc1, fc2 of every block)."""
    out = {}
    for name, module in target_modules(model):
        for pname, p in module.named_parameters():
            if pname == "bias" or pname.endswith(".bias"):
                out[f"{name}.{pname}"] = p
    return out


def norm_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every LayerNorm's weight and bias (blocks' norm1/norm2, final norm, fc_norm, ...)."""
    return {
        f"{n}.{pn}" if n else pn: p
        for n, m in model.named_modules()
        if isinstance(m, nn.LayerNorm)
        for pn, p in m.named_parameters(recurse=False)
    }


def head_name(model: nn.Module) -> str | None:
    """The classifier's module name (``head`` for timm ViTs), or None."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else getattr(model, "head", None)
    if head is None:
        return None
    return next((n for n, m in model.named_modules() if m is head), None)


def head_params(model: nn.Module) -> dict[str, nn.Parameter]:
    name = head_name(model)
    if not name:
        return {}
    return {f"{name}.{pn}": p for pn, p in model.get_submodule(name).named_parameters()}


def all_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


PARAM_GROUPS: dict[str, Callable[[nn.Module], dict[str, nn.Parameter]]] = {
    "branches": branch_params,
    "biases": bias_params,
    "norms": norm_params,
    "head": head_params,
    "all": all_params,
}

# What each method trains (the trainer may extend this; LoRA adds its own group).
METHOD_GROUPS: dict[str, tuple[str, ...]] = {
    "consolidator": ("branches", "biases", "norms", "head"),
    "linear": ("head",),
    "bitfit": ("biases", "head"),
    "bitfit_ln": ("biases", "norms", "head"),
    "full": ("all",),
}


def select_params(model: nn.Module, groups: Iterable[str]) -> dict[str, nn.Parameter]:
    """The union of the named groups' parameters."""
    out: dict[str, nn.Parameter] = {}
    for g in groups:
        if g not in PARAM_GROUPS:
            raise MgrError(f"unknown parameter group {g!r}; known: {', '.join(PARAM_GROUPS)}")
        out.update(PARAM_GROUPS[g](model))
    return out


def mark_trainable(model: nn.Module, groups: Iterable[str]) -> dict[str, nn.Parameter]:
    """Freeze everything, then unfreeze exactly the named groups; returns the trainable params."""
    chosen = select_params(model, groups)
    ids = {id(p) for p in chosen.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return chosen


def delta_whole_params(model: nn.Module) -> dict[str, Tensor]:
    """What a consolidator delta stores whole: target biases, LayerNorms, head (plain names)."""
    return {n: p.detach() for n, p in select_params(model, ("biases", "norms", "head")).items()}


def inject_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Wrap ``config.target_modules`` of every block in ``LoRALinear`` of rank ``config.rank``
    and scale ``alpha / rank`` (in place); returns ``model``. Freezing is ``mark_lora``'s."""
    chosen = config.target_modules
    found = [(n, m) for n, m in target_modules(model) if n.split(".", 2)[2] in chosen]
    if any(type(m) is not nn.Linear for _, m in found):
        raise MgrError("the model is already adapted: its target layers are not plain nn.Linear")
    for name, module in found:
        _set(model, name, LoRALinear(module, r=config.rank, alpha=float(config.alpha)))
    return model


def mark_lora(model: nn.Module) -> dict[str, nn.Parameter]:
    """Freeze everything but the LoRA factors and the head; returns the trainable params."""
    chosen = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    chosen.update(head_params(model))
    ids = {id(p) for p in chosen.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return chosen


def inject(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """The method's surgery and freezing, in place: the method's layers injected (Consolidator,
    LoRA), then every tensor frozen but those the method trains. Returns ``model``.

    No check against the layer widths here (``manager.adapters.validate`` does that first)."""
    if isinstance(config, ConsolidatorConfig):
        inject_consolidator(model, config)
        mark_trainable(model, METHOD_GROUPS["consolidator"])
    elif isinstance(config, LoraConfig):
        inject_lora(model, config)
        mark_lora(model)
    elif isinstance(config, BitFitConfig | LinearProbeConfig | FullConfig):
        mark_trainable(model, METHOD_GROUPS[config.method])
    else:
        raise BadInput(
            "an adapter config is a ConsolidatorConfig, LoraConfig, BitFitConfig, "
            f"LinearProbeConfig or FullConfig, got {type(config).__name__}"
        )
    return model
