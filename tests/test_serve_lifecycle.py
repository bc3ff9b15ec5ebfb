"""A server's life through the real server in a subprocess: the port answers before the model
is loaded and ``/readyz`` goes 503 -> 200, start-up prints its phases, access log lines parse
as JSON, ``/metrics`` counts no request before the first one, SIGTERM under load answers every
accepted request (200 or 503), prints "stopped" and exits 0, and ``--pin nosuch`` is refused."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import assert_clean_error
from serve_helpers import Server, b64, metric, png
from switch_helpers import copy_home, fork_server, template_home


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return copy_home(
        template_home(tmp_path_factory.getbasetemp()), tmp_path_factory.mktemp("life") / "home"
    )


def body(task: str = "pets3", n: int = 1, seed: int = 0) -> bytes:
    return json.dumps({"task": task, "images": [b64(png(seed + i)) for i in range(n)]}).encode()


def test_ready_after_start_up_with_phases_metrics_clean_and_access_log(home: Path) -> None:
    log_file = home.parent / "access.jsonl"
    srv = Server(home, "--access-log", str(log_file), "--pin", "shapes", wait=False)
    try:
        # The port answers from the start: liveness at once, readiness 503 until loaded.
        seen: list[int] = []
        refused = 0  # predictions sent while starting
        raced = 0  # sent after a 503 from /readyz but answered once ready: a true race
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and 200 not in seen:
            assert srv.proc.poll() is None, srv.output()
            try:
                assert srv.get("/livez")[0] == 200
                status, out = srv.get("/readyz")
                if not seen or seen[-1] != status:
                    seen.append(status)
                if status == 503:
                    assert "starting" in out["error"]
                    code = srv.post(body())[0]  # predictions wait for readiness too
                    if code == 503:
                        refused += 1
                    else:  # start-up finished between the two requests
                        assert code == 200 and srv.get("/readyz")[0] == 200, code
                        raced += 1
            except (urllib.error.URLError, ConnectionError):
                pass  # not bound yet (imports)
            time.sleep(0.005)
        assert seen == [503, 200], (seen, srv.output())
        assert srv.request("/v2/health/ready")[0] == 200
        out = srv.output()
        phases = ["catalog:", "listening on", "backbone:", "deltas:", "calibration:", "ready:"]
        at = [out.index(p) for p in phases]
        assert at == sorted(at), out

        # Only the refused requests counted, although start-up switched, loaded and built.
        from prometheus_client.parser import text_string_to_metric_families

        families = {f.name for f in text_string_to_metric_families(srv.get("/metrics")[1])}
        assert {"process_cpu_seconds", "python_gc_objects_collected"} <= families
        assert refused > 0
        assert metric(srv, 'mgr_requests_total{status="503"}') == refused
        assert metric(srv, "mgr_request_seconds_count") == refused + raced
        assert metric(srv, 'mgr_requests_total{status="200"}') == raced
        if not raced:  # nothing served yet: start-up's switches, loads and builds not counted
            for name in ("mgr_switches_total", "mgr_cache_hits_total", "mgr_cache_misses_total",
                         "mgr_mixed_builds_total", "mgr_images_total",
                         "mgr_batch_size_count"):  # fmt: skip
                assert metric(srv, name) == 0, name
        assert metric(srv, "mgr_ready") == 1

        status, _, headers = srv.request(
            "/v1/predict", body(n=2), headers={"X-Request-ID": "req-42"}
        )
        assert status == 200 and headers["x-request-id"] == "req-42"
        status, _, headers = srv.request("/v1/predict", body("nope"))
        assert status == 404 and len(headers["x-request-id"]) == 32
        assert metric(srv, 'mgr_requests_total{status="200"}') == 1 + raced
        assert metric(srv, 'mgr_requests_total{status="404"}') == 1
        assert metric(srv, "mgr_images_total") == 2 + raced
    finally:
        assert srv.stop(signal.SIGTERM) == 0, srv.output()
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    mine = next(r for r in lines if r["id"] == "req-42")
    assert mine["status"] == 200 and mine["task"] == "pets3@3" and mine["images"] == 2
    assert mine["path"] == "/v1/predict" and mine["batch"] in ("merged", "mixed")
    assert mine["ms"] >= mine["model_ms"] > 0 and mine["queue_ms"] >= 0
    assert any(r["status"] == 404 and r["path"] == "/v1/predict" for r in lines)
    assert all({"time", "id", "method", "path", "status", "ms"} <= set(r) for r in lines)
    assert "stopped" in srv.output()


def test_sigterm_under_load_answers_every_accepted_request(home: Path) -> None:
    # Eight clients send requests back to back; each stops at its first 503 (draining), as one
    # behind a load balancer would. Every request sent before that gets its answer.
    srv = Server(home, "--max-wait-ms", "30", "--drain-seconds", "20", "--log-level", "warning")
    statuses: list[int] = []
    dropped: list[str] = []
    stop = threading.Event()

    def load(i: int) -> None:
        data = body(("pets3", "shapes")[i % 2], n=3, seed=i)
        while not stop.is_set():
            req = urllib.request.Request(srv.url + "/v1/predict", data=data, method="POST")
            req.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    statuses.append(resp.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
                if exc.code == 503:
                    return  # as a client behind a load balancer: go elsewhere
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ConnectionRefusedError):
                    return  # the listener is closed: never accepted, nothing dropped
                dropped.append(repr(exc))
                return
            except (ConnectionError, http.client.HTTPException) as exc:
                dropped.append(repr(exc))  # accepted, then closed without an answer
                return

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    answered_before = len(statuses)
    srv.proc.send_signal(signal.SIGTERM)
    code = srv.proc.wait(60)
    stop.set()
    for t in threads:
        t.join(60)
    assert answered_before > 0
    assert code == 0, srv.output()
    assert not dropped, (dropped, srv.output())
    assert set(statuses) <= {200, 503}, statuses
    out = srv.output()
    assert "draining (SIGTERM)" in out and out.rstrip().endswith("stopped"), out


def test_an_unknown_pinned_task_is_refused_in_one_line(home: Path) -> None:
    res = fork_server().run(home, "serve", "--port", "0", "--pin", "nosuch", ok=False)
    assert_clean_error(res)
    assert "cannot pin unknown task(s) 'nosuch'" in res.stderr
