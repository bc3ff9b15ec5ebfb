"""The HTTP side: a FastAPI app over one `Engine` and its `Scheduler`.

``POST /v1/predict`` takes JSON (``{"task": "pets@3", "images": [base64...], "top_k": 5}``) or a
multipart form (``task``, ``top_k`` fields and image files). Each request resolves its task in the
catalog (one read transaction), so a version promoted by ``mgr train`` elsewhere answers the next
request; images are decoded on a request thread (header-checked pixel limit, as ``mgr predict``)
and only tensors reach the model's worker thread. Every refusal is ``{"error": "<one line>"}``
with a 4xx status (5xx: the server's or an artifact's fault) and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from manager.catalog import Catalog, tasks
from manager.catalog.deployment import get_deployment
from manager.catalog.models import VERSION_READY
from manager.catalog.refs import VersionRef, select_version
from manager.errors import MgrError
from manager.names import parse_version_selector
from manager.serve.engine import Engine
from manager.serve.metrics import Metrics
from manager.serve.scheduler import Job, Result, Scheduler, ServeError

MAX_TOP_K = 1000


@dataclass
class ServeConfig:
    """What ``mgr serve`` was asked for (the limits apply per request)."""

    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    precision: str | None = None
    max_batch: int = 64
    max_wait_ms: float = 5.0
    resident: int = 8
    pins: tuple[str, ...] = ()
    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_images: int = 256
    max_queue: int = 4096
    schedule: str = "auto"
    threads: int = 0  # torch intra-op threads of the model; 0: torch's default
    timeout_s: float = 120.0


class _NamedBytes(io.BytesIO):
    """Image bytes that print as their name (decoding errors name the image, not the buffer)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__  # PIL's messages show the file object's repr


# PIL's decompression-bomb limit is a process global that read_image sets around each decode.
_DECODE_LOCK = threading.Lock()


def decode_images(items: list[tuple[str, bytes]], max_pixels: int) -> list[Any]:
    """PIL RGB images; ServeError 413 for too many pixels, 400 for anything unreadable."""
    from manager.datasets.folder import read_image

    out = []
    for name, data in items:
        try:
            with _DECODE_LOCK:
                out.append(read_image(_NamedBytes(data, name), max_pixels))
        except MgrError as exc:
            status = 413 if str(exc).startswith("refusing image") else 400
            raise ServeError(status, str(exc)) from None
    return out


def resolve(catalog: Catalog, target: str | None) -> tuple[VersionRef, list[str]]:
    """The version a request names (None: the home's live task), checked servable."""
    with catalog.session(write=False) as s:
        if target is None:
            v = get_deployment(s, catalog.home.host).version
            if v is None:
                raise ServeError(400, "no task given and none is live: pass a task")
            task = v.task
        else:
            try:
                name, selector = parse_version_selector(target)
            except MgrError as exc:
                raise ServeError(400, str(exc)) from None
            task = tasks.find_task(s, name)
            if task is None:
                raise ServeError(404, f"unknown task {name!r}")
            if selector is None and task.active_version is None:
                raise ServeError(404, f"task {name!r} has no active version")
            try:  # a number, or an alias ("pets@champion", "pets@candidate")
                v = select_version(s, task, selector)
            except MgrError as exc:
                raise ServeError(404, str(exc)) from None
        if v.status != VERSION_READY:
            raise ServeError(409, f"version {v.number} of {task.name!r} is {v.status}")
        if task.backbone_id is None:
            raise ServeError(409, f"task {task.name!r} is not bound to a backbone")
        return VersionRef.of(v), list((v.lineage or {}).get("classes") or task.class_names)


@dataclass
class Parsed:
    target: str | None
    images: list[tuple[str, bytes]]
    top_k: int


def _top_k(value: Any) -> int:
    if value is None:
        return 5
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise ServeError(400, f"top_k must be a whole number in 1..{MAX_TOP_K}")
    return value


