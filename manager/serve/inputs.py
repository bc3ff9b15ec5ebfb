"""Request bodies to image tensors: parsing, pixel budgets, decoding off the event loop.

A body is read with a byte limit, parsed (JSON with base64 images, or a multipart form), then
handed to a bounded thread pool that checks every image's size from its header (``max_pixels``
each, ``max_request_pixels`` for the request: 413 before any pixel is decoded), then decodes and
transforms the images one at a time, so a request holds at most one full-size decoded image per
worker thread. A MemoryError on the way is the server's trouble: 503, never a 400 blaming the
image.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from manager.serve.scheduler import ServeError

MAX_TOP_K = 1000

OUT_OF_MEMORY = "the server ran out of memory for this request; retry later or send fewer images"


@dataclass
class Parsed:
    """A prediction request: its target (None: the live task), named image files, top-k."""

    target: str | None
    images: list[tuple[str, bytes]]
    top_k: int


def top_k_of(value: Any) -> int:
    if value is None:
        return 5
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise ServeError(400, f"top_k must be a whole number in 1..{MAX_TOP_K}")
    return value


def task_of(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ServeError(400, "task must be a string: 'name', 'name@version' or 'name@alias'")
    return value


def b64decode(data: str, what: str) -> bytes:
    if data.startswith("data:") and "base64," in data[:100]:
        data = data.split("base64,", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, f"{what} is not valid base64") from None


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
        images.append((name, b64decode(data, f"images[{i}]")))
    return Parsed(task_of(doc.get("task")), images, top_k_of(doc.get("top_k")))


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
    return Parsed(task_of(fields.get("task")), images, top_k_of(fields.get("top_k")))


async def read_body(
    receive_stream: AsyncIterator[bytes], declared: str | None, limit: int
) -> bytes:
    """The body, refused with 413 past ``limit`` bytes (announced or streamed)."""
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ServeError(
            413, f"request body of {int(declared):,} bytes is over the limit of {limit:,}"
        )
    chunks, size = [], 0
    async for chunk in receive_stream:
        size += len(chunk)
        if size > limit:
            raise ServeError(413, f"request body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# -- decoding ---------------------------------------------------------------------------------


class _NamedBytes(io.BytesIO):
    """Image bytes that print as their name (decoding errors name the image, not the buffer)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__  # PIL's messages show the file object's repr


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    return text or type(exc).__name__


def out_of_memory(exc: BaseException) -> bool:
    """A MemoryError, or torch's allocator failing: the server's side, not the request's."""
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


def configure_pil(max_pixels: int) -> None:
    """Once per server: PIL's own bomb limit (for formats sized only while decoding) as an error.

    Set process-wide, once, because toggling PIL's global per image would serialise decoding.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def check_sizes(
    items: Sequence[tuple[str, bytes]], max_pixels: int, max_request_pixels: int
) -> list[int]:
    """Each image's pixel count from its header; 413 past a limit, 400 if unreadable."""
    from PIL import Image

    sizes = []
    for name, data in items:
        try:
            with Image.open(_NamedBytes(data, name)) as im:
                w, h = im.size
        except Exception as exc:
            if out_of_memory(exc):
                raise ServeError(503, OUT_OF_MEMORY) from None
            if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
                raise ServeError(
                    413,
                    f"refusing image {name}: over the limit of {max_pixels:,} pixels "
                    f"(a decompression bomb?): {_reason(exc)}",
                ) from None
            raise ServeError(400, f"cannot read image {name}: {_reason(exc)}") from None
        if w * h > max_pixels:
            raise ServeError(
                413,
                f"refusing image {name}: {w}x{h} is {w * h:,} pixels, over the limit of "
                f"{max_pixels:,} (a decompression bomb?)",
            )
        sizes.append(w * h)
    total = sum(sizes)
    if total > max_request_pixels:
        raise ServeError(
            413,
            f"the request's images hold {total:,} pixels, over the per-request limit of "
            f"{max_request_pixels:,} (--max-request-pixels): send fewer or smaller images",
        )
    return sizes


def decode(name: str, data: bytes) -> Any:
    """One image to RGB (its size already checked); 400 unreadable, 413 a bomb, 503 memory."""
    from PIL import Image

    try:
        with Image.open(_NamedBytes(data, name)) as im:
            im.load()
            return im.convert("RGB")
    except Exception as exc:
        if out_of_memory(exc):
            raise ServeError(503, OUT_OF_MEMORY) from None
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise ServeError(413, f"refusing image {name}: {_reason(exc)}") from None
        raise ServeError(400, f"cannot read image {name}: {_reason(exc)}") from None


def to_tensor(
    items: Sequence[tuple[str, bytes]],
    transform: Callable[[Any], Any],
    max_pixels: int,
    max_request_pixels: int,
) -> Any:
    """The request's images as one normalised batch ``(n, 3, H, W)``.

    Sizes are checked first (no pixel decoded for a refused request); then each image is
    decoded and transformed before the next, so only one full-size image is held at a time.
    """
    check_sizes(items, max_pixels, max_request_pixels)
    return _decode_all(items, transform)


def arrays_to_tensor(
    array: Any, transform: Callable[[Any], Any], max_pixels: int, max_request_pixels: int
) -> Any:
    """Decoded RGB pixels ``(n, H, W, 3)`` uint8 through the same transform as image files."""
    import torch
    from PIL import Image

    n, h, w = array.shape[:3]
    if h * w > max_pixels:
        raise ServeError(413, f"{w}x{h} images are over the limit of {max_pixels:,} pixels")
    if n * h * w > max_request_pixels:
        raise ServeError(
            413,
            f"the request's images hold {n * h * w:,} pixels, over the per-request limit of "
            f"{max_request_pixels:,} (--max-request-pixels)",
        )
    try:
        return torch.stack([transform(Image.fromarray(a, "RGB")) for a in array])
    except Exception as exc:
        if out_of_memory(exc):
            raise ServeError(503, OUT_OF_MEMORY) from None
        raise


async def to_tensor_parallel(
    decoder: Decoder,
    items: Sequence[tuple[str, bytes]],
    transform: Callable[[Any], Any],
    max_pixels: int,
    max_request_pixels: int,
) -> Any:
    """`to_tensor` with a many-image request's images shared out over the decoding threads
    (PIL's decoders and resizes release the GIL), sizes checked once first for all."""
    import torch

    parts = min(decoder.workers, len(items) // MIN_PER_THREAD)
    if parts <= 1:  # one hop to one thread
        return await decoder.run(to_tensor, items, transform, max_pixels, max_request_pixels)
    await decoder.run(check_sizes, items, max_pixels, max_request_pixels)
    step = -(-len(items) // parts)
    chunks = [items[i : i + step] for i in range(0, len(items), step)]
    tensors = await asyncio.gather(*(decoder.run(_decode_all, c, transform) for c in chunks))
    return torch.cat(tensors)


MIN_PER_THREAD = 4  # below this, handing images to another thread costs more than it saves


def _decode_all(items: Sequence[tuple[str, bytes]], transform: Callable[[Any], Any]) -> Any:
    import torch

    try:
        out = []
        for name, data in items:
            image = decode(name, data)
            out.append(transform(image))
            del image
        return torch.stack(out)
    except Exception as exc:
        if out_of_memory(exc):
            raise ServeError(503, OUT_OF_MEMORY) from None
        raise


class Decoder:
    """A bounded pool of decoding threads, so the event loop never decodes and memory is capped
    by ``workers`` images in flight."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mgr-decode")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
