"""The HTTP side: a FastAPI app over one `Engine` and its `Scheduler`, and ``serve()``.

The routes live in ``v1`` (``/v1``, the probes, ``/metrics``) and ``oip`` (the Open Inference
Protocol, ``/v2``); what they share sits on ``app.state.mgr`` (``state.ServeState``). Around them,
outermost first: the access log (``accesslog``) and API keys (``auth``). ``lifecycle`` holds
start-up and draining; ``inputs`` decoding; ``resolver`` the in-memory catalog view.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from manager.catalog import Catalog, tasks
from manager.catalog.models import VERSION_READY
from manager.errors import BadInput, Busy, MgrError, NotFound
from manager.serve import errors, oip, v1
from manager.serve.accesslog import AccessLog, AccessLogMiddleware
from manager.serve.auth import AuthMiddleware
from manager.serve.engine import Engine
from manager.serve.inputs import Decoder, configure_pil
from manager.serve.metrics import Metrics
from manager.serve.resolver import Resolver, resolve
from manager.serve.scheduler import Scheduler
from manager.serve.state import ServeConfig, ServeState

__all__ = ["ServeConfig", "create_app", "resolve", "serve"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def create_app(state: ServeState, on_start: Callable[[], bool] | None = None) -> Any:
    """The ASGI app over ``state``; its lifespan starts the model worker (which runs
    ``on_start`` first) and closes everything on the way out."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.scheduler.start(on_start)
        try:
            yield
        finally:
            state.scheduler.stop()
            state.decoder.close()
            state.resolver.close()
            state.engine.close()

    docs = state.config.docs
    app = FastAPI(
        title="mgr serve",
        summary="One ViT backbone, every task's adapter, routed per request; /v1 and the Open "
        "Inference Protocol (/v2).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.mgr = state
    errors.install(app)  # each kind of error its status, in one place
    app.include_router(v1.router)
    app.include_router(oip.router)
    if docs:
        _local_docs(app)
    wrapped: Any = AuthMiddleware(app, list(state.config.api_keys), state.config.protect_metrics)
    return AccessLogMiddleware(wrapped, state.access)


def _local_docs(app: FastAPI) -> None:
    """Swagger UI from the installed ``swagger-ui-bundle`` files: no CDN, works offline."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/static", StaticFiles(directory=swagger_ui_path), name="swagger-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="mgr serve",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
        )


def check_catalog(catalog: Catalog, pins: tuple[str, ...]) -> tuple[int, int]:
    """(tasks, servable tasks); NotFound for a pinned task the catalog does not know."""
    with catalog.session(write=False) as s:
        rows = tasks.list_tasks(s)
        names = {t.name for t in rows}
        servable = sum(
            1
            for t in rows
            if t.active_version is not None
            and t.active_version.status == VERSION_READY
            and t.backbone_id is not None
        )
    unknown = [p for p in pins if p not in names]
    if unknown:
        raise NotFound(
            f"cannot pin unknown task(s) {', '.join(map(repr, unknown))}",
            hint="see 'mgr task list'",
        )
    return len(rows), servable


def check_exposure(config: ServeConfig) -> None:
    """BadInput for a non-loopback address without an API key, unless allowed."""
    if config.host not in LOOPBACK and not config.api_keys and not config.allow_unauthenticated:
        raise BadInput(
            f"refusing to listen on {config.host} without an API key",
            hint="pass --api-key-file or set MGR_API_KEY (or --allow-unauthenticated to serve "
            "anyone who can reach it)",
        )


def bind(config: ServeConfig) -> Any:
    """The listening socket, bound before the slow start so that a taken port fails at once."""
    import socket

    try:
        return socket.create_server((config.host, config.port), reuse_port=False)
    except OSError as exc:
        raise Busy(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None


def build_state(home: Any, catalog: Catalog, config: ServeConfig, access: AccessLog) -> ServeState:
    """The server's parts over ``catalog``, nothing loaded yet (the model loads in the
    background once the port answers)."""
    from manager.device import resolve_device

    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    configure_pil(config.max_pixels)
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
        max_memory=config.max_memory,
    )
    scheduler = Scheduler(
        engine,
        max_batch=config.max_batch,
        max_wait_s=config.max_wait_ms / 1e3,
        max_queue=config.max_queue,
        schedule=config.schedule,
        threads=config.threads,
        metrics=metrics,
    )
    return ServeState(
        config=config,
        engine=engine,
        scheduler=scheduler,
        resolver=Resolver(catalog, count=metrics.add),
        decoder=Decoder(config.decode_workers or min(8, os.cpu_count() or 1)),
        metrics=metrics,
        access=access,
    )


def serve(home: Any, catalog: Catalog, config: ServeConfig, log: Callable[[str], None]) -> None:
    """Check, bind, answer probes at once, load the model in the background, serve until a
    signal, drain, and return (see ``lifecycle``)."""
    import uvicorn

    from manager.serve.lifecycle import DrainingServer, make_starter, watch_startup
    from manager.store.fs import Store

    started = time.perf_counter()
    check_exposure(config)
    n_tasks, servable = check_catalog(catalog, config.pins)
    catalog_s = time.perf_counter() - started
    stream = None
    if config.access_log is not None:
        stream = Store.of(home).open_user_log(config.access_log, "the access log")
    sock = bind(config)
    # Printed once nothing can be refused any more: a refusal stays one line.
    log(f"catalog: {n_tasks} task(s), {servable} servable ({catalog_s:.2f} s)")
    state = build_state(home, catalog, config, AccessLog(stream, config.log_level))
    app = create_app(state, on_start=make_starter(state, log, started))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log(
        f"listening on http://{shown}:{port} (/livez answers now; /readyz once loaded"
        + (", API key required" if config.api_keys else "")
        + ")"
    )
    server = DrainingServer(
        uvicorn.Config(
            app,
            log_level="warning" if config.log_level in ("debug", "info") else config.log_level,
            access_log=False,  # ours is the JSON one
            timeout_keep_alive=30,
            timeout_graceful_shutdown=5,
            lifespan="on",
        ),
        state,
        log,
    )
    watch_startup(server, state)
    try:
        server.run(sockets=[sock])
    finally:
        state.access.close()
    if state.failed is not None:
        raise MgrError(state.failed)
    log("stopped")
