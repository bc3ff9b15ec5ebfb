"""API keys: ``Authorization: Bearer <key>`` on every route but the probes (and ``/metrics``
unless ``--protect-metrics``).

Keys come from ``--api-key-file`` (one per line; blank lines and ``#`` comments skipped) or the
``MGR_API_KEY`` environment variable. They are compared in constant time (``hmac.compare_digest``
against every key, with no early exit) and never logged or echoed. A missing or wrong key is a 401
with ``WWW-Authenticate: Bearer`` and a one-line JSON reason.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from manager.errors import MgrError

ENV_KEY = "MGR_API_KEY"
# Kubernetes probes and the docs carry no key; /metrics joins them unless --protect-metrics.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/v2/health/live", "/v2/health/ready"})
OPEN_PREFIXES = ("/docs", "/openapi.json")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]  # fmt: skip


def _valid(key: str) -> bool:
    return bool(key) and key.isascii() and key.isprintable() and " " not in key


def load_keys(
    key_file: str | os.PathLike[str] | None, env: dict[str, str] | None = None
) -> list[str]:
    """The accepted keys; MgrError (one line, no key in it) for a bad file or key."""
    env = dict(os.environ) if env is None else env
    keys: list[str] = []
    if key_file is not None:
        path = Path(key_file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MgrError(f"API key file {path} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            raise MgrError(f"cannot read the API key file {path}: {why}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not _valid(line):
                raise MgrError(
                    f"API key file {path}, line {n}: a key is printable ASCII without spaces"
                )
            keys.append(line)
        if not keys:
            raise MgrError(f"API key file {path} holds no key (one key per line)")
    value = env.get(ENV_KEY, "").strip()
    if value:
        if not _valid(value):
            raise MgrError(f"{ENV_KEY} must be printable ASCII without spaces")
        keys.append(value)
    return keys


def key_matches(given: bytes, keys: list[bytes]) -> bool:
    """Whether ``given`` is one of ``keys``, in time independent of where they differ."""
    ok = False
    for key in keys:  # every key compared: no early exit that would time which one matched
        ok |= hmac.compare_digest(given, key)
    return ok


class AuthMiddleware:
    """An ASGI middleware refusing requests without a valid bearer key (see the module doc)."""

    def __init__(self, app: ASGIApp, keys: list[str], protect_metrics: bool):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.protect_metrics = protect_metrics

    def _open(self, path: str) -> bool:
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        return path == "/metrics" and not self.protect_metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.keys or self._open(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        if given is None:
            await _unauthorized(send, "missing API key: send 'Authorization: Bearer <key>'", "")
            return
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not key_matches(token.strip(), self.keys):
            await _unauthorized(send, "invalid API key", ', error="invalid_token"')
            return
        await self.app(scope, receive, send)


async def _unauthorized(send: Any, message: str, extra: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({
        "type": "http.response.start",
        "status": 401,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", f'Bearer realm="mgr"{extra}'.encode()),
        ],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
