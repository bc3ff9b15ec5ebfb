"""The layout enforces its own rules: one module owns the filesystem, and imports only go down.

Both checks read the source (every import, lazy ones inside functions too), so a change that breaks
a rule fails here rather than in review.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "manager"
FS_OWNER = "manager/store/fs.py"

# The layers, top to bottom. A module may import modules of its own entry (``manager.catalog.x``
# may import ``manager.catalog.y``) and of lower layers only: two entries of one layer never
# know each other (``switch`` and ``train``, ``catalog`` and ``datasets``), so no exception list
# is needed.
LAYERS: list[tuple[str, ...]] = [
    ("manager.__main__",),
    ("manager.cli", "manager.api"),  # api: the Python API, over every layer below
    ("manager.serve", "manager.export"),
    ("manager.switch", "manager.train", "manager.report"),
    ("manager.registry",),  # spans catalog and store: recording, gc, backbone files
    ("manager.catalog", "manager.datasets", "manager.backbone"),
    ("manager.arch",),  # a spec's shapes without timm: shipped, cached, or built on meta
    ("manager.adapters",),
    ("manager.delta",),
    ("manager.store",),  # the filesystem's one owner, under everything that writes
    ("manager.home", "manager.units", "manager.names", "manager.specs", "manager.device",
     "manager.digest", "manager.progress"),
    ("manager.errors", "manager"),
    ("manager.lazy",),  # the PEP 562 helper every package facade uses
]  # fmt: skip

# Calls that write, rename or delete files. Only FS_OWNER may make them.
MUTATING_ATTRS = {
    "unlink", "rmdir", "rmtree", "write_bytes", "write_text", "rename", "touch", "save_file",
    "copyfile", "copy2", "copytree", "move", "symlink_to", "hardlink_to", "chmod",
}  # fmt: skip
MUTATING_OS = {"replace", "rename", "remove", "unlink", "rmdir", "open", "makedirs", "symlink"}
MKDIR_ALLOWED = {FS_OWNER, "manager/home.py"}  # the home creates its own root, nothing inside


def _modules() -> list[tuple[str, str, ast.AST]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        name = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        out.append((rel, name, ast.parse(path.read_text(), filename=rel)))
    return out


def _entry(module: str) -> tuple[int, str]:
    """The layer and the entry (the longest listed name) that ``module`` belongs to."""
    best = (len(LAYERS), "")
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > len(best[1]):
                best = (i, n)
    return best


def _imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parts = module.split(".")[: -node.level]
                base = ".".join([*parts, base] if base else parts)
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
            found.append((node.lineno, base))
    return [(ln, n) for ln, n in found if n == "manager" or n.startswith("manager.")]


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_imports_only_go_down() -> None:
    bad = []
    for rel, module, tree in _modules():
        layer, entry = _entry(module)
        for line, target in _imports(tree, module):
            if not _is_module(target):
                continue  # a name imported from a module; the module itself is checked
            t_layer, t_entry = _entry(target)
            if t_entry == entry or t_layer > layer:
                continue
            side = "a higher layer" if t_layer < layer else "a neighbour in its own layer"
            bad.append(f"{rel}:{line} imports {target} ({side})")
    assert not bad, "\n".join(bad)


def test_every_module_belongs_to_a_listed_layer() -> None:
    unlisted = [m for _rel, m, _t in _modules() if _entry(m)[1] == "manager" and m != "manager"]
    assert not unlisted, f"add these to LAYERS: {unlisted}"


def test_no_module_imports_another_modules_private_names() -> None:
    bad = []
    for rel, _module, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("manager"):
                bad += [
                    f"{rel}:{node.lineno} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not bad, "\n".join(bad)


def _atomic_targets(tree: ast.AST) -> set[str]:
    """Names bound by ``with <store>.atomic(path) as NAME``: the store's own temporary file, which
    the block may write by any means (``torch.save``, ``save_file``) before the store renames it."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "atomic"
                    and isinstance(item.optional_vars, ast.Name)
                ):
                    names.add(item.optional_vars.id)
    return names


def _into(node: ast.Call, names: set[str]) -> bool:
    """Whether the call writes into one of ``names`` (as an argument, ``str(NAME)``, or owner)."""
    args = [*node.args, *(k.value for k in node.keywords)]
    if isinstance(node.func, ast.Attribute):
        args.append(node.func.value)
    for a in args:
        if isinstance(a, ast.Call) and isinstance(a.func, ast.Name) and a.func.id == "str":
            a = a.args[0] if a.args else a
        if isinstance(a, ast.Name) and a.id in names:
            return True
    return False


