"""Aliases, promotion, rollback, tags and ``history --at`` through the real CLI.

The home is the switcher tests' template (``switch_helpers``): ``shapes`` trained by the CLI,
``pets3`` with versions 1-3 (v3 the champion) and ``digits`` with 1-2 (v2). Commands run in forked
children of a warm interpreter; refusals that must print one clean line run in a plain
``python -m manager`` subprocess.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import torch
from conftest import CLI, InProcessCLI, assert_clean_error
from safetensors.torch import load_file
from switch_helpers import catalog_versions, deployment, fork_mgr, live_file, merged, one_thread, w0  # noqa: F401

from manager.errors import MgrError

pytestmark = pytest.mark.trained_home  # `home`: a copy of the trained switch template


def js(home: Path, *args: str):
    return fork_mgr(home, *args, "--json").json()


def champion(home: Path, task: str) -> int:
    return next(v["number"] for v in js(home, "versions", task) if v["active"])


def assert_live_is(home: Path, label: str) -> None:
    """The live files hold exactly a fresh merge of W0 and ``label``'s delta."""
    body, head = merged(home, w0(home), catalog_versions(home)[label])
    files = [live_file(home, name) for name in ("backbone", "head")]
    live = {n: t for f in files for n, t in load_file(f).items()}
    assert live.keys() == {**body, **head}.keys()
    assert all(torch.equal(live[n], t) for n, t in {**body, **head}.items())


def events(home: Path, *kinds: str) -> list[dict]:
    return [e for e in js(home, "history") if e["kind"] in kinds]


# -- selectors ----------------------------------------------------------------------------------


def test_selectors_parse_numbers_and_alias_names() -> None:
    from manager.names import parse_version_ref, parse_version_selector, validate_alias_name

    assert parse_version_selector("pets") == ("pets", None)
    assert parse_version_selector("pets@3") == ("pets", 3)
    assert parse_version_selector("pets@v3") == ("pets", 3)
    assert parse_version_selector("pets@champion") == ("pets", "champion")
    assert parse_version_selector("pets@release-2") == ("pets", "release-2")
    for bad in ["pets@", "pets@-1", "pets@ 1", "pets@²", "pets@0", "pets@3x", "pets@Cand", "@1"]:
        with pytest.raises(MgrError):
            parse_version_selector(bad)
    with pytest.raises(MgrError):
        parse_version_ref("pets@champion")  # the numbers-only parser stays numbers-only
    for bad in ["champion", "3", "v3", "V3", "-x", "Cand", "a" * 65]:
        with pytest.raises(MgrError):
            validate_alias_name(bad)
    assert validate_alias_name("champion", settable=False) == "champion"


# -- aliases ------------------------------------------------------------------------------------


def test_alias_set_list_remove_and_versions_show_them(home: Path) -> None:
    assert fork_mgr(home, "alias", "set", "pets3", "candidate", "1").stdout.strip() == (
        "pets3@candidate -> v1"
    )
    # An alias may be set from another alias; 'champion' resolves to the active version.
    out = js(home, "alias", "set", "pets3", "stable", "champion")
    assert (out["version"], out["previous"]) == (3, None)
    assert js(home, "alias", "list", "pets3") == [
        {"task": "pets3", "alias": "champion", "version": 3, "status": "ready"},
        {"task": "pets3", "alias": "candidate", "version": 1, "status": "ready"},
        {"task": "pets3", "alias": "stable", "version": 3, "status": "ready"},
    ]
    everyone = js(home, "alias", "list")
    assert {(r["task"], r["alias"], r["version"]) for r in everyone} >= {
        ("digits", "champion", 2),
        ("shapes", "champion", 1),
        ("pets3", "candidate", 1),
    }
    moved = js(home, "alias", "set", "pets3", "candidate", "2")
    assert (moved["version"], moved["previous"]) == (2, 1)
    shown = {v["number"]: v["aliases"] for v in js(home, "versions", "pets3")}
    assert shown == {1: [], 2: ["candidate"], 3: ["champion", "stable"]}
    assert "candidate" in fork_mgr(home, "versions", "pets3").stdout

    assert "it pointed at v2" in fork_mgr(home, "alias", "remove", "pets3", "candidate").stdout
    assert [r["alias"] for r in js(home, "alias", "list", "pets3")] == ["champion", "stable"]
    changes = events(home, "alias_set", "alias_removed")
    kinds = [(e["kind"], e["details"].get("alias")) for e in changes]
    assert kinds == [
        ("alias_set", "candidate"),
        ("alias_set", "stable"),
        ("alias_set", "candidate"),
        ("alias_removed", "candidate"),
    ]


