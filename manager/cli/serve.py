"""``mgr serve``: one long-running HTTP server for every task, routed per request."""

from __future__ import annotations

import click

from manager.cli.app import App, pass_app
from manager.cli.types import FiniteFloat, Int64, Size, device_option

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command("serve")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (loopback by default: there is no authentication).",
)
@click.option(
    "--port",
    type=Int64(0, 65535),
    default=8000,
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
    default=64,
    show_default=True,
    help="Most images in one model batch.",
)
@click.option(
    "--max-wait-ms",
    type=FiniteFloat(0, 10_000),
    default=5.0,
    show_default=True,
    help="How long the first waiting request may wait for a batch to fill.",
)
@click.option(
    "--resident",
    type=Int64(1, 100_000),
    default=8,
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
    default="32MiB",
    show_default=True,
    help="Refuse request bodies larger than this.",
)
@click.option(
    "--max-pixels",
    type=Int64(1),
    default=40_000_000,
    show_default=True,
    help="Refuse images with more pixels than this (decompression bombs).",
)
@click.option(
    "--max-images",
    type=Int64(1, 100_000),
    default=256,
    show_default=True,
    help="Most images in one request.",
)
@click.option(
    "--max-queue",
    type=Int64(1),
    default=4096,
    show_default=True,
    help="Most images waiting; past it requests get 503.",
)
@click.option(
    "--schedule",
    type=click.Choice(["auto", "switch", "mixed"]),
    default="auto",
    show_default=True,
    help="Several tasks waiting: the measured cost model's choice, always switch, or "
    "mixed-task batches whenever the deltas allow.",
)
@click.option(
    "--threads",
    type=Int64(0, 1024),
    default=0,
    help="CPU threads of the model's kernels (0: torch's default). On a busy CPU, 1 "
    "avoids oversubscription.",
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
) -> None:  # fmt: skip
    """Serve every task over HTTP: POST /v1/predict, GET /v1/tasks, /healthz, /metrics, /docs."""
    from manager.names import validate_task_name
    from manager.serve.app import ServeConfig, serve

    for name in pins:
        validate_task_name(name)
    if host not in LOOPBACK:
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
    )
    serve(app.home, app.catalog, config, log=lambda m: click.echo(m, err=True))
