"""timm backbones by spec ``name[:key=value,...]``, weights from a file, the hub or a seeded init.

The backbone is everything but the classification head: each task brings a new head, so head
tensors in a checkpoint are dropped and never enter the content hash.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from manager.arch import DEFAULT_HEADS, head_names, is_head, meta_model, parse_spec
from manager.digest import tensors_digest
from manager.errors import BadInput, Corrupt, MgrError, NotFound
from manager.store.fs import not_regular

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SEED = 0  # `--weights random` and every new head are initialised under this seed
# One request decides whether the hub is reachable; a dead network fails within this time.
HUB_PROBE_TIMEOUT_S = 5.0
# What the CLI adds to a hub failure (MgrError.hint); the library's own message says "weights".
NO_HUB_HINT = "--weights PATH (.safetensors, .npz, .pth) or --weights random"
NO_HUB = "give the weights (a file, or 'random')"


def _create(spec: str, pretrained: bool = False) -> nn.Module:
    """The headless model; seeded, so `random` weights are the same for the same spec."""
    name, kwargs = parse_spec(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
        except TypeError as e:  # an option the model does not take
            raise MgrError(f"backbone {spec!r}: {e}") from None


def new_head(model: nn.Module, num_classes: int) -> None:
    """Give ``model`` a new seeded head: truncated normal std 0.02, zero bias (0 = no head).

    The head is made apart from the backbone because timm's init order would otherwise make
    the random backbone depend on the number of classes.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + 1)
        model.reset_classifier(num_classes)
        for name in head_names(model):
            try:
                head = model.get_submodule(name)
            except AttributeError:
                continue
            if isinstance(head, nn.Linear):
                nn.init.trunc_normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    # huggingface_hub reads this flag on every request, so setting it here means "cache only".
    import huggingface_hub.constants as hf

    previous = hf.HF_HUB_OFFLINE
    hf.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf.HF_HUB_OFFLINE = previous


def _hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None if the hub answers one request (any status) within `timeout` s, else why not."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:  # the hub's own client: its proxy and certificate settings apply
        get_session().head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
    except Exception as e:
        return _first_line(e)
    return None


def _pretrained(spec: str) -> nn.Module:
    """The pretrained model: from the local cache, else from the hub after one reachability probe.

    huggingface_hub retries a failed request five times with back-off (about a minute with no
    network); the cache is tried first without any request, then a single short probe decides
    whether a download is worth trying at all. ``HF_HUB_OFFLINE=1`` makes no request.
    """
    import huggingface_hub.constants as hf

    try:
        with _hub_offline():
            return _create(spec, pretrained=True)
    except MgrError:
        raise
    except OSError:  # not in the local cache (huggingface_hub's and torch.hub's misses)
        pass
    except Exception as e:  # in the cache but unusable: the hub would not change that
        raise MgrError(
            f"cannot load the pretrained weights of {spec!r} ({_first_line(e)}); {NO_HUB}",
            hint=NO_HUB_HINT,
        ) from None
    if hf.HF_HUB_OFFLINE:
        raise MgrError(
            f"the pretrained weights of {spec!r} are not in the local Hugging Face cache and "
            f"HF_HUB_OFFLINE is set; {NO_HUB}",
            hint=NO_HUB_HINT,
        )
    why = _hub_unreachable()
    if why is not None:
        raise MgrError(
            f"cannot reach the Hugging Face hub at {hf.ENDPOINT} ({why}) for the pretrained "
            f"weights of {spec!r}; offline? {NO_HUB}",
            hint=NO_HUB_HINT,
        )
    try:
        return _create(spec, pretrained=True)
    except MgrError:
        raise
    except Exception as e:  # hub, network and cache errors all mean the same to the user
        raise MgrError(
            f"cannot get pretrained weights for {spec!r} ({_first_line(e)}); {NO_HUB}",
            hint=NO_HUB_HINT,
        ) from None


def build_backbone(
    spec: str, weights: str | os.PathLike[str] | None, num_classes: int = 0
) -> nn.Module:
    """A timm model in eval mode with the backbone weights from ``weights``.

    ``weights``: None = pretrained from the hub; ``"random"`` = seeded random init; else a path
    to ``.safetensors``, ``.npz`` (timm state dict or original JAX ViT) or ``.pth/.pt/.bin``
    (read with ``weights_only=True``). The head (``num_classes`` outputs, 0 = none) is new.
    """
    if weights is None:
        model = _pretrained(spec)
    else:
        model = _create(spec)
        if str(weights) != "random":
            load_weights(model, Path(weights), spec)
    new_head(model, num_classes)
    return model.eval()


