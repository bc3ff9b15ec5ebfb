"""The exception types the CLI turns into a one-line message and a non-zero exit.

``MgrError`` is the base: every user-facing failure is one, so ``except MgrError`` still catches
them all. The subclasses say what kind of failure it is, for a library user who wants to react
to one kind (a missing task, a full budget) and for the server, which maps each kind to an HTTP
status. The message is the same whichever type carries it.
"""


class MgrError(Exception):
    """A user-facing error: bad input, missing data, a refused operation.

    Anything raised as ``MgrError`` is printed as ``error: <message>`` with exit code 1;
    any other exception is a bug and keeps its traceback.
    """


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