def _owner(f: ast.Attribute) -> str | None:
    """``store`` for ``store.x()`` and ``self.store.x()``; the name of a plain owner."""
    v = f.value
    if isinstance(v, ast.Name):
        return v.id
    if isinstance(v, ast.Attribute) and v.attr.endswith("store"):
        return "store"
    return None


def _mutations(rel: str, tree: ast.AST) -> list[str]:
    bad = []
    sanctioned = _atomic_targets(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or _into(node, sanctioned):
            continue
        f = node.func
        where = f"{rel}:{node.lineno}"
        if isinstance(f, ast.Attribute):
            owner = _owner(f)
            if owner == "os" and f.attr in MUTATING_OS:
                bad.append(f"{where} os.{f.attr}")
            elif owner == "torch" and f.attr == "save":
                bad.append(f"{where} torch.save")
            elif f.attr in MUTATING_ATTRS and owner not in ("self", "store", "Store"):
                bad.append(f"{where} .{f.attr}()")
            elif f.attr == "mkdir" and rel not in MKDIR_ALLOWED and owner != "store":
                bad.append(f"{where} .mkdir()")
        elif isinstance(f, ast.Name) and f.id == "open":
            mode = node.args[1] if len(node.args) > 1 else None
            for kw in node.keywords:
                if kw.arg == "mode":
                    mode = kw.value
            text = mode.value if isinstance(mode, ast.Constant) else "r"
            if not isinstance(text, str) or set(text) & set("wax+"):
                bad.append(f"{where} open(..., {text!r})")
        elif isinstance(f, ast.Name) and f.id in {"save_file", "rmtree", "copyfile", "copy2"}:
            bad.append(f"{where} {f.id}()")
    return bad


def test_one_module_owns_the_filesystem() -> None:
    bad = []
    for rel, _module, tree in _modules():
        if rel != FS_OWNER:
            bad += _mutations(rel, tree)
    assert not bad, "only manager/store/fs.py may write, rename or delete files:\n" + "\n".join(bad)


def test_the_scan_is_not_vacuous() -> None:
    tree = ast.parse(
        "import os, shutil, torch\n"
        "p.unlink()\nshutil.rmtree(p)\nos.replace(a, b)\nopen(p, 'w')\nopen(p, mode='ab')\n"
        "torch.save(x, p)\np.write_bytes(b)\nopen(p)\nopen(p, 'rb')\nstore.unlink(p)\n"
        "self.store.unlink(p)\nwith store.atomic(p) as tmp:\n    torch.save(x, tmp)\n"
        "    save_file(x, str(tmp))\n    torch.save(x, p)\n"
    )
    assert len(_mutations("x.py", tree)) == 8


@pytest.mark.parametrize(
    "modules",
    [
        ("manager.delta.apply", "manager.delta.delta", "manager.delta.structure"),
        ("manager.switch.live", "manager.switch.livefile", "manager.store.fs"),
    ],
)
def test_the_switch_path_imports_neither_timm_nor_torchvision(modules: tuple[str, ...]) -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_delta_is_a_torch_only_leaf() -> None:
    for rel, module, tree in _modules():
        if not module.startswith("manager.delta"):
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for n in names:
                top = n.split(".")[0]
                assert top in {"torch", "safetensors", "numpy", "manager", "__future__"} or (
                    top in sys.stdlib_module_names
                ), f"{rel} imports {n}"
                if top == "manager":
                    assert n.startswith(("manager.delta", "manager.errors")), f"{rel} imports {n}"


def test_import_manager_alone_imports_no_torch() -> None:
    """The package's API names resolve lazily (PEP 562): importing it costs no torch."""
    code = (
        "import sys, manager\n"
        "names = [n for n in manager.__all__ if n != '__version__']\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules)\n"
        "print(heavy, len(names))\n"
        "assert all(getattr(manager, n) is not None for n in names)\n"
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, second = out.stdout.strip().splitlines()
    assert first.startswith("[] "), out.stdout  # nothing heavy before a name is used
    assert "torch" in second, out.stdout  # and the names are real once used
