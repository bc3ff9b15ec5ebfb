"""Rewrite ``manager/archs.json``, the architectures mgr ships, from timm (run after a timm
upgrade changes them; ``tests/test_arch.py`` says when): ``python tests/make_archs.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manager.arch import SHIPPED, arch_of_model, meta_model  # noqa: E402

# The default backbone and its kin: what `mgr task add` and `mgr storage` meet most.
SPECS = (
    "vit_base_patch16_224",
    "vit_large_patch16_224",
    "deit_small_patch16_224",
    "deit_tiny_patch16_224",
)


def table() -> dict[str, dict]:
    return {spec: arch_of_model(meta_model(spec)).to_json() for spec in SPECS}


def render(data: dict[str, dict]) -> str:
    """One tensor a line, so a diff after a timm upgrade reads as what changed."""
    out = ["{"]
    for i, (spec, d) in enumerate(data.items()):
        tensors = ",\n".join(
            f"   {json.dumps(k)}: {json.dumps(v)}" for k, v in d["tensors"].items()
        )
        rest = {k: v for k, v in d.items() if k != "tensors"}
        head = json.dumps(rest)[1:-1]
        comma = "," if i < len(data) - 1 else ""
        out.append(f' {json.dumps(spec)}: {{{head}, "tensors": {{\n{tensors}\n }}}}{comma}')
    return "\n".join(out) + "\n}\n"


if __name__ == "__main__":
    SHIPPED.write_text(render(table()))
    print(f"wrote {SHIPPED}")
