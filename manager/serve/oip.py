"""The Open Inference Protocol (KServe v2), beside ``/v1``: what KServe and Triton clients call.

- ``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready``;
- ``GET /v2/models/{task}[/versions/{v}]`` (metadata) and ``.../ready``;
- ``POST /v2/models/{task}[/versions/{v}]/infer``.

A model is a task; a version is a version number or an alias (no version: the champion). The
one input, any name, is either

- ``BYTES [n]``: encoded image files (PNG, JPEG, ...), the same decoding as ``/v1``; in JSON
  each element is base64, in the binary extension each is a 4-byte little-endian length and the
  bytes (what ``tritonclient`` sends);
- ``UINT8 [n, H, W, 3]``: decoded RGB pixels, resized and normalised like an image file;
- ``FP32 [n, 3, S, S]``: the model's input, already resized and normalised.

Outputs: ``probabilities`` (``FP32 [n, classes]``) and ``classes`` (``BYTES [n, k]``, the top-k
class names, best first; k from the output's ``classification`` parameter, the request's
``top_k`` parameter, or 5). Both come as JSON, or in the binary extension when asked for.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from manager.serve import inputs
from manager.serve.errors import ServeError
from manager.serve.v1 import Call, CallDep, error, not_ready, resolve, run_model, state_of

router = APIRouter(prefix="/v2")

HEADER_LENGTH = "inference-header-content-length"
DTYPES = {"UINT8": np.uint8, "FP32": np.float32}
OUTPUTS = ("probabilities", "classes")


@router.get("", summary="Server metadata (Open Inference Protocol)")
def server_metadata() -> JSONResponse:
    from manager import __version__

    return JSONResponse(
        {
            "name": "mgr",
            "version": __version__,
            "extensions": ["binary_tensor_data", "classification"],
        }
    )


@router.get("/health/live", summary="Liveness (Open Inference Protocol)")
def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", summary="Readiness (Open Inference Protocol)")
def ready(request: Request) -> Response:
    why = not_ready(state_of(request))
    return Response(status_code=200) if why is None else error(503, why)


def _target(task: str, version: str | None) -> str:
    return task if version is None else f"{task}@{version}"


async def _metadata(request: Request, task: str, version: str | None) -> Response:
    state = state_of(request)
    ref, names = await resolve(state, _target(task, version))  # refusals: serve.errors
    transform = await state.decoder.run(state.engine.transform_for, ref.backbone_id)
    size = list(transform(inputs_blank()).shape)
    return JSONResponse(
        {
            "name": ref.task,
            "versions": [str(ref.number)],
            "platform": "mgr",
            "inputs": [
                {"name": "images", "datatype": "BYTES", "shape": [-1],
                 "parameters": {"also": "UINT8 [-1, -1, -1, 3] pixels, or FP32 "
                                f"{[-1, *(size or [3, -1, -1])]} normalised input"}},
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(names)]},
                {"name": "classes", "datatype": "BYTES", "shape": [-1, -1]},
            ],
            "parameters": {"classes": names, "answered": ref.label},
        }
    )  # fmt: skip


def inputs_blank() -> Any:
    from PIL import Image

    return Image.new("RGB", (8, 8))


@router.get("/models/{task}", summary="A task's metadata (Open Inference Protocol)")
async def model_metadata(request: Request, task: str) -> Response:
    return await _metadata(request, task, None)


@router.get("/models/{task}/versions/{version}", summary="A version's metadata")
async def version_metadata(request: Request, task: str, version: str) -> Response:
    return await _metadata(request, task, version)


async def _ready(request: Request, task: str, version: str | None) -> Response:
    state = state_of(request)
    why = not_ready(state)
    if why is not None:
        return error(503, why)
    await resolve(state, _target(task, version))  # refusals: serve.errors
    return Response(status_code=200)


@router.get("/models/{task}/ready", summary="Whether a task answers (Open Inference Protocol)")
async def model_ready(request: Request, task: str) -> Response:
    return await _ready(request, task, None)


@router.get("/models/{task}/versions/{version}/ready", summary="Whether a version answers")
async def version_ready(request: Request, task: str, version: str) -> Response:
    return await _ready(request, task, version)


@router.post("/models/{task}/infer", summary="Classify (Open Inference Protocol)")
async def model_infer(call: CallDep, task: str) -> Response:
    return await call.answer(lambda c: _infer(c, task, None))


@router.post("/models/{task}/versions/{version}/infer", summary="Classify with a version")
async def version_infer(call: CallDep, task: str, version: str) -> Response:
    return await call.answer(lambda c: _infer(c, task, version))


# -- infer ------------------------------------------------------------------------------------


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()):
            raise ServeError(400, "Inference-Header-Content-Length must be a whole number")
        n = int(header_length)
        if n > len(body):
            raise ServeError(400, f"Inference-Header-Content-Length {n} is past the body's end")
        head, rest = body[:n], body[n:]
    else:
        head, rest = body, b""
    try:
        doc = json.loads(head)
    except (ValueError, RecursionError) as exc:
        raise ServeError(400, f"malformed JSON: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(doc, dict):
        raise ServeError(400, "the inference request must be a JSON object")
    return doc, rest


def _bytes_elements(raw: bytes, count: int) -> list[bytes]:
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise ServeError(400, "BYTES tensor: a truncated element length")
        (n,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + n > len(raw):
            raise ServeError(400, "BYTES tensor: an element runs past the tensor's end")
        out.append(raw[at : at + n])
        at += n
    if len(out) != count:
        raise ServeError(400, f"BYTES tensor: {len(out)} elements, the shape says {count}")
    return out


def _flat(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flat(item))
    return out


def _shape(spec: dict[str, Any]) -> list[int]:
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ServeError(400, "the input's 'shape' must be a list of whole numbers")
    return shape


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def parse_infer(doc: dict[str, Any], binary: bytes, max_images: int) -> tuple[str, Any, int]:
    """(datatype, payload, number of images) of the request's one input."""
    specs = doc.get("inputs")
    if not isinstance(specs, list) or len(specs) != 1 or not isinstance(specs[0], dict):
        raise ServeError(400, "send exactly one input: BYTES images, UINT8 pixels or FP32 input")
    spec = specs[0]
    dtype, shape = spec.get("datatype"), _shape(spec)
    params = spec.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None and (not isinstance(size, int) or size < 0 or size > len(binary)):
        raise ServeError(400, "the input's binary_data_size does not match the body")
    n = shape[0]
    if n == 0:
        raise ServeError(400, "the input holds no image")
    if n > max_images:
        raise ServeError(413, f"{n} images in one request, over the limit of {max_images}")
    if dtype == "BYTES":
        count = _count(shape)
        if count != n:
            raise ServeError(400, "BYTES input: shape [n] (or [n, 1]), one encoded image each")
        if size is not None:
            items = _bytes_elements(binary[:size], count)
        else:
            data = _flat(spec.get("data"))
            if len(data) != count or not all(isinstance(d, str) for d in data):
                raise ServeError(400, "BYTES input in JSON: a list of base64 strings")
            items = [inputs.b64decode(d, f"images[{i}]") for i, d in enumerate(data)]
        return dtype, [(f"image-{i}", b) for i, b in enumerate(items)], n
    if dtype in DTYPES:
        np_dtype = DTYPES[dtype]
        count = _count(shape)
        if size is not None:
            if size != count * np.dtype(np_dtype).itemsize:
                raise ServeError(400, f"{dtype} input: {size} bytes do not fill shape {shape}")
            array = np.frombuffer(binary[:size], dtype=np_dtype)
        else:
            try:
                array = np.asarray(_flat(spec.get("data")), dtype=np_dtype)
            except (TypeError, ValueError, OverflowError):
                raise ServeError(400, f"{dtype} input: the data are not {dtype} numbers") from None
            if array.size != count:
                raise ServeError(400, f"{dtype} input: {array.size} values, shape {shape}")
        array = array.reshape(shape)
        if dtype == "UINT8" and (len(shape) != 4 or shape[3] != 3):
            raise ServeError(400, "UINT8 input: decoded RGB pixels of shape [n, H, W, 3]")
        if dtype == "FP32" and (len(shape) != 4 or shape[1] != 3):
            raise ServeError(400, "FP32 input: the model's input of shape [n, 3, S, S]")
        if dtype == "FP32" and not np.isfinite(array).all():
            raise ServeError(400, "FP32 input: values must be finite")
        return dtype, array, n
    raise ServeError(400, f"unsupported input datatype {dtype!r}: BYTES, UINT8 or FP32")


