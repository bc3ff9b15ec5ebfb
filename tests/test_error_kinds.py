"""Typed errors end to end: library messages speak the API and the CLI adds its hint (flags,
commands) in one place; the server answers each kind with its own HTTP status."""

from __future__ import annotations

import ast
import asyncio
import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, TINY_SPEC

from manager.errors import (
    BadInput,
    BudgetExceeded,
    Busy,
    Conflict,
    Corrupt,
    Diverged,
    MgrError,
    NotFound,
)

# Every package but cli/ (the CLI's own words): its messages must not name a CLI flag or
# command (their hint may).
API_SPEAKING = sorted(
    p for p in (ROOT / "manager").rglob("*.py") if p.relative_to(ROOT / "manager").parts[0] != "cli"
)
KINDS = {"MgrError", "NotFound", "Conflict", "BudgetExceeded", "Corrupt", "Diverged", "Busy",
         "BadInput"}  # fmt: skip


def _message_strings(call: ast.Call) -> str:
    """The text of a raise's message (its positional arguments), not of its ``hint=``; the
    pieces of an f-string apart (``f"{bad or '-'}"`` is no flag)."""
    return "|".join(
        node.value
        for arg in call.args
        for node in ast.walk(arg)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def test_library_messages_name_no_flag_and_no_command() -> None:
    offenders = []
    assert len(API_SPEAKING) > 100
    for f in API_SPEAKING:
        for node in ast.walk(ast.parse(f.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            func = node.exc.func
            name = getattr(func, "id", getattr(func, "attr", ""))
            text = _message_strings(node.exc)
            if name in KINDS and re.search(r"(^|[\s(|'])--[a-z]|'mgr ", text):
                offenders.append(f"{f.relative_to(ROOT)}:{node.lineno}: {text[:80]}")
    assert not offenders, "\n".join(offenders)


def test_the_hint_is_the_clis_alone() -> None:
    from manager.cli.group import error_line

    exc = NotFound("unknown task 'x'", hint="see 'mgr task list'")
    assert str(exc) == exc.message == "unknown task 'x'"  # what a library user and the server see
    assert error_line(exc) == "error: unknown task 'x'; see 'mgr task list'"
    assert error_line(Conflict("two\n  lines")) == "error: two lines"  # one line, no hint
    assert MgrError("plain").hint is None


def test_a_flag_named_only_in_the_hint(tmp_path: Path) -> None:
    from manager.home import Home
    from manager.store.fs import Store

    out = tmp_path / "out"
    out.mkdir()
    (out / "other").write_text("x")
    store = Store.of(Home(tmp_path / "h"))
    with pytest.raises(Conflict) as e:
        store.write_export(out, {"a.onnx": b"1"})
    assert "--" not in str(e.value) and "--force" in (e.value.hint or "")
    store.write_export(out, {"a.onnx": b"1"}, force=True)  # the API's own word for it
    assert (out / "a.onnx").read_bytes() == b"1" and (out / "other").read_text() == "x"


def test_the_cli_prints_message_and_hint_in_process(home: Path) -> None:
    from click.testing import CliRunner

    from manager.cli import main

    result = CliRunner().invoke(main, ["task", "show", "nope"], env={"MGR_HOME": str(home)})
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: unknown task 'nope'; see 'mgr task list'"


# -- the server --------------------------------------------------------------------------------


def test_each_kind_has_its_status() -> None:
    from manager.serve.errors import ServeError, status_of

    expected = {NotFound: 404, Conflict: 409, BudgetExceeded: 409, BadInput: 400, Busy: 503,
                Corrupt: 500, Diverged: 500, MgrError: 500}  # fmt: skip
    for kind, status in expected.items():
        assert status_of(kind("x")) == status, kind

    class MissingFile(NotFound):  # a subclass keeps its kind's status
        pass

    assert status_of(MissingFile("x")) == 404
    assert status_of(ServeError(413, "too big")) == 413
    assert status_of(ValueError("bug")) == 500


def _call(app, path: str) -> tuple[int, dict]:
    """One GET through the ASGI app itself (no HTTP client needed)."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [], "scheme": "http", "http_version": "1.1",
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1), "root_path": "",
             "app": app}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


def test_the_apps_handlers_answer_each_kind_with_one_line_and_no_hint() -> None:
    from fastapi import FastAPI

    from manager.serve.errors import ServeError, install

    app = FastAPI()
    install(app)
    raised = {
        "notfound": NotFound("unknown task 'x'", hint="see 'mgr task list'"),
        "conflict": Conflict("version 2 of 'x' is\npending"),
        "badinput": BadInput("bad task name '../x'"),
        "busy": Busy("cannot fit backbone b; retry later", hint="or raise --max-memory"),
        "corrupt": Corrupt("artifact of x@1 is corrupt"),
        "serve": ServeError(415, "unsupported content type"),
    }

    def raising(exc: Exception):
        def route() -> None:
            raise exc

        return route

    for name, exc in raised.items():
        app.add_api_route(f"/{name}", raising(exc))
    for name, status in [("notfound", 404), ("conflict", 409), ("badinput", 400),
                         ("busy", 503), ("corrupt", 500), ("serve", 415)]:  # fmt: skip
        got, body = _call(app, f"/{name}")
        assert got == status, name
        assert body == {"error": " ".join(str(raised[name]).split())}  # one line, no hint


def test_the_resolver_raises_the_catalogs_kinds_and_caches_them(home: Path) -> None:
    from manager.catalog import open_catalog, tasks
    from manager.home import Home
    from manager.serve.resolver import Resolver, resolve

    cat = open_catalog(Home(home))
    try:
        with cat.session() as s:
            tasks.add_task(s, name="pets", dataset="synthetic", class_names=["a", "b"],
                           backbone_spec=TINY_SPEC)  # fmt: skip
        with pytest.raises(NotFound, match="unknown task 'nope'"):
            resolve(cat, "nope")
        with pytest.raises(NotFound, match="'pets' has no active version"):
            resolve(cat, "pets")
        with pytest.raises(NotFound, match="has no version 3"):
            resolve(cat, "pets@3")
        with pytest.raises(BadInput, match="bad task name"):
            resolve(cat, "../etc")
        with pytest.raises(BadInput, match="no task given and none is live"):
            resolve(cat, None)
        resolver = Resolver(cat)
        try:
            for _ in range(2):  # the second answer comes from the cache: the same kind, anew
                with pytest.raises(NotFound, match="unknown task 'nope'") as e:
                    resolver("nope")
                assert e.value.__traceback__ is not None
        finally:
            resolver.close()
    finally:
        cat.close()


def test_the_client_reads_a_status_back_into_its_kind() -> None:
    from manager.serve.client import kind_of
    from manager.serve.errors import STATUS

    for kind in (NotFound, Conflict, BadInput, Busy):
        assert kind_of(STATUS[kind]) is kind  # the round trip of what a request can fix or retry
    assert kind_of(413) is BadInput and kind_of(500) is MgrError and kind_of(401) is MgrError


def test_reworded_keeps_the_kind_and_the_hint() -> None:
    class Unreadable(Corrupt):  # a subclass with a signature of its own
        def __init__(self, path: str):
            super().__init__(f"cannot read {path}", hint="see 'mgr verify'")

    again = Unreadable("v1.safetensors").reworded("init='a@1': cannot read v1.safetensors")
    assert type(again) is Corrupt and again.hint == "see 'mgr verify'"
    assert str(again) == "init='a@1': cannot read v1.safetensors"
    plain = MgrError("x").reworded()
    assert type(plain) is MgrError and str(plain) == "x" and plain.hint is None