def test_alias_refusals_are_one_line(cli: InProcessCLI) -> None:
    cases = [
        (("switch", "pets3@nope"), "has no alias 'nope' (its aliases: champion, stable)"),
        (("alias", "set", "pets3", "champion", "1"), "mgr promote"),
        (("alias", "set", "pets3", "v2", "1"), "names a version"),
        (("alias", "set", "pets3", "Big", "1"), "bad alias name"),
        (("alias", "set", "pets3", "x", "9"), "has no version 9"),
        (("alias", "remove", "pets3", "champion"), "mgr promote"),
        (("alias", "remove", "pets3", "ghost"), "its aliases: champion, stable"),
        (("alias", "list", "nosuch"), "unknown task"),
    ]
    cli("alias", "set", "pets3", "stable", "2")
    for args, needle in cases:
        proc = cli(*args, ok=False)
        assert_clean_error(proc)
        assert proc.returncode == 1, (args, proc.returncode)
        assert needle in proc.stderr, (args, proc.stderr)
    proc = cli("switch", "pets3@x!", ok=False)  # a usage error, before the catalog
    assert_clean_error(proc)
    assert "bad version or alias" in proc.stderr


def test_switch_and_serve_by_alias_give_the_numbered_version(home: Path) -> None:
    fork_mgr(home, "alias", "set", "pets3", "candidate", "1")
    out = js(home, "switch", "pets3@candidate")
    assert (out["task"], out["version"]) == ("pets3", 1)
    assert deployment(home)["live"] == "pets3@1"
    assert_live_is(home, "pets3@1")
    assert "already live" in fork_mgr(home, "switch", "pets3@1").stdout  # the same version
    fork_mgr(home, "switch", "pets3@champion")
    assert deployment(home)["live"] == "pets3@3"
    assert_live_is(home, "pets3@3")
    assert "already live" in fork_mgr(home, "switch", "pets3").stdout

    # The server resolves a request's task through the same resolver.
    from manager.catalog import open_catalog
    from manager.errors import NotFound
    from manager.home import Home
    from manager.serve.app import resolve
    from manager.serve.errors import status_of

    cat = open_catalog(Home(home), url=f"sqlite:///{home / 'catalog.db'}")
    try:
        assert resolve(cat, "pets3@candidate")[0].number == 1
        assert resolve(cat, "pets3@champion")[0].number == 3
        with pytest.raises(NotFound) as err:
            resolve(cat, "pets3@ghost")
        assert status_of(err.value) == 404 and "its aliases: champion, candidate" in str(err.value)
    finally:
        cat.close()


# -- promotion and rollback -----------------------------------------------------------------------


def test_promote_and_rollback_walk_the_history_like_a_stack(home: Path) -> None:
    # The template recorded v1, v2, v3 in turn, each promoted: the champion's history is 1, 2, 3.
    assert "pets3@champion -> v1 (was v3)" in fork_mgr(home, "promote", "pets3@1").stdout
    fork_mgr(home, "alias", "set", "pets3", "candidate", "2")
    out = js(home, "promote", "pets3@candidate")  # whatever the alias names becomes champion
    assert (out["version"], out["previous"]) == (2, 1)
    assert champion(home, "pets3") == 2
    # History 1, 2, 3, 1, 2: each rollback goes one further back.
    assert "rolled back to v1 (was v2)" in fork_mgr(home, "rollback", "pets3").stdout
    walked = [js(home, "rollback", "pets3")["version"] for _ in range(3)]
    assert walked == [3, 2, 1]
    assert champion(home, "pets3") == 1
    proc = CLI(home)("rollback", "pets3", ok=False)
    assert_clean_error(proc)
    assert "nothing to roll back to: pets3@champion (v1)" in proc.stderr
    # A promotion after rollbacks starts from there: 1 -> 3, then back to 1.
    fork_mgr(home, "promote", "pets3@3")
    assert js(home, "rollback", "pets3")["version"] == 1

    # Other aliases move and roll back the same way, without touching the champion.
    fork_mgr(home, "promote", "pets3@3", "--alias", "candidate")
    assert js(home, "rollback", "pets3", "--alias", "candidate")["version"] == 2
    assert champion(home, "pets3") == 1

    kinds = [
        (e["kind"], e["details"]["alias"], e["details"]["previous"], e["details"]["number"])
        for e in events(home, "promoted", "rolled_back")
        if e["task"] == "pets3"
    ]
    assert kinds[3:] == [
        ("promoted", "champion", 3, 1),
        ("promoted", "champion", 1, 2),
        ("rolled_back", "champion", 2, 1),
        ("rolled_back", "champion", 1, 3),
        ("rolled_back", "champion", 3, 2),
        ("rolled_back", "champion", 2, 1),
        ("promoted", "champion", 1, 3),
        ("rolled_back", "champion", 3, 1),
        ("promoted", "candidate", 2, 3),
        ("rolled_back", "candidate", 3, 2),
    ]
    assert {e["details"]["reason"] for e in events(home, "rolled_back")} == {"manual"}


