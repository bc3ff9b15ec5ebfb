"""Request-level input limits of the real server in a subprocess: the per-request pixel budget
(``--max-request-pixels``) is a 413 read from the headers, before decoding, on ``/v1`` and
``/v2``; a server that runs out of memory while decoding answers 503 (never a 400 that blames
the image) and keeps serving."""

from __future__ import annotations

import io
import json
import resource
from pathlib import Path

import pytest
from serve_helpers import Server, b64, one_line_error, png
from switch_helpers import copy_home, template_home


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return copy_home(
        template_home(tmp_path_factory.getbasetemp()), tmp_path_factory.mktemp("inputs") / "home"
    )


def v1(images: list[bytes]) -> bytes:
    return json.dumps({"task": "pets3", "images": [b64(b) for b in images]}).encode()


def v2(images: list[bytes]) -> bytes:
    return json.dumps({"inputs": [{"name": "images", "datatype": "BYTES",
                                   "shape": [len(images)],
                                   "data": [b64(b) for b in images]}]}).encode()  # fmt: skip


def test_the_request_pixel_budget_is_a_413_from_the_headers(home: Path) -> None:
    # Each image is 40x32 = 1,280 pixels: three fit in 4,000, four do not.
    srv = Server(home, "--max-request-pixels", "4000", "--no-docs")
    try:
        assert srv.request("/docs")[0] == 404 and srv.request("/openapi.json")[0] == 404
        three, four = [png(i) for i in range(3)], [png(i) for i in range(4)]
        assert srv.request("/v1/predict", v1(three))[0] == 200
        assert srv.request("/v2/models/pets3/infer", v2(three))[0] == 200
        for path, doc in (("/v1/predict", v1(four)), ("/v2/models/pets3/infer", v2(four))):
            status, out = srv.request(path, doc)[:2]
            words = one_line_error(status, out, 413)
            assert "5,120 pixels" in words and "--max-request-pixels" in words
        # Checked before decoding: a budget-breaking request whose last image is garbage is
        # refused for its size, as its headers say, not for the garbage.
        big = io.BytesIO()
        from PIL import Image

        Image.new("L", (100, 100)).save(big, "PNG")
        status, out = srv.request("/v1/predict", v1([big.getvalue(), b"\x89PNG\r\n\x1a\n"]))[:2]
        assert status == 400  # the second header is unreadable: that is what is said
        status, out = srv.request("/v1/predict", v1([big.getvalue()]))[:2]
        assert "10,000 pixels" in one_line_error(status, out, 413)
    finally:
        assert srv.stop() == 0


def vm_size(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def test_out_of_memory_while_decoding_is_a_503_and_the_server_keeps_serving(home: Path) -> None:
    from PIL import Image

    side = 20_000  # 400 Mpx: 400 MB as grayscale, 1.2 GB more as RGB
    buf = io.BytesIO()
    Image.new("L", (side, side), 7).save(buf, "PNG", compress_level=1)
    huge = buf.getvalue()
    assert len(huge) < 4_000_000
    srv = Server(home, "--max-pixels", str(side * side), "--max-request-pixels", str(side * side),
                 "--max-body-bytes", "16MiB")  # fmt: skip
    try:
        for _ in range(3):  # warm: decoding threads and their allocator arenas exist
            assert srv.request("/v1/predict", v1([png(1), png(2)]))[0] == 200
        # Cap the server's address space a little above what it maps now: the huge image
        # cannot be decoded, everything else still fits.
        limit = vm_size(srv.proc.pid) + 512 * 2**20
        soft, hard = resource.prlimit(srv.proc.pid, resource.RLIMIT_AS)
        # The soft limit only: it can be lifted again without privileges.
        resource.prlimit(srv.proc.pid, resource.RLIMIT_AS, (limit, hard))
        try:
            status, out = srv.request("/v1/predict", v1([huge]))[:2]
            words = one_line_error(status, out, 503)
            assert "out of memory" in words and "cannot read image" not in words
        finally:
            resource.prlimit(srv.proc.pid, resource.RLIMIT_AS, (soft, hard))
        status, out = srv.request("/v1/predict", v1([png(3)]))[:2]
        assert status == 200 and out["answered"] == "pets3@3"
    finally:
        assert srv.stop() == 0
