"""The plan of a switch's steps (b)-(d) on one backbone's live folder: pure, plain data.

`plan` decides what the live files and the deployment row must become from what the folder holds
now (`LiveState`, read by ``manager.switch.live``); ``live`` then carries the plan out in the
crash protocol's order (see its docstring). Keeping the decision here, apart from the writes,
makes every branch testable on constructed states, with no file, catalog or torch.
"""

from __future__ import annotations

from dataclasses import dataclass

UNKNOWN = "?"  # the head file's version id when it is missing or not ours


@dataclass(frozen=True)
class LiveState:
    """What a backbone's live folder holds before step (b), and what the caller asks of it."""

    old_id: int | None  # the version the deployment row serves (None: the backbone alone)
    target_id: int | None  # the version to make live (None: the backbone alone)
    file_matches: bool  # the big file is a copy of W0 by header and size
    applied: int | str | None  # the version the head file names; `UNKNOWN` if missing or foreign
    rebuild: bool = False  # asked: replace the big file by a fresh copy of W0
    force_full: bool = False  # asked: copy W0 into every tensor, in place
    old_error: str | None = None  # why the old version's artifact could not be used, once read
    old_values: int = 0  # values on the old version's supports (its body), once read
    new_values: int = 0  # values on the target's supports (its body)
    total: int = 0  # values in the backbone


@dataclass(frozen=True)
class LivePlan:
    """What steps (b)-(d) write, in this order."""

    copy_w0: bool  # (b0) replace the big file by a copy of W0 (its head file then names none)
    reset_all: bool  # (b1) copy W0 into every tensor in place
    restore_old: bool  # (b2) write W0 back on the old version's supports (needs its artifact)
    apply_new: bool  # (b3) write W0 + delta on the target's supports
    version_id: int | None  # what the head file (c) and the deployment row (d) name at the end
    values_written: int
    full_restore: bool  # every value of the big file was written
    loaded: bool  # the big file was copied from W0 without a repair asked for
    notes: tuple[str, ...] = ()


def plan(state: LiveState) -> LivePlan:
    """What the live files and the deployment row must become, from ``state``; no I/O.

    The big file is copied from W0 when a rebuild is asked or when it is not a copy of W0 (a
    backbone never switched, a damaged file). Otherwise every tensor is reset from W0 when asked
    (a recovery that rolls back, or whose target is gone) or when the values it holds cannot be
    known: the head file names neither the old version nor the target (a crash between the copy
    and (c) leaves none), or the old version's artifact is unusable. Else only the old supports
    are restored. The target's supports are then written, and the head and the row name it.

    When the plan restores the old supports, the caller reads the old artifact, then plans again
    with ``old_error`` (it failed) or ``old_values`` (it verified).
    """
    copy = state.rebuild or not state.file_matches
    reset = state.force_full and not copy
    notes: list[str] = []
    if not copy and not reset:
        if state.applied not in {state.old_id, state.target_id}:
            reset = True
            notes.append("head file missing or naming another version: reset from W0")
        elif state.old_id is not None and state.old_error is not None:
            reset = True
            notes.append(f"old artifact unusable ({state.old_error}): reset from W0")
    restore = state.old_id is not None and not copy and not reset
    apply = state.target_id is not None
    whole = copy or reset
    written = (state.old_values if restore else 0) + (state.new_values if apply else 0)
    return LivePlan(
        copy_w0=copy,
        reset_all=reset,
        restore_old=restore,
        apply_new=apply,
        version_id=state.target_id,
        values_written=state.total if whole else written,
        full_restore=whole,
        loaded=copy and not state.rebuild,
        notes=tuple(notes),
    )
