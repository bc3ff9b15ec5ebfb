"""``mgr serve``'s defaults are ``ServeConfig``'s: one place, for the CLI and Python callers."""

from __future__ import annotations

import ast
import dataclasses

from conftest import ROOT

from manager.cli.serve import command
from manager.serve.state import ServeConfig

# Fields the CLI fills another way: keys from --api-key-file / MGR_API_KEY, docs from --no-docs.
NOT_OPTIONS = {"api_keys", "docs", "decode_workers", "timeout_s"}


def test_every_default_is_the_configs() -> None:
    params = command.make_context("serve", []).params  # parsed as the command would get them
    config = ServeConfig()
    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    checked = set()
    for name in fields - NOT_OPTIONS:
        assert name in params, f"ServeConfig.{name} has no mgr serve option"
        assert params[name] == getattr(config, name), name
        checked.add(name)
    assert params["no_docs"] is (not config.docs)
    assert len(checked) >= 18  # host, port, device, limits, schedule, logging, draining...


def test_no_option_repeats_a_literal_default() -> None:
    tree = ast.parse((ROOT / "manager/cli/serve.py").read_text())
    literals = [
        f"line {kw.value.lineno}: default={kw.value.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "option"
        for kw in node.keywords
        if kw.arg == "default" and isinstance(kw.value, ast.Constant)
    ]
    assert not literals, "defaults belong to ServeConfig: " + ", ".join(literals)
