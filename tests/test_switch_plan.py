"""The pure plan of a switch's steps (b)-(d) (`manager.switch.plan`), on constructed states.

Each test builds the `LiveState` that one situation leaves on disk (a backbone never switched,
a switch between tasks, a switch to the backbone alone, an interrupted switch finished or rolled
back, a damaged or unknown live file) and checks what the plan writes. No file, catalog or torch:
the crash-protocol tests (test_switch_kill, test_kill_storm) check the same decisions end to end.
"""

from __future__ import annotations

import subprocess
import sys

from manager.switch.plan import UNKNOWN, LivePlan, LiveState, plan

A, B = 11, 12  # two version ids (of one task or two: the plan does not care)
TOTAL = 1_000  # values in the backbone
OLD_VALUES, NEW_VALUES = 30, 40  # values on A's and B's supports


def state(**kw) -> LiveState:
    """A live folder serving A, intact, asked to switch to B."""
    base = {
        "old_id": A,
        "target_id": B,
        "file_matches": True,
        "applied": A,
        "new_values": NEW_VALUES,
        "total": TOTAL,
    }
    return LiveState(**{**base, **kw})


def writes(p: LivePlan) -> tuple[bool, bool, bool, bool]:
    return (p.copy_w0, p.reset_all, p.restore_old, p.apply_new)


def test_plan_imports_no_torch_and_reads_nothing() -> None:
    # The plan is plain data: importable without torch (a fresh interpreter shows it), and the
    # same state always gives the same plan.
    code = "import sys, manager.switch.plan; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    s = state()
    assert plan(s) == plan(s)


def test_fresh_backbone_copies_w0_then_applies() -> None:
    # A backbone never switched: no live file (so no match) and no head file.
    p = plan(state(old_id=None, file_matches=False, applied=UNKNOWN))
    assert writes(p) == (True, False, False, True)
    assert p.version_id == B
    assert p.loaded and p.full_restore
    assert p.values_written == TOTAL
    assert p.notes == ()


def test_switch_between_versions_restores_old_then_applies_new() -> None:
    # First pass: the plan asks for the old artifact (restore_old) before it can count.
    first = plan(state())
    assert writes(first) == (False, False, True, True)
    # Second pass, once the old artifact verified: only the two supports are written.
    p = plan(state(old_values=OLD_VALUES))
    assert writes(p) == (False, False, True, True)
    assert p.version_id == B
    assert p.values_written == OLD_VALUES + NEW_VALUES
    assert not p.full_restore and not p.loaded and p.notes == ()


def test_switch_from_backbone_alone_applies_only() -> None:
    p = plan(state(old_id=None, applied=None))
    assert writes(p) == (False, False, False, True)
    assert p.values_written == NEW_VALUES and not p.full_restore


def test_switch_to_none_restores_only() -> None:
    # `mgr switch --none`: the old supports back to W0, nothing applied, the row names no version.
    p = plan(state(target_id=None, new_values=0, old_values=OLD_VALUES))
    assert writes(p) == (False, False, True, False)
    assert p.version_id is None
    assert p.values_written == OLD_VALUES


def test_same_version_again_restores_and_reapplies() -> None:
    # A switch to the version already live reaches the plan only when a repair or a recovery
    # asks for it; restore-then-apply writes the same values (idempotent).
    p = plan(state(target_id=A, old_values=OLD_VALUES, new_values=OLD_VALUES))
    assert writes(p) == (False, False, True, True)
    assert p.version_id == A
    assert p.values_written == 2 * OLD_VALUES


def test_old_artifact_unusable_resets_from_w0() -> None:
    p = plan(state(old_error="sha256 mismatch"))
    assert writes(p) == (False, True, False, True)
    assert p.full_restore and not p.loaded
    assert p.values_written == TOTAL
    assert p.notes == ("old artifact unusable (sha256 mismatch): reset from W0",)


def test_head_naming_another_version_resets_from_w0() -> None:
    for applied in (UNKNOWN, 99):
        p = plan(state(applied=applied, old_values=OLD_VALUES))
        assert writes(p) == (False, True, False, True), applied
        assert p.values_written == TOTAL
        assert p.notes == ("head file missing or naming another version: reset from W0",)


def test_head_naming_the_backbone_alone_is_unknown_when_a_version_is_live() -> None:
    # The head names no version (a crash right after the copy), the row says A: reset.
    assert plan(state(applied=None)).reset_all
    # ... but with no old version, "no version" is exactly what the row says: no reset.
    assert not plan(state(old_id=None, applied=None)).reset_all


def test_damaged_file_is_copied_from_w0_not_reset() -> None:
    p = plan(state(file_matches=False, old_values=OLD_VALUES))
    assert writes(p) == (True, False, False, True)
    assert p.loaded and p.full_restore and p.values_written == TOTAL


def test_repair_rebuilds_whatever_the_file_holds() -> None:
    p = plan(state(rebuild=True, old_values=OLD_VALUES))
    assert writes(p) == (True, False, False, True)
    assert p.full_restore and not p.loaded  # asked for: not a load
    # A rebuild wins over a reset: the fresh copy already is W0.
    assert writes(plan(state(rebuild=True, force_full=True))) == (True, False, False, True)


def test_interrupted_switch_finished_with_head_of_either_side() -> None:
    # A crash inside (b) leaves the head naming the old version; after (c), the new one. Either
    # way the roll-forward restores A's supports and applies B's.
    for applied in (A, B):
        p = plan(state(applied=applied, old_values=OLD_VALUES))
        assert writes(p) == (False, False, True, True), applied
        assert p.version_id == B


def test_interrupted_switch_to_none_or_removed_target_resets_fully() -> None:
    # Recovery with pending NULL (--none, or a target removed meanwhile): force_full.
    p = plan(state(target_id=None, new_values=0, force_full=True))
    assert writes(p) == (False, True, False, False)
    assert p.version_id is None and p.full_restore and p.values_written == TOTAL
    assert p.notes == ()


def test_rollback_resets_then_applies_the_old_version() -> None:
    # Recovery rolling back: the pending artifact failed; the caller passes old=None, target=A.
    p = plan(LiveState(None, A, True, B, force_full=True, new_values=OLD_VALUES, total=TOTAL))
    assert writes(p) == (False, True, False, True)
    assert p.version_id == A and p.values_written == TOTAL
    # ... and to the backbone alone when the old artifact is unusable too.
    p = plan(LiveState(None, None, True, B, force_full=True, total=TOTAL))
    assert writes(p) == (False, True, False, False)
    assert p.version_id is None


def test_rollback_on_a_file_that_no_longer_matches_copies_w0() -> None:
    p = plan(LiveState(None, A, False, UNKNOWN, force_full=True, total=TOTAL))
    assert writes(p) == (True, False, False, True)
    assert p.loaded  # not a repair: the file was not a copy of W0


def test_restore_needs_an_old_version() -> None:
    # The invariant the writer relies on: the old supports are only restored when there is one.
    for s in (state(old_id=None, applied=None), state(old_id=None, applied=None, target_id=None)):
        assert not plan(s).restore_old
