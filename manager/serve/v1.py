"""The ``/v1`` API and the probes: ``POST /v1/predict``, ``GET /v1/tasks``, ``/healthz``,
``/livez``, ``/readyz``, ``/metrics``; and the prediction path both protocols share.

``POST /v1/predict`` takes JSON (``{"task": "pets@3", "images": [base64...], "top_k": 5}``) or a
multipart form (``task``, ``top_k`` fields and image files). The task resolves through the
in-memory catalog view (``resolver``), so a version promoted elsewhere answers the next request;
images are decoded off the event loop (``inputs``) and only tensors reach the model's worker
thread. Every refusal is ``{"error": "<one line>"}`` with a 4xx status (5xx: the server's or an
artifact's fault) and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from manager.catalog import tasks
from manager.catalog.refs import VersionRef
from manager.errors import MgrError
from manager.serve import inputs
from manager.serve.errors import ServeError, error, status_of
from manager.serve.metrics import CONTENT_TYPE
from manager.serve.scheduler import Job, Result
from manager.serve.state import ServeState

router = APIRouter()


def state_of(request: Request) -> ServeState:
    return request.app.state.mgr


@dataclass
class Call:
    """One prediction request, whichever protocol: what every prediction route starts with."""

    request: Request
    state: ServeState
    t0: float  # arrival, for the answer's timings and the latency metric
    log: dict[str, Any]  # fields the access log line adds (task, images, queue_ms...)
    body: bytes = field(default=b"", repr=False)

    async def answer(self, work: Callable[[Call], Awaitable[Response]]) -> Response:
        """Read the body (bounded by ``max_body_bytes``) and run ``work``, in flight and
        counted; every refusal is one line with its kind's status (`guarded`)."""

        async def run() -> Response:
            self.body = await inputs.read_body(
                self.request.stream(),
                self.request.headers.get("content-length"),
                self.state.config.max_body_bytes,
            )
            return await work(self)

        return await guarded(self.state, self.t0, run)


async def call_of(request: Request) -> Call:
    """The FastAPI dependency of the prediction routes (``/v1/predict``, ``/v2/.../infer``)."""
    return Call(
        request, state_of(request), time.perf_counter(), request.scope.setdefault("mgr.log", {})
    )


CallDep = Annotated[Call, Depends(call_of)]


def not_ready(state: ServeState) -> str | None:
    """Why predictions are refused now (None: they are not)."""
    if state.draining:
        return "the server is shutting down; retry"
    if state.failed:
        return state.failed
    if not state.ready:
        return "the server is starting; retry when /readyz says ready"
    return None


async def resolve(state: ServeState, target: str | None) -> tuple[VersionRef, list[str]]:
    if state.resolver.cached:  # microseconds: no transaction unless the catalog changed
        return state.resolver(target)
    return await state.decoder.run(state.resolver, target)


async def run_model(
    state: ServeState,
    target: str | None,
    n_images: int,
    make_batch: Callable[[Callable[[Any], Any]], Awaitable[Any]],
    log: dict[str, Any],
) -> tuple[Result, float]:
    """Resolve ``target``, build the batch off the loop, queue it; (result, decode seconds).

    ``await make_batch(transform)`` returns ``(n, 3, H, W)``, its work done on decoding threads.
    """
    why = not_ready(state)
    if why is not None:
        raise ServeError(503, why)
    limit = state.config.max_images
    if n_images > limit:
        raise ServeError(413, f"{n_images} images in one request, over the limit of {limit}")
    ref, names = await resolve(state, target)
    log["task"] = ref.label
    log["images"] = n_images
    transform = state.engine._transforms.get(ref.backbone_id)  # type: ignore[arg-type]
    if transform is None:  # a backbone not used yet: its config, not its weights
        transform = await state.decoder.run(state.engine.transform_for, ref.backbone_id)

    t0 = time.perf_counter()
    batch = await make_batch(transform)
    decode_s = time.perf_counter() - t0
    result = await submit(state, ref, names, batch)
    log["queue_ms"] = round(result.queue_s * 1e3, 3)
    log["model_ms"] = round(result.model_s * 1e3, 3)
    log["batch"] = result.mode
    return result, decode_s


async def submit(state: ServeState, ref: VersionRef, names: list[str], images: Any) -> Result:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Result | ServeError] = loop.create_future()

    def done(r: Result | ServeError) -> None:
        def set_() -> None:
            if not fut.done():
                fut.set_result(r)

        loop.call_soon_threadsafe(set_)

    state.scheduler.submit(Job(ref, names, images, done))
    timeout = state.config.timeout_s
    try:
        r = await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        raise ServeError(503, f"no answer within {timeout:g} s; retry") from None
    if isinstance(r, ServeError):
        raise r
    return r


