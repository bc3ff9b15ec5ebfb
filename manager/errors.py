"""The exception types the CLI turns into a one-line message and a non-zero exit.

``MgrError`` is the base: every user-facing failure is one, so ``except MgrError`` still catches
them all. The subclasses say what kind of failure it is, for a library user who wants to react
to one kind (a missing task, a full budget) and for the server, which maps each kind to an HTTP
status (``manager.serve.errors``). The message is the same whichever type carries it.

Messages speak the library's terms (``force=True``, never ``--force``); what to
type at the command line goes in ``hint``, which only the CLI prints, after the message:
``error: <message>; <hint>`` (``manager.cli.group.error_line``).
"""

from __future__ import annotations


class MgrError(Exception):
    """A user-facing error: bad input, missing data, a refused operation.

    Anything raised as ``MgrError`` is printed by the CLI as ``error: <message>[; <hint>]``
    with exit code 1; any other exception is a bug and keeps its traceback. ``hint`` says what to
    do at the command line (flags, commands); ``str(exc)`` and the server never show it.
    """

    def __init__(self, message: object = "", *, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    @property
    def message(self) -> str:
        """The message alone (``str(exc)``), without the CLI's hint."""
        return str(self)

    def reworded(self, message: object | None = None) -> MgrError:
        """A new error of this one's kind (its nearest kind below: a subclass with its own
        signature becomes that kind) with ``message`` (default: the same) and the same hint:
        to add context, or to raise a cached refusal again without growing its traceback."""
        kind = next((k for k in type(self).__mro__ if k in KINDS), MgrError)
        return kind(str(self) if message is None else message, hint=self.hint)


class NotFound(MgrError):
    """A task, version, alias or file that the catalog or the home does not have (HTTP 404)."""


class Conflict(MgrError):
    """The request clashes with the catalog's state: a name taken, a version not ready, a task
    still live (HTTP 409)."""


class BudgetExceeded(MgrError):
    """A new version would not fit a task's or the global storage budget (HTTP 409)."""


class Corrupt(MgrError):
    """A recorded file does not match the catalog (size, hash, format) or cannot be read back
    (HTTP 500: the home is damaged, not the request)."""


class Diverged(MgrError):
    """Training produced NaN or infinite values; nothing was recorded."""


class Busy(MgrError):
    """Another process holds what is needed (a running training of the task, a lock); try again
    later (HTTP 503)."""


class BadInput(MgrError):
    """An argument or setting that can never work: fix the call, not the state (HTTP 400/422)."""


KINDS: tuple[type[MgrError], ...] = (
    NotFound, Conflict, BudgetExceeded, Corrupt, Diverged, Busy, BadInput,
)  # fmt: skip

__all__ = [
    "BadInput",
    "BudgetExceeded",
    "Busy",
    "Conflict",
    "Corrupt",
    "Diverged",
    "MgrError",
    "NotFound",
]