def _top_k(doc: dict[str, Any]) -> tuple[int, dict[str, bool], list[str]]:
    """(k, binary wanted per output, outputs asked for)."""
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ServeError(400, "'parameters' must be an object")
    k = inputs.top_k_of(params.get("top_k"))
    binary_all = bool(params.get("binary_data_output", False))
    wanted = doc.get("outputs")
    if wanted is None:
        return k, dict.fromkeys(OUTPUTS, binary_all), list(OUTPUTS)
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise ServeError(400, "'outputs' must be a list of objects")
    names, binary = [], {}
    for o in wanted:
        name = o.get("name")
        if name not in OUTPUTS:
            raise ServeError(400, f"unknown output {name!r}: one of {', '.join(OUTPUTS)}")
        p = o.get("parameters") or {}
        if not isinstance(p, dict):
            raise ServeError(400, "an output's 'parameters' must be an object")
        if name == "classes" and p.get("classification"):
            k = inputs.top_k_of(p.get("classification"))
        binary[name] = bool(p.get("binary_data", binary_all))
        names.append(name)
    return k, binary, names


async def _infer(call: Call, task: str, version: str | None) -> Response:
    state, cfg = call.state, call.state.config
    doc, binary = _split_body(call.body, call.request.headers.get(HEADER_LENGTH))
    call.body = b""
    dtype, payload, n = parse_infer(doc, binary, cfg.max_images)
    k, want_binary, names = _top_k(doc)

    async def make(transform: Any) -> Any:
        if dtype == "BYTES":
            return await inputs.to_tensor_parallel(
                state.decoder, payload, transform, cfg.max_pixels, cfg.max_request_pixels
            )
        return await state.decoder.run(make_array, transform)

    def make_array(transform: Any) -> Any:
        import torch

        if dtype == "UINT8":
            return inputs.arrays_to_tensor(
                payload, transform, cfg.max_pixels, cfg.max_request_pixels
            )
        want = tuple(transform(inputs_blank()).shape)
        if tuple(payload.shape[1:]) != want:
            raise ServeError(400, f"FP32 input: shape {list(payload.shape)}, the model "
                             f"takes [n, {', '.join(map(str, want))}]")  # fmt: skip
        return torch.from_numpy(np.array(payload, dtype=np.float32))

    result, _ = await run_model(state, _target(task, version), n, make, call.log)
    probs = result.probs.float().numpy()
    kk = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :kk]
    classes = [[result.class_names[i] for i in row] for row in top]
    outputs, chunks = [], []
    for name in names:
        if name == "probabilities":
            spec: dict[str, Any] = {
                "name": name,
                "datatype": "FP32",
                "shape": list(probs.shape),
            }
            raw = probs.astype("<f4").tobytes()
            data: Any = probs.reshape(-1).tolist()
        else:
            spec = {"name": name, "datatype": "BYTES", "shape": [len(classes), kk]}
            flat = [c for row in classes for c in row]
            raw = b"".join(struct.pack("<I", len(b)) + b for b in (c.encode() for c in flat))
            data = flat
        if want_binary[name]:
            spec["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            spec["data"] = data
        outputs.append(spec)
    answer = {
        "model_name": result.ref.task,
        "model_version": str(result.ref.number),
        "outputs": outputs,
    }
    if isinstance(doc.get("id"), str):
        answer["id"] = doc["id"][:200]
    head = json.dumps(answer, separators=(",", ":")).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(
        head + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