async def guarded(state: ServeState, t0: float, work: Callable[[], Any]) -> Response:
    """Run a prediction handler: every failure one line with its status; counted, in flight.

    Library errors and ServeErrors go on to the app's handlers (``serve.errors``), which answer
    with the status counted here; anything else is answered here, never re-raised (a traceback
    in the server's log is for bugs in the server, not for a request that ran out of memory).
    """
    status = 200
    state.enter()
    try:
        response = await work()
        status = response.status_code
        return response
    except (ServeError, MgrError) as exc:
        status = status_of(exc)
        raise
    except Exception as exc:
        status = 503 if inputs.out_of_memory(exc) else 500
        return error(status, f"internal error: {type(exc).__name__}: {exc}")
    finally:
        state.leave()
        state.metrics.request(status, time.perf_counter() - t0)


def prediction_json(names: list[str], result: Result, top_k: int) -> list[dict[str, Any]]:
    k = min(top_k, result.probs.shape[1])
    values, idx = result.probs.topk(k, dim=-1)
    out = []
    for name, vs, ids in zip(names, values.tolist(), idx.tolist(), strict=True):
        top = [
            {"class": result.class_names[i], "index": int(i), "probability": float(v)}
            for v, i in zip(vs, ids, strict=True)
        ]
        out.append({"image": name, "top": top})
    return out


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


@router.post("/v1/predict", openapi_extra=PREDICT_DOC, summary="Classify images with a task")
async def predict(call: CallDep) -> Response:
    return await call.answer(_predict)


async def _predict(call: Call) -> Response:
    state, cfg, headers = call.state, call.state.config, call.request.headers
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        parsed = await inputs.parse_multipart(headers, call.body, cfg.max_images)
    elif ctype in ("application/json", ""):
        parsed = inputs.parse_json(call.body)
    else:
        raise ServeError(415, f"unsupported content type {ctype!r}: send JSON or multipart")
    call.body = b""  # the decoded images are what is kept from here on
    result, decode_s = await run_model(
        state,
        parsed.target,
        len(parsed.images),
        lambda transform: inputs.to_tensor_parallel(
            state.decoder, parsed.images, transform, cfg.max_pixels, cfg.max_request_pixels
        ),
        call.log,
    )
    ref = result.ref
    return JSONResponse(
        {
            "task": ref.task,
            "version": ref.number,
            "answered": ref.label,
            "predictions": prediction_json(
                [name for name, _ in parsed.images], result, parsed.top_k
            ),
            "timings": {
                "total_ms": round((time.perf_counter() - call.t0) * 1e3, 3),
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


@router.get("/v1/tasks", summary="Tasks: active version, backbone, loaded, servable and why not")
def list_tasks(request: Request) -> JSONResponse:
    state = state_of(request)
    engine = state.engine
    why = engine.servable()
    loaded = set(engine.switchers)
    rows = []
    with engine.catalog.session(write=False) as s:
        for t in tasks.list_tasks(s):
            sw = engine.switchers.get(t.backbone_id) if t.backbone_id is not None else None
            backbone = t.backbone
            rows.append(
                {
                    "task": t.name,
                    "active": t.active_version.number if t.active_version else None,
                    "method": t.active_version.method if t.active_version else None,
                    "classes": t.num_classes,
                    "backbone": backbone.spec if backbone is not None else t.backbone_spec,
                    "loaded": t.backbone_id in loaded,
                    "servable": why.get(t.name) is None,
                    "why_not": why.get(t.name),
                    "resident": sw is not None and t.name in sw.cache.tasks(),
                    "pinned": t.name in engine.pins,
                    "live": sw is not None and sw.current is not None and sw.current.task == t.name,
                }
            )
    return JSONResponse({"tasks": rows})


@router.get("/healthz", summary="Liveness and what the server holds")
def healthz(request: Request) -> JSONResponse:
    state = state_of(request)
    engine = state.engine
    backbones = [
        {
            "backbone": engine.label(b),
            "bytes": engine.resident_bytes(b),
            "live": sw.current.label if sw.current else None,
            "resident": sorted(sw.cache.tasks()),
        }
        for b, sw in list(engine.switchers.items())
    ]
    return JSONResponse(
        {
            "status": "ok",
            "ready": state.ready and not state.draining,
            "device": str(engine.device),
            "precision": str(engine.dtype).removeprefix("torch."),
            "backbone": backbones[-1]["backbone"] if backbones else None,
            "backbones": backbones,
            "max_memory": engine.max_memory,
            "queued": state.scheduler.queued,
            "costs": engine.costs.to_dict() if engine.costs else None,
        }
    )


@router.get("/livez", summary="Liveness: 200 while the process answers")
def livez() -> JSONResponse:
    return JSONResponse({"status": "alive"})


@router.get("/readyz", summary="Readiness: 200 once the model is loaded, 503 before and draining")
def readyz(request: Request) -> JSONResponse:
    why = not_ready(state_of(request))
    if why is not None:
        return error(503, why)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics")
def prometheus(request: Request) -> Response:
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE)
