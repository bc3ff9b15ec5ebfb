"""The retention policy of ``mgr gc`` (`select_versions`, `versions_in_use`) on constructed rows.

Plain data, no catalog: the CLI tests (test_cli_switch, test_registry, test_gc_catalog_id,
test_hardening_switch) check the same policy end to end, with the deletion, the leftovers and
the foreign-catalog refusal.
"""

from __future__ import annotations

from manager.registry.maintenance import Candidate, select_versions, versions_in_use


def versions(task: str, numbers: range, active: int | None = None, first_id: int = 1):
    """Ready versions of ``task`` (id = first_id + number), in catalog (ascending) order."""
    return [
        Candidate(first_id + n, task, n, 100 * n, f"artifacts/{task}/v{n}.safetensors", n == active)
        for n in numbers
    ]


def kept_of(kept) -> dict[tuple[str, int], list[str]]:
    return {(k.task, k.version): k.reasons for k in kept}


def test_keeps_the_newest_per_task_and_dooms_the_rest() -> None:
    ready = versions("pets", range(1, 6)) + versions("cars", range(1, 3), first_id=100)
    kept, doomed = select_versions(ready, {}, keep=2)
    assert kept_of(kept) == {
        ("pets", 5): ["newest"],
        ("pets", 4): ["newest"],
        ("cars", 2): ["newest"],
        ("cars", 1): ["newest"],
    }
    assert [(c.task, c.number) for c in doomed] == [("pets", 3), ("pets", 2), ("pets", 1)]
    # Tasks in the order given, each task's versions newest first.
    assert [(k.task, k.version) for k in kept][:2] == [("pets", 5), ("pets", 4)]


def test_newest_is_by_number_not_by_input_order() -> None:
    ready = list(reversed(versions("pets", range(1, 4))))
    kept, doomed = select_versions(ready, {}, keep=1)
    assert kept_of(kept) == {("pets", 3): ["newest"]}
    assert sorted(c.number for c in doomed) == [1, 2]


def test_active_live_pending_and_alias_are_kept_with_keep_zero() -> None:
    ready = versions("pets", range(1, 7), active=2)
    ids = {c.number: c.id for c in ready}
    in_use = versions_in_use(
        [(ids[3], ids[4]), (None, None)],  # a host serving v3, switching to v4; an idle one
        [(ids[5], "candidate"), (ids[3], "stable")],
    )
    kept, doomed = select_versions(ready, in_use, keep=0)
    assert kept_of(kept) == {
        ("pets", 5): ["alias candidate"],
        ("pets", 4): ["pending"],
        ("pets", 3): ["live"],  # live wins over the alias naming it too
        ("pets", 2): ["active"],
    }
    assert [c.number for c in doomed] == [6, 1]


def test_reasons_accumulate_in_order() -> None:
    ready = versions("pets", range(1, 3), active=2)
    in_use = versions_in_use([(ready[1].id, None)], [])
    kept, doomed = select_versions(ready, in_use, keep=1)
    assert kept_of(kept) == {("pets", 2): ["live", "active", "newest"]}
    assert [c.number for c in doomed] == [1]


def test_in_use_live_wins_over_pending_whatever_the_host_order() -> None:
    assert versions_in_use([(7, None), (None, 7)], []) == {7: "live"}
    assert versions_in_use([(None, 7), (7, None)], []) == {7: "live"}
    assert versions_in_use([(None, 7)], [(7, "a")]) == {7: "pending"}
    # The first alias (by the order given: gc gives them by name) names the reason.
    assert versions_in_use([], [(9, "a"), (9, "b")]) == {9: "alias a"}
    assert versions_in_use([(None, None)], []) == {}


def test_nothing_ready_nothing_selected() -> None:
    assert select_versions([], {1: "live"}, keep=3) == ([], [])
