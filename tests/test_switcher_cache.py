"""A `Switcher` takes its cache policy: `DeltaCache` keeps the most recent deltas, the server's
`ResidentCache` keeps ``resident`` tasks plus the pinned ones (the newest version of each)."""

from __future__ import annotations

from pathlib import Path

from manager.catalog.refs import VersionRef
from manager.serve.engine import ResidentCache
from manager.serve.metrics import Metrics
from manager.switch.switcher import DeltaCache, Switcher, key_of


def ref(task: str, number: int, vid: int) -> VersionRef:
    return VersionRef(vid, 1, task, number, "consolidator", f"{task}/{number}", 1, f"h{vid}", 2, 1)


ENTRY = object()  # the policy never looks inside an entry


def held(cache: DeltaCache) -> list[str]:
    """The labels held, least recently used first."""
    labels = {key_of(r): r.label for r in REFS}
    return [labels[k] for k in cache]


REFS = [ref("a", 1, 1), ref("b", 1, 2), ref("c", 1, 3), ref("pin", 1, 4), ref("pin", 2, 5)]
A, B, C, PIN1, PIN2 = REFS


def test_delta_cache_keeps_the_most_recent() -> None:
    cache = DeltaCache(size=2)
    cache.put(A, ENTRY)  # type: ignore[arg-type]
    cache.put(B, ENTRY)  # type: ignore[arg-type]
    assert cache.get(A) is ENTRY  # A becomes the most recent...
    cache.put(C, ENTRY)  # type: ignore[arg-type]
    assert held(cache) == ["a@1", "c@1"]  # ...so B goes
    assert cache.get(B) is None and cache.tasks() == {"a", "c"}
    assert cache.peek(key_of(A)) is ENTRY and held(cache) == ["a@1", "c@1"]  # peek: no reorder


def test_resident_cache_never_evicts_a_pinned_task_and_counts() -> None:
    metrics = Metrics()
    metrics.set_live()
    cache = ResidentCache(resident=1, pins=["pin"], metrics=metrics)
    cache.put(PIN1, ENTRY)  # type: ignore[arg-type]
    cache.put(A, ENTRY)  # type: ignore[arg-type]
    cache.put(B, ENTRY)  # type: ignore[arg-type]
    assert held(cache) == ["pin@1", "b@1"]  # one unpinned task resident; the pinned one stays
    cache.put(PIN2, ENTRY)  # type: ignore[arg-type]
    assert held(cache) == ["b@1", "pin@2"]  # a pinned task keeps its newest version only
    assert cache.get(A) is None and cache.get(B) is ENTRY
    assert cache.misses == 1
    text = metrics.render().decode()
    assert "mgr_cache_hits_total 1.0" in text and "mgr_cache_misses_total 1.0" in text


def test_a_switcher_uses_the_policy_it_is_given(home: Path) -> None:
    policy = DeltaCache(size=1)
    with Switcher(home, cache=policy) as sw:
        assert sw.cache is policy
    with Switcher(home, cache_size=3) as sw:
        assert type(sw.cache) is DeltaCache and sw.cache.size == 3
