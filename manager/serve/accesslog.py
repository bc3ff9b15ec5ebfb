"""One JSON line per request, to stderr or ``--access-log FILE``.

Each line: ``time`` (UTC), ``id`` (the request's ``X-Request-ID``, echoed back; made up when the
client sent none or an odd one), ``method``, ``path``, ``status``, ``ms`` (total), and for
predictions ``task`` (``task@version``), ``images``, ``queue_ms``, ``model_ms``, ``batch`` (merged
or mixed). Headers are never logged, so neither is a key. ``--log-level warning`` (or higher)
turns the lines off.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import IO, Any

from manager.serve.auth import ASGIApp, Scope

LEVELS = ("debug", "info", "warning", "error")
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class AccessLog:
    """Writes the lines; thread-safe, one ``write`` per line."""

    def __init__(self, stream: IO[str] | None, level: str = "info"):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = LEVELS.index(level) <= LEVELS.index("info")
        self._lock = threading.Lock()
        self._own = stream is not None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):  # a full disk or a closed stream must not fail requests
                pass

    def close(self) -> None:
        if self._own:
            self.stream.close()


class AccessLogMiddleware:
    """Times each HTTP request, echoes its ``X-Request-ID`` and writes its line.

    Handlers add their fields (task, images, timings) to ``scope["mgr.log"]``.
    """

    def __init__(self, app: ASGIApp, log: AccessLog):
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                rid = value
                break
        rid = rid or uuid.uuid4().hex.encode()
        info: dict[str, Any] = {}
        scope["mgr.log"] = info
        status = [500]

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.log.enabled:
                client = scope.get("client")
                self.log.write({
                    "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    "id": rid.decode(),
                    "client": client[0] if client else None,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status[0],
                    "ms": round((time.perf_counter() - t0) * 1e3, 3),
                    **info,
                })  # fmt: skip
