"""HTTP statuses of the library's errors, in one place, and the app's exception handlers.

The library raises typed `MgrError`s (``manager.errors``); the server answers each kind with its
status, whoever raised it (the resolver, the engine on the worker thread, a route):

==================  ======  ====================================================
kind                status  why
==================  ======  ====================================================
``NotFound``        404     the task, version, alias or artifact is not there
``Conflict``        409     the catalog's state refuses it (not ready, unbound)
``BudgetExceeded``  409     (not raised while serving; kept for completeness)
``BadInput``        400     the request names something that can never work
``Busy``            503     the server's capacity or a moving catalog: retry
``Corrupt``         500     a damaged artifact or catalog: the server's fault
``Diverged``        500
``MgrError``        500     any other refusal
==================  ======  ====================================================

`ServeError` is the server's own refusal with its status chosen at the raise site (a body too
large: 413, a queue full: 503). Every answer is ``{"error": "<one line>"}``; the CLI's hint
(``MgrError.hint``, which names flags) is never sent.
"""

from __future__ import annotations

from typing import Any

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

STATUS: dict[type[MgrError], int] = {
    NotFound: 404,
    Conflict: 409,
    BudgetExceeded: 409,
    BadInput: 400,
    Busy: 503,
    Corrupt: 500,
    Diverged: 500,
    MgrError: 500,
}


class ServeError(Exception):
    """A request that cannot be answered: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    @classmethod
    def of(cls, exc: MgrError) -> ServeError:
        """The refusal a library error becomes (its kind's status, its message)."""
        return cls(status_of(exc), str(exc))


def status_of(exc: BaseException) -> int:
    """The HTTP status of ``exc``: a ServeError's own, a typed MgrError's kind's, else 500."""
    if isinstance(exc, ServeError):
        return exc.status
    for kind in type(exc).__mro__:  # the nearest kind wins (a subclass of NotFound is a 404)
        if kind in STATUS:
            return STATUS[kind]  # type: ignore[index]
    return 500


def fresh(exc: Exception) -> Exception:
    """A new exception like ``exc`` (to raise a cached refusal again without growing its
    traceback, from any thread)."""
    if isinstance(exc, ServeError):
        return ServeError(exc.status, exc.message)
    if isinstance(exc, MgrError):
        return exc.reworded()
    return exc


def error(status: int, message: object, headers: dict[str, str] | None = None) -> Any:
    """The JSON answer ``{"error": "<one line>"}`` with ``status``."""
    from fastapi.responses import JSONResponse

    line = " ".join(str(message).split())  # one line, whatever the cause printed
    return JSONResponse({"error": line}, status_code=status, headers=headers)


def install(app: Any) -> None:
    """Register the handlers: typed library errors, ServeErrors, HTTP and validation errors,
    and anything else as a 500 (one line, no traceback sent)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(MgrError)
    async def library_error(request: Request, exc: MgrError) -> Any:
        return error(status_of(exc), exc)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> Any:
        return error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        return error(400, f"bad request: {exc.errors()[:1]}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Any:
        return error(500, f"internal error: {type(exc).__name__}: {exc}")