def test_rollback_skips_versions_deleted_since(home: Path) -> None:
    fork_mgr(home, "promote", "pets3@1")
    fork_mgr(home, "promote", "pets3@2")  # champion history: 3, 1, 2
    fork_mgr(
        home, "switch", "pets3@3"
    )  # live, so gc keeps it; v1 is neither live, newest nor named
    gone = js(home, "gc", "--keep", "0", "--task", "pets3")
    assert [d["version"] for d in gone["deleted"]] == [1]
    out = js(home, "rollback", "pets3")
    assert (out["version"], out["previous"], out["skipped_deleted"]) == (3, 2, [1])
    proc = CLI(home)("switch", "pets3@1", ok=False)
    assert_clean_error(proc)
    assert "is deleted" in proc.stderr


def test_gc_keeps_versions_an_alias_names(home: Path) -> None:
    fork_mgr(home, "alias", "set", "pets3", "candidate", "1")
    report = js(home, "gc", "--keep", "0", "--task", "pets3")
    assert [d["version"] for d in report["deleted"]] == [2]
    kept = {k["version"]: k["reasons"] for k in report["kept"]}
    assert kept[1] == ["alias candidate"] and "active" in kept[3]
    fork_mgr(home, "switch", "pets3@candidate")


# -- tags ---------------------------------------------------------------------------------------


def test_tags_add_remove_show(home: Path) -> None:
    assert js(home, "tag", "pets3@2", "reviewed", "baseline")["tags"] == ["baseline", "reviewed"]
    fork_mgr(home, "alias", "set", "pets3", "candidate", "2")
    assert js(home, "tag", "pets3@candidate", "reviewed")["tags"] == ["baseline", "reviewed"]
    assert js(home, "tag", "pets3@candidate", "baseline", "--remove")["tags"] == ["reviewed"]
    assert fork_mgr(home, "tag", "pets3@2").stdout.strip() == "pets3@2: reviewed"
    assert {v["number"]: v["tags"] for v in js(home, "versions", "pets3")} == {
        1: [],
        2: ["reviewed"],
        3: [],
    }
    for args, needle in [
        (("tag", "pets3@2", "ghost", "--remove"), "has no tag 'ghost' (its tags: reviewed)"),
        (("tag", "pets3@2", "Bad Tag"), "bad tag"),
        (("tag", "pets3@9", "x"), "has no version 9"),
    ]:
        proc = CLI(home)(*args, ok=False)
        assert_clean_error(proc)
        assert needle in proc.stderr
    tagged = [(e["kind"], e["details"]["tags"]) for e in events(home, "tagged", "untagged")]
    assert tagged == [("tagged", ["reviewed", "baseline"]), ("untagged", ["baseline"])]


# -- history --at -------------------------------------------------------------------------------


def _between(a: str, b: str) -> str:
    t0, t1 = datetime.fromisoformat(a), datetime.fromisoformat(b)
    return (t0 + (t1 - t0) / 2).isoformat()


def test_history_at_says_what_was_live_and_who_was_champion(home: Path) -> None:
    fork_mgr(home, "switch", "digits")
    fork_mgr(home, "promote", "pets3@1")
    fork_mgr(home, "switch", "pets3@2")
    switched = events(home, "switched")
    promoted = [e for e in events(home, "promoted") if e["task"] == "pets3"][-1]
    assert [e["details"]["to"] for e in switched] == ["digits@2", "pets3@2"]
    first, second = switched[0]["at"], switched[1]["at"]

    then = js(home, "history", "--at", _between(first, promoted["at"]))
    [live] = then["live"]
    assert (live["version"], live["since"]) == ("digits@2", first)
    champs = {c["task"]: c["version"] for c in then["champions"]}
    assert champs == {"shapes": 1, "pets3": 3, "digits": 2}

    later = js(home, "history", "--at", _between(promoted["at"], second))
    assert later["live"][0]["version"] == "digits@2"
    assert {c["task"]: c["version"] for c in later["champions"]}["pets3"] == 1
    now = js(home, "history", "--at", "0s")
    assert now["live"][0]["version"] == "pets3@2"

    before = js(home, "history", "--at", "2000-01-01T00:00:00+00:00")
    assert before["live"] == [{"host": before["host"], "version": None, "since": None}]
    assert before["champions"] == []
    text = fork_mgr(home, "history", "--at", _between(first, second)).stdout
    assert "digits@2" in text and "pets3: champion v" in text
    everywhere = js(home, "history", "--at", "0s", "--all-hosts")
    assert [x["version"] for x in everywhere["live"]] == ["pets3@2"]
    only = js(home, "history", "--at", "0s", "--task", "pets3")["champions"]
    assert [(c["task"], c["version"]) for c in only] == [("pets3", 1)]
    for args, needle in [
        (("--at", "last tuesday"), "bad time"),
        (("--at", "0s", "--limit", "3"), "one or the other"),
        (("--all-hosts",), "goes with --at"),
    ]:
        proc = CLI(home)("history", *args, ok=False)
        assert_clean_error(proc)
        assert needle in proc.stderr