def read_state_file(path: Path) -> dict[str, torch.Tensor] | None:
    """Tensors of a weights file by name; None for an original JAX ``.npz`` (timm loads those)."""
    kind = not_regular(path)
    if kind is not None:
        raise MgrError(f"weights {path} is {kind}, not a regular file")
    if not path.is_file():
        raise NotFound(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            return safetensors.torch.load_file(path, device="cpu")
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                # timm/PyTorch names use dots; JAX checkpoints use slash-separated scopes.
                if any("/" in k for k in npz.files):
                    return None
                return {k: torch.from_numpy(npz[k].copy()) for k in npz.files}
        if suffix in TORCH_SUFFIXES:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise BadInput(f"{path}: unknown weights format (use .safetensors, .npz or .pth)")
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0]
        raise MgrError(
            f"{path}: refused: not a plain tensor checkpoint (read with weights_only=True: {first})"
        ) from None
    except MgrError:
        raise
    except Exception as e:  # truncated or corrupt files raise many kinds of errors
        raise MgrError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    while isinstance(obj, Mapping) and ("model" in obj or "state_dict" in obj):
        obj = obj["model"] if "model" in obj else obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise MgrError(f"{path}: not a state dict (a {type(obj).__name__})")
    bad = next((k for k, v in obj.items() if not torch.is_tensor(v)), None)
    if bad is not None:
        raise MgrError(f"{path}: not a state dict of tensors (entry {bad!r})")
    return dict(obj)


def load_weights(model: nn.Module, path: Path, spec: str = "") -> None:
    """Load a weights file into ``model``'s backbone; every backbone tensor must match."""
    state = read_state_file(path)
    heads = head_names(model)
    if state is None:
        _load_jax_npz(model, path)
        return
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not is_head(k, heads)}
    own = backbone_state(model)
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in own and pos.shape != own["pos_embed"].shape:
        # A checkpoint for another image size: resample the position grid as timm does.
        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        if pos.shape[-1] == own["pos_embed"].shape[-1]:
            state["pos_embed"] = resample_abs_pos_embed(
                pos, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} of another shape ({k}: file {tuple(state[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        raise MgrError(f"{path} does not fit {spec or 'the model'}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)  # only the head is left out, by design


def spec_img_size(spec: str) -> int:
    """The input size a spec's model takes (its ``img_size``, else the architecture's)."""
    model = meta_model(spec)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[1:]
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)


def _load_jax_npz(model: nn.Module, path: Path) -> None:
    # The model is headless here, so timm's loader takes the backbone only.
    if not hasattr(model, "load_pretrained"):
        raise MgrError(f"{path}: JAX .npz checkpoints load only into timm ViTs")
    try:
        model.load_pretrained(str(path))
    except (KeyError, ValueError, RuntimeError) as e:
        raise MgrError(f"{path}: not a JAX ViT checkpoint for this model ({e})") from None


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without the classification head."""
    heads = head_names(model)
    return {k: v for k, v in model.state_dict().items() if not is_head(k, heads)}


def content_hash(state: Mapping[str, torch.Tensor], heads: Iterable[str] = DEFAULT_HEADS) -> str:
    """sha256 hex over names, dtypes, shapes and bytes of the backbone tensors (head excluded).

    Tensors are hashed in name order as they are in memory, so the same weights give the same
    hash whichever file format they came from.
    """
    heads = tuple(heads)
    return tensors_digest((n for n in state if not is_head(n, heads)), state.__getitem__)


def param_count(model: nn.Module) -> int:
    """Parameters of the backbone (the head excluded)."""
    heads = head_names(model)
    return sum(p.numel() for n, p in model.named_parameters() if not is_head(n, heads))


def backbone_file_bytes(model: nn.Module) -> tuple[bytes, str]:
    """The backbone tensors (no head) as safetensors bytes, and their content hash.

    The caller writes them (``Store.write_bytes``): this module never touches the home.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in backbone_state(model).items()}
    digest = content_hash(state)
    meta = {"format": "mgr-backbone", "content_hash": digest}
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if arch:
        meta["architecture"] = str(arch)
    return safetensors.torch.save(state, metadata=meta), digest


def load_backbone_file(
    path: str | os.PathLike[str],
    spec: str,
    num_classes: int = 0,
    expected_hash: str | None = None,
) -> nn.Module:
    """Re-create the model of ``spec`` from a file written by `save_backbone`, hash-checked."""
    model = build_backbone(spec, Path(path), num_classes)
    if expected_hash is not None:
        got = content_hash(backbone_state(model))
        if got != expected_hash:
            raise Corrupt(
                f"{path}: backbone content hash {got[:12]} does not match the catalog's "
                f"{expected_hash[:12]} (file changed or corrupt)"
            )
    return model