def _task(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ServeError(400, "task must be a string: 'name', 'name@version' or 'name@alias'")
    return value


def parse_json(body: bytes) -> Parsed:
    """``{"task", "images": [base64 | {"name", "data"}], "top_k"}``."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ServeError(400, f"malformed JSON: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(doc, dict):
        raise ServeError(400, "the JSON body must be an object with 'task' and 'images'")
    unknown = sorted(set(doc) - {"task", "images", "top_k"})
    if unknown:
        raise ServeError(400, f"unknown field(s): {', '.join(map(str, unknown))[:200]}")
    raw = doc.get("images")
    if not isinstance(raw, list) or not raw:
        raise ServeError(400, "'images' must be a non-empty list of base64 strings")
    images = []
    for i, item in enumerate(raw):
        name, data = f"image-{i}", item
        if isinstance(item, dict):
            name, data = str(item.get("name", name))[:200], item.get("data")
        if not isinstance(data, str):
            raise ServeError(400, f"images[{i}] must be a base64 string")
        if data.startswith("data:") and "base64," in data[:100]:
            data = data.split("base64,", 1)[1]
        try:
            images.append((name, base64.b64decode(data, validate=True)))
        except (binascii.Error, ValueError):
            raise ServeError(400, f"images[{i}] is not valid base64") from None
    return Parsed(_task(doc.get("task")), images, _top_k(doc.get("top_k")))


async def parse_multipart(headers: Any, body: bytes, max_images: int) -> Parsed:
    """A form with ``task``, ``top_k`` and image files (any field name)."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(
        headers, stream(), max_files=max_images, max_fields=16, max_part_size=len(body) + 1
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ServeError(400, f"malformed multipart body: {exc.message}") from None
    images, fields = [], {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            images.append((value.filename or f"image-{len(images)}", await value.read()))
        else:
            fields[key] = value
    await form.close()
    if not images:
        raise ServeError(400, "the form holds no image files")
    return Parsed(_task(fields.get("task")), images, _top_k(fields.get("top_k")))


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit`` bytes (announced or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ServeError(
            413, f"request body of {int(declared):,} bytes is over the limit of {limit:,}"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(413, f"request body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def prediction_json(parsed: Parsed, result: Result, top_k: int) -> list[dict[str, Any]]:
    k = min(top_k, result.probs.shape[1])
    values, idx = result.probs.topk(k, dim=-1)
    out = []
    for (name, _), vs, ids in zip(parsed.images, values.tolist(), idx.tolist(), strict=True):
        top = [
            {"class": result.class_names[i], "index": int(i), "probability": float(v)}
            for v, i in zip(vs, ids, strict=True)
        ]
        out.append({"image": name, "top": top})
    return out


def error(status: int, message: str) -> JSONResponse:
    line = " ".join(str(message).split())  # one line, whatever the cause printed
    return JSONResponse({"error": line}, status_code=status)


PREDICT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "task": {"type": "string", "example": "pets@3",
                                 "description": "name, name@version or name@alias; default: live"},
                        "images": {"type": "array", "items": {"type": "string",
                                   "format": "byte"}, "description": "base64 image files"},
                        "top_k": {"type": "integer", "default": 5, "minimum": 1},
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "task": {"type": "string"},
                        "top_k": {"type": "integer"},
                        "images": {"type": "array", "items": {"type": "string",
                                   "format": "binary"}},
                    },
                }
            },
        },
    }
}  # fmt: skip


