"""A small client of ``mgr serve`` on the standard library (``mgr predict --server``, tests).

Images travel as their file bytes in a multipart form; the server decodes and checks them. The
API key (``api_key``, else ``MGR_API_KEY``) goes as ``Authorization: Bearer``; it is never printed.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

from manager.errors import BadInput, Busy, Conflict, MgrError, NotFound


def multipart(
    fields: dict[str, str], files: Sequence[tuple[str, bytes]], field: str = "images"
) -> tuple[bytes, str]:
    """``(body, content type)`` of a multipart/form-data request."""
    boundary = f"mgr-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for filename, data in files:
        safe = filename.replace('"', "%22").replace("\r", " ").replace("\n", " ")
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{safe}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _endpoint(url: str, path: str) -> str:
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise MgrError(f"bad server URL {url!r}: expected http://HOST:PORT")
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}{path}"


# What a status says of the request, read back into the library's kinds (``serve.errors``); a 5xx
# other than 503 stays a plain MgrError: the server's trouble, whatever its kind was there.
KIND_OF_STATUS: dict[int, type[MgrError]] = {
    400: BadInput,
    404: NotFound,
    409: Conflict,
    413: BadInput,
    415: BadInput,
    503: Busy,
}


def kind_of(status: int) -> type[MgrError]:
    """The error kind an HTTP answer's status stands for."""
    return KIND_OF_STATUS.get(status, MgrError)


def request(
    url: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    timeout: float = 120.0,
    api_key: str | None = None,
) -> dict[str, Any]:
    """GET (no body) or POST to the server; on a 4xx or 5xx the error kind its status stands for
    (`kind_of`: 404 NotFound, 503 Busy...) with the server's reason.

    ``api_key`` (default: ``MGR_API_KEY``) is sent as a bearer token.
    """
    target = _endpoint(url, path)
    req = urllib.request.Request(target, data=body, method="POST" if body is not None else "GET")
    key = api_key if api_key is not None else os.environ.get("MGR_API_KEY", "").strip()
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            reason = exc.reason
        raise kind_of(exc.code)(f"server {url}: {reason} (HTTP {exc.code})") from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise Busy(f"cannot reach the server at {url}: {why}") from None
    except ValueError as exc:
        raise MgrError(f"server {url} sent a malformed answer: {exc}") from None


def predict_files(
    url: str,
    paths: Sequence[str | os.PathLike[str]],
    task: str | None = None,
    top_k: int = 5,
    api_key: str | None = None,
) -> dict[str, Any]:
    """The server's answer for image files: ``{"task", "version", "predictions", ...}``.

    ``predictions[i]["image"]`` is ``paths[i]`` as given.
    """
    files = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                files.append((os.path.basename(os.fspath(p)), f.read()))
        except FileNotFoundError:
            raise MgrError(f"image {p} not found") from None
        except OSError as exc:
            raise MgrError(f"cannot read image {p}: {exc.strerror or exc}") from None
    fields = {"top_k": str(top_k)}
    if task is not None:
        fields["task"] = task
    body, ctype = multipart(fields, files)
    answer = request(url, "/v1/predict", body, ctype, api_key=api_key)
    for p, pred in zip(paths, answer.get("predictions", []), strict=False):
        pred["image"] = str(p)
    return answer
