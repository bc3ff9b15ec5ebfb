"""``mgr serve``: one long-running HTTP server for every task, routed per request.

Every default here is a field of ``ServeConfig`` (``serve/state.py``), the one place they are
written: the CLI and a Python caller of ``serve()`` get the same server.
"""

from __future__ import annotations

import click

from manager.cli.app import App, pass_app
from manager.cli.types import FiniteFloat, Int64, Size, device_option
from manager.serve.state import SCHEDULES, ServeConfig
from manager.units import format_size

DEFAULT = ServeConfig()


@click.command("serve")
@click.option(
    "--host",
    default=DEFAULT.host,
    show_default=True,
    help="Address to listen on. Loopback by default; any other address needs an API key "
    "(--api-key-file or MGR_API_KEY) or --allow-unauthenticated.",
)
@click.option(
    "--port",
    type=Int64(0, 65535),
    default=DEFAULT.port,
    show_default=True,
    help="Port (0: any free one; the address is printed).",
)
@device_option
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    help="Compute precision. [default: bf16 on CUDA, fp32 on CPU]",
)
@click.option(
    "--max-batch",
    type=Int64(1, 4096),
    default=DEFAULT.max_batch,
    show_default=True,
    help="Most images in one model batch.",
)
@click.option(
    "--max-wait-ms",
    type=FiniteFloat(0, 10_000),
    default=DEFAULT.max_wait_ms,
    show_default=True,
    help="How long the first waiting request may wait for a batch to fill.",
)
@click.option(
    "--resident",
    type=Int64(1, 100_000),
    default=DEFAULT.resident,
    show_default=True,
    help="Task deltas kept resident on the device (LRU), besides pinned ones.",
)
@click.option(
    "--pin",
    "pins",
    multiple=True,
    metavar="TASK",
    help="Keep this task's delta resident (repeatable); loaded at start-up.",
)
@click.option(
    "--max-body-bytes",
    type=Size(),
    default=DEFAULT.max_body_bytes,
    help="Refuse request bodies larger than this. "
    f"[default: {format_size(DEFAULT.max_body_bytes, binary=True)}]",
)
@click.option(
    "--max-pixels",
    type=Int64(1),
    default=DEFAULT.max_pixels,
    show_default=True,
    help="Refuse images with more pixels than this (decompression bombs).",
)
@click.option(
    "--max-images",
    type=Int64(1, 100_000),
    default=DEFAULT.max_images,
    show_default=True,
    help="Most images in one request.",
)
@click.option(
    "--max-queue",
    type=Int64(1),
    default=DEFAULT.max_queue,
    show_default=True,
    help="Most images waiting; past it requests get 503.",
)
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default=DEFAULT.schedule,
    show_default=True,
    help="Several tasks waiting: the measured cost model's choice, always switch, or "
    "mixed-task batches whenever the deltas allow.",
)
@click.option(
    "--threads",
    type=Int64(0, 1024),
    default=DEFAULT.threads,
    help="CPU threads of the model's kernels (0: torch's default). On a busy CPU, 1 "
    "avoids oversubscription.",
)
@click.option(
    "--max-memory",
    type=Size(),
    help="Bytes the loaded backbones may hold together (W0, its serving copy, resident deltas, "
    "mixed-task tables): device memory on CUDA, host memory on CPU. The least recently used "
    "backbone without a pinned task is unloaded to make room; a request that cannot fit gets "
    "503. [default: no bound]",
)
@click.option(
    "--max-request-pixels",
    type=Int64(1),
    default=DEFAULT.max_request_pixels,
    show_default=True,
    help="Refuse a request whose images hold more pixels than this in all (read from the "
    "headers, before decoding): 413.",
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    help="Accept only requests with 'Authorization: Bearer KEY', KEY one of this file's lines "
    "(MGR_API_KEY adds one more). /livez, /readyz and /v2/health/* stay open.",
)
@click.option(
    "--protect-metrics",
    is_flag=True,
    default=DEFAULT.protect_metrics,
    help="Require the API key for /metrics too (open by default, for Prometheus).",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    default=DEFAULT.allow_unauthenticated,
    help="Allow a non-loopback --host without an API key (anyone who can reach it can use it).",
)
@click.option(
    "--access-log",
    type=click.Path(dir_okay=False),
    help="Write the JSON access log lines to this file (appended) instead of stderr.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=DEFAULT.log_level,
    show_default=True,
    help="'info' writes one access log line per request; 'warning' and above do not.",
)
@click.option(
    "--drain-seconds",
    type=FiniteFloat(0, 3600),
    default=DEFAULT.drain_seconds,
    show_default=True,
    help="On SIGTERM or SIGINT, how long queued requests may take to be answered; the rest "
    "get 503, then the server exits 0.",
)
@click.option(
    "--no-docs",
    is_flag=True,
    default=not DEFAULT.docs,
    help="Serve no /docs and no /openapi.json (the docs use local files, never a CDN).",
)
@pass_app
def command(
    app: App,
    host: str,
    port: int,
    device: str,
    precision: str | None,
    max_batch: int,
    max_wait_ms: float,
    resident: int,
    pins: tuple[str, ...],
    max_body_bytes: int,
    max_pixels: int,
    max_images: int,
    max_queue: int,
    schedule: str,
    threads: int,
    max_memory: int | None,
    max_request_pixels: int,
    api_key_file: str | None,
    protect_metrics: bool,
    allow_unauthenticated: bool,
    access_log: str | None,
    log_level: str,
    drain_seconds: float,
    no_docs: bool,
) -> None:  # fmt: skip
    """Serve every task over HTTP: POST /v1/predict, GET /v1/tasks, the Open Inference
    Protocol under /v2 (KServe, Triton clients), /livez, /readyz, /healthz, /metrics, /docs.

    The port answers at once; /readyz is 503 until the model is loaded and measured. SIGTERM
    drains (queued requests answered) and exits 0.
    """
    from manager.names import validate_task_name
    from manager.serve.app import LOOPBACK, ServeConfig, serve
    from manager.serve.auth import load_keys

    for name in pins:
        validate_task_name(name)
    keys = load_keys(api_key_file)
    if host not in LOOPBACK and not keys and allow_unauthenticated:
        click.echo(f"note: listening on {host}: anyone who can reach it can use it", err=True)
    config = ServeConfig(
        host=host,
        port=port,
        device=device,
        precision=precision,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        resident=resident,
        pins=tuple(pins),
        max_body_bytes=max_body_bytes,
        max_pixels=max_pixels,
        max_images=max_images,
        max_queue=max_queue,
        schedule=schedule,
        threads=threads,
        max_request_pixels=max_request_pixels,
        max_memory=max_memory,
        api_keys=tuple(keys),
        protect_metrics=protect_metrics,
        allow_unauthenticated=allow_unauthenticated,
        access_log=access_log,
        log_level=log_level,
        drain_seconds=drain_seconds,
        docs=not no_docs,
    )
    serve(app.home, app.catalog, config, log=lambda m: click.echo(m, err=True))