def create_app(
    engine: Engine,
    scheduler: Scheduler,
    config: ServeConfig,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The app; ``scheduler`` is started with it and stopped when it shuts down."""
    metrics: Metrics = engine.metrics
    catalog = engine.catalog

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()
            if on_shutdown is not None:
                on_shutdown()

    app = FastAPI(
        title="mgr serve",
        summary="One ViT backbone, every task's adapter, routed per request.",
        lifespan=lifespan,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, f"bad request: {exc.errors()[:1]}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    def prepare(parsed: Parsed) -> tuple[VersionRef, list[str], Any, float]:
        n = len(parsed.images)
        if n > config.max_images:
            raise ServeError(
                413, f"{n} images in one request, over the limit of {config.max_images}"
            )
        ref, names = resolve(catalog, parsed.target)
        t0 = time.perf_counter()
        images = decode_images(parsed.images, config.max_pixels)
        transform = engine.transform
        if transform is not None:  # else the worker transforms once the backbone is loaded
            import torch

            images = torch.stack([transform(im) for im in images])
        return ref, names, images, time.perf_counter() - t0

    async def answer(ref: VersionRef, names: list[str], images: Any) -> Result:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result | ServeError] = loop.create_future()

        def done(r: Result | ServeError) -> None:
            def set_() -> None:
                if not fut.done():
                    fut.set_result(r)

            loop.call_soon_threadsafe(set_)

        scheduler.submit(Job(ref, names, images, done))
        try:
            r = await asyncio.wait_for(fut, config.timeout_s)
        except asyncio.TimeoutError:
            raise ServeError(503, f"no answer within {config.timeout_s:g} s; retry") from None
        if isinstance(r, ServeError):
            raise r
        return r

    @app.post("/v1/predict", openapi_extra=PREDICT_DOC, summary="Classify images with a task")
    async def predict(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        status = 200
        try:
            body = await read_body(request, config.max_body_bytes)
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype == "multipart/form-data":
                parsed = await parse_multipart(request.headers, body, config.max_images)
            elif ctype in ("application/json", ""):
                parsed = parse_json(body)
            else:
                raise ServeError(415, f"unsupported content type {ctype!r}: send JSON or multipart")
            ref, names, images, decode_s = await run_in_threadpool(prepare, parsed)
            result = await answer(ref, names, images)
            total = time.perf_counter() - t0
            return JSONResponse(
                {
                    "task": ref.task,
                    "version": ref.number,
                    "answered": ref.label,
                    "predictions": prediction_json(parsed, result, parsed.top_k),
                    "timings": {
                        "total_ms": round(total * 1e3, 3),
                        "decode_ms": round(decode_s * 1e3, 3),
                        "queue_ms": round(result.queue_s * 1e3, 3),
                        "model_ms": round(result.model_s * 1e3, 3),
                    },
                    "batch": {
                        "mode": result.mode,
                        "images": result.batch_images,
                        "tasks": result.batch_tasks,
                        "switched": result.switched,
                    },
                }
            )
        except ServeError as exc:
            status = exc.status
            return error(exc.status, exc.message)
        except MgrError as exc:  # the catalog (busy, damaged): the server's side
            status = 503
            return error(503, str(exc))
        except Exception as exc:
            status = 500
            return error(500, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            metrics.request(status, time.perf_counter() - t0)

    @app.get("/v1/tasks", summary="Tasks, their active versions and what is resident")
    def list_tasks() -> JSONResponse:
        resident = engine.sw.resident_tasks()
        current = engine.sw.current
        with catalog.session(write=False) as s:
            rows = [
                {
                    "task": t.name,
                    "active": t.active_version.number if t.active_version else None,
                    "method": t.active_version.method if t.active_version else None,
                    "classes": t.num_classes,
                    "resident": t.name in resident,
                    "pinned": t.name in engine.sw.pins,
                    "live": current is not None and current.task == t.name,
                }
                for t in tasks.list_tasks(s)
            ]
        return JSONResponse({"tasks": rows})

    @app.get("/healthz", summary="Liveness and what the server holds")
    def healthz() -> JSONResponse:
        backbone = engine.sw.backbone
        return JSONResponse(
            {
                "status": "ok",
                "device": str(engine.device),
                "precision": str(engine.dtype).removeprefix("torch."),
                "backbone": backbone.spec if backbone else None,
                "live": engine.sw.current.label if engine.sw.current else None,
                "queued": scheduler.queued,
                "costs": engine.costs.to_dict() if engine.costs else None,
            }
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def serve(home: Any, catalog: Catalog, config: ServeConfig, log: Callable[[str], None]) -> None:
    """Bind, load the backbone and deltas, measure costs, then serve until interrupted."""
    import socket

    import uvicorn

    from manager.device import resolve_device

    try:  # bound before the slow start, so a taken port fails at once
        sock = socket.create_server((config.host, config.port), reuse_port=False)
    except OSError as exc:
        raise MgrError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from None
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    metrics = Metrics()
    engine = Engine(
        home,
        catalog,
        device=str(resolve_device(config.device)),
        precision=config.precision,
        resident=config.resident,
        pins=config.pins,
        max_batch=config.max_batch,
        metrics=metrics,
    )
    engine.start(warn=lambda m: log(f"note: {m}"))
    scheduler = Scheduler(
        engine,
        max_batch=config.max_batch,
        max_wait_s=config.max_wait_ms / 1e3,
        max_queue=config.max_queue,
        schedule=config.schedule,
        threads=config.threads,
        metrics=metrics,
    )
    app = create_app(engine, scheduler, config, on_shutdown=engine.close)
    host, port = sock.getsockname()[:2]
    costs = engine.costs
    log(
        f"serving {len(engine.active_refs())} task(s) on http://{host}:{port} "
        f"({engine.device}, {str(engine.dtype).removeprefix('torch.')}; "
        + (
            f"switch {costs.switch * 1e3:.2f} ms, forward {costs.merged(1) * 1e3:.1f} ms/1 "
            f"{costs.merged(config.max_batch) * 1e3:.1f} ms/{config.max_batch}"
            if costs
            else "no task to measure yet"
        )
        + ")"
    )
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=30)
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after shutting down
        server.run(sockets=[sock])
    log("stopped")
