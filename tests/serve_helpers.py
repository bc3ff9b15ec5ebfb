"""Shared by the server tests: ``mgr serve`` in a subprocess on a free loopback port, requests
to it with the standard library, test images, and the one-line error check."""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import child_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m manager serve`` on a free loopback port; ``wait`` for /readyz (or not)."""

    def __init__(
        self,
        home: Path,
        *args: str,
        key: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ):
        self.home, self.args, self.key = home, args, key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = child_env(MGR_HOME=str(home), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        full.update(env or {})
        self.log = home.parent / f"serve-{self.port}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "manager", "serve", "--port", str(self.port),
                 "--threads", "1", *args],
                cwd=home.parent, env=full, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mgr serve exited {self.proc.returncode}: {self.output()}")
            try:
                # The server says "ready: ..." just after /readyz turns 200: wait for both, so
                # a test that reads the line right after start-up does not race it.
                if self.get("/readyz")[0] == 200 and "\nready: " in "\n" + self.output():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"mgr serve did not get ready: {self.output()}")

    def output(self) -> str:
        return self.log.read_text()

    def request(
        self,
        path: str,
        body: bytes | None = None,
        ctype: str = "application/json",
        headers: dict[str, str] | None = None,
        key: str | None = None,
    ) -> tuple[int, dict | str, dict[str, str]]:
        """(status, JSON or text body, headers); ``key`` (default: the server's) as a bearer."""
        req = urllib.request.Request(
            self.url + path, data=body, method="POST" if body is not None else "GET"
        )
        if body is not None:
            req.add_header("Content-Type", ctype)
        key = self.key if key is None else key
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, raw, hdrs = resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            status, raw, hdrs = exc.code, exc.read(), dict(exc.headers)
        ctype_ = hdrs.get("content-type", hdrs.get("Content-Type", ""))
        out = json.loads(raw) if "json" in ctype_ and raw else raw.decode(errors="replace")
        return status, out, {k.lower(): v for k, v in hdrs.items()}

    def get(self, path: str) -> tuple[int, dict | str]:
        return self.request(path)[:2]

    def post(self, body: bytes, ctype: str = "application/json") -> tuple[int, dict]:
        return self.request("/v1/predict", body, ctype)[:2]

    def post_json(self, doc: object) -> tuple[int, dict]:
        return self.post(json.dumps(doc).encode())

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def png(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def one_line_error(status: int, body: object, expect: int) -> str:
    assert status == expect, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert "\n" not in body["error"] and body["error"], body
    return body["error"]


def metric(server: Server, name: str) -> float:
    """A sample's value from /metrics, parsed by prometheus_client (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = server.get("/metrics")
    assert status == 200, text
    want_name, _, labels = name.partition("{")
    want = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == want_name and sample.labels == want:
                return float(sample.value)
    return 0.0


# -- the server's answers against `mgr predict`'s ------------------------------------------------

# Ask both sides for every class (no task here has more): comparing two top-5 lists would make
# the test depend on which of two near-equal classes ranks fifth, i.e. on rounding.
ALL_CLASSES = 1000

# The server and `mgr predict` run the same float32 model by different routes (a merged model at
# another batch size, or W0 x + delta x in a mixed batch): only the order of float32 sums differs.
# Two orders of a K-term sum differ by at most about K * u times the sum of |terms| (u = 2^-24);
# through the ~10 matmuls of these 2-block models, K <= 768 (patch embedding, fc2), with
# LayerNorm keeping activations of unit scale, the logits move by at most 10 * 768 * u ~ 4.6e-4
# times their size, and these random or briefly trained heads give |logit| < 4. A softmax moves
# each probability by at most half the largest logit change: under 0.5 * 4 * 4.6e-4 ~ 9.2e-4.
# (Measured differences are ~1e-7: the bound is loose, and independent of batch composition.)
PROB_TOL = 1e-3


def assert_same_answer(got: list[dict], want: list[dict]) -> None:
    """Two answers for one image, each listing every class: the same classes, each probability
    within PROB_TOL, and the same top-1 unless the top two are tied within it."""
    mine = {t["index"]: t["probability"] for t in got}
    theirs = {t["index"]: t["probability"] for t in want}
    assert mine.keys() == theirs.keys(), (got, want)
    assert abs(sum(theirs.values()) - 1) <= PROB_TOL, want  # every class is there
    for i, p in theirs.items():
        assert abs(mine[i] - p) <= PROB_TOL, (i, mine[i], p)
    top_mine, top_theirs = got[0]["index"], want[0]["index"]
    assert top_mine == top_theirs or abs(theirs[top_mine] - theirs[top_theirs]) <= 2 * PROB_TOL
