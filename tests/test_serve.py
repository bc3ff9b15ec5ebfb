"""``mgr serve``: the real server in a subprocess on a free loopback port, over a home with three
trained tasks (``shapes``: the CLI's trainer; ``pets3``: Consolidator; ``digits``: LoRA, which only
a merged switch can serve).

Every answer is compared with ``mgr predict``'s for the same image and version (every class's
probability within serve_helpers.PROB_TOL, derived there; top-1 equal unless tied), under
concurrent requests for several tasks, with batches made by switching and by the mixed-task
model. The tests of one server run in file order: they share it
and the home it serves.
"""

from __future__ import annotations

import http.client
import io
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import assert_clean_error
from serve_helpers import (
    ALL_CLASSES,
    Server,
    assert_same_answer,
    b64,
    free_port,
    metric,
    one_line_error,
    png,
)
from switch_helpers import copy_home, fork_server, template_home

from manager.serve.client import multipart

TASKS = ("shapes", "pets3", "digits")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return copy_home(
        template_home(tmp_path_factory.getbasetemp()), tmp_path_factory.mktemp("serve") / "home"
    )


@pytest.fixture(scope="module")
def images(home: Path) -> list[Path]:
    folder = home.parent / "images"
    folder.mkdir()
    paths = []
    for i, size in enumerate([(40, 32), (32, 32), (64, 48), (17, 90), (33, 33), (128, 96)]):
        p = folder / f"im{i}.png"
        p.write_bytes(png(i, size))
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def server(home: Path):
    srv = Server(home, "--max-wait-ms", "20", "--max-body-bytes", "300KB",
                 "--max-pixels", "1000000", "--resident", "2")  # fmt: skip
    yield srv
    srv.stop()


_EXPECTED: dict[tuple[str, str], dict] = {}


def expected(home: Path, label: str, paths: list[Path]) -> dict[str, list[dict]]:
    """``{image path: top list}`` from ``mgr predict --task LABEL --json`` (cached per label)."""
    missing = [p for p in paths if (label, str(p)) not in _EXPECTED]
    if missing:
        res = fork_server().run(
            home, "predict", "--task", label, "--json", "--top-k", str(ALL_CLASSES),
            *map(str, missing),
        )  # fmt: skip
        out = res.json()
        assert f"{out['task']}@{out['version']}" == label
        for pred in out["predictions"]:
            _EXPECTED[(label, pred["image"])] = pred["top"]
    return {str(p): _EXPECTED[(label, str(p))] for p in paths}


def send(server: Server, task: str, paths: list[Path], as_json: bool) -> dict:
    if as_json:
        doc = {
            "task": task,
            "images": [{"name": str(p), "data": b64(p.read_bytes())} for p in paths],
            "top_k": ALL_CLASSES,
        }
        status, out = server.post_json(doc)
    else:
        body, ctype = multipart(
            {"task": task, "top_k": str(ALL_CLASSES)}, [(str(p), p.read_bytes()) for p in paths]
        )
        status, out = server.post(body, ctype)
    assert status == 200, out
    return out


def check_answers(home: Path, answers: list[tuple[list[Path], dict]]) -> None:
    for paths, out in answers:
        label = out["answered"]
        want = expected(home, label, paths)
        assert [p["image"] for p in out["predictions"]] == [str(p) for p in paths]
        for pred in out["predictions"]:
            assert_same_answer(pred["top"], want[pred["image"]])


# -- the shared server ------------------------------------------------------------------------


def test_concurrent_requests_for_several_tasks_equal_mgr_predict(server, home, images) -> None:
    jobs = []
    for i in range(36):
        task = TASKS[i % 3]
        paths = [images[(i + j) % len(images)] for j in range(1 + i % 3)]
        jobs.append((task, paths, i % 2 == 0))
    with ThreadPoolExecutor(12) as pool:
        outs = list(pool.map(lambda j: send(server, *j), jobs))
    for (task, _, _), out in zip(jobs, outs, strict=True):
        assert out["task"] == task and out["answered"] == f"{task}@{out['version']}"
        assert out["timings"]["total_ms"] >= out["timings"]["model_ms"] > 0
    check_answers(home, [(paths, out) for (_, paths, _), out in zip(jobs, outs, strict=True)])
    # Several tasks at once with 20 ms to gather: some batches held more than one request.
    assert metric(server, 'mgr_requests_total{status="200"}') >= 36
    assert max(out["batch"]["images"] for out in outs) > 3
    assert metric(server, "mgr_switches_total") > 0
    # --resident 2 with three tasks: some switches had to read an artifact again.
    assert metric(server, "mgr_cache_misses_total") > 3


def test_many_images_in_one_request_are_shared_out_and_equal_mgr_predict(
    server, home, images
) -> None:
    # 12 images: split over the decoding threads (4 or more each), answered in order.
    paths = images + images
    out = send(server, "pets3", paths, as_json=True)
    assert out["batch"]["images"] >= 12
    check_answers(home, [(paths, out)])


def test_predict_server_prints_what_mgr_predict_prints(server, home, images) -> None:
    paths = [str(p) for p in images[:3]]
    srv = fork_server()
    remote = srv.run(home, "predict", "--server", server.url, "--task", "pets3", *paths)
    local = srv.run(home, "predict", "--task", "pets3", *paths)
    assert remote.stdout == local.stdout and remote.stdout.startswith("task pets3@3\n")
    # Without --task: the home's live task, as mgr predict does (pets3 is live now).
    again = srv.run(home, "predict", "--server", server.url, "--json", *paths)
    assert again.json()["task"] == "pets3"
    bad = srv.run(home, "predict", "--server", server.url, "--task", "nope", paths[0], ok=False)
    assert_clean_error(bad)
    assert "unknown task 'nope'" in bad.stderr and "404" in bad.stderr
    down = srv.run(
        home, "predict", "--server", f"http://127.0.0.1:{free_port()}", paths[0], ok=False
    )
    assert_clean_error(down)
    assert "cannot reach the server" in down.stderr


def test_tasks_health_metrics_and_docs(server) -> None:
    status, tasks = server.get("/v1/tasks")
    assert status == 200
    assert {t["task"]: t["active"] for t in tasks["tasks"]} == {
        "shapes": 1,
        "pets3": 3,
        "digits": 2,
    }
    status, health = server.get("/healthz")
    assert status == 200 and health["status"] == "ok" and health["device"] == "cpu"
    assert health["costs"]["switch"] > 0 and health["costs"]["mixed_per_image"] > 0
    status, text = server.get("/metrics")
    assert "# TYPE mgr_request_seconds histogram" in text
    assert 'mgr_request_seconds_bucket{le="+Inf"}' in text
    assert "mgr_batch_size_count" in text
    status, spec = server.get("/openapi.json")
    assert status == 200 and "/v1/predict" in spec["paths"]
    assert "/v2/models/{task}/infer" in spec["paths"]
    # The docs page loads Swagger UI from this server, never from a CDN (offline, locked down).
    status, page = server.get("/docs")
    assert status == 200 and "/docs/static/swagger-ui-bundle.js" in page
    assert "cdn" not in page.lower() and "https://" not in page
    status, js = server.get("/docs/static/swagger-ui-bundle.js")
    assert status == 200 and len(js) > 100_000


def test_bad_inputs_get_a_4xx_with_one_line_and_the_server_stays_up(server, images) -> None:
    good = b64(images[0].read_bytes())
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (3000, 3000)).save(bomb, "PNG")  # 9 Mpx in a few KB; the limit is 1 Mpx
    assert len(bomb.getvalue()) < 50_000
    cases = [
        (server.post(b'{"task": "pets3", "images": ['), 400, "malformed JSON"),
        (server.post(b"[1, 2]"), 400, "must be an object"),
        (server.post_json({"task": "pets3", "images": []}), 400, "non-empty list"),
        (server.post_json({"task": "pets3", "images": ["%%%"]}), 400, "not valid base64"),
        (server.post_json({"task": "pets3", "images": [b64(b"GIF89a nonsense")]}), 400,
         "cannot read image"),
        (server.post_json({"task": "pets3", "images": [b64(bomb.getvalue())]}), 413,
         "over the limit"),
        (server.post_json({"task": "nope", "images": [good]}), 404, "unknown task 'nope'"),
        (server.post_json({"task": "pets3@9", "images": [good]}), 404, "9"),
        (server.post_json({"task": "../etc", "images": [good]}), 400, "bad task name"),
        (server.post_json({"task": 7, "images": [good]}), 400, "task must be a string"),
        (server.post_json({"task": "pets3", "images": [good], "top_k": 0}), 400, "top_k"),
        (server.post_json({"task": "pets3", "images": [good], "extra": 1}), 400, "unknown field"),
        (server.post(b"x" * 400_000), 413, "over the limit"),
        (server.post(b"task=pets3", "application/x-www-form-urlencoded"), 415, "content type"),
        (server.post(b"--x\r\nbroken", "multipart/form-data; boundary=x"), 400, ""),
    ]  # fmt: skip
    for (status, body), expect, words in cases:
        assert words in one_line_error(status, body, expect)
    status, body = server.get("/no/such/path")
    one_line_error(status, body, 404)
    # Still up, still right.
    assert server.get("/healthz")[0] == 200
    out = send(server, "pets3", images[:1], as_json=True)
    assert out["answered"] == "pets3@3"
    assert metric(server, 'mgr_requests_total{status="400"}') >= 9
    assert server.proc.poll() is None


def test_a_version_promoted_elsewhere_is_served_by_the_next_request(server, home, images) -> None:
    before = send(server, "shapes", images[:2], as_json=False)
    assert before["answered"] == "shapes@1"
    # Resolved from the in-memory view, not one catalog transaction per request ...
    hits = metric(server, "mgr_resolver_hits_total")
    assert send(server, "shapes", images[:2], as_json=True)["answered"] == "shapes@1"
    assert metric(server, "mgr_resolver_hits_total") == hits + 1
    fork_server().run(
        home, "train", "shapes", "--epochs", "1", "--batch-size", "48", "--seed", "7",
        "--promote", "always",
    )  # fmt: skip
    # ... yet the first request after the promotion commits is served by the new version.
    after = send(server, "shapes", images[:2], as_json=False)
    assert after["answered"] == "shapes@2"
    old = send(server, "shapes@1", images[:2], as_json=True)  # an explicit version still answers
    assert old["answered"] == "shapes@1"
    check_answers(home, [(images[:2], before), (images[:2], after), (images[:2], old)])
    assert after["predictions"] != before["predictions"]


def test_corrupt_artifact_is_a_5xx_for_its_version_only_and_a_removed_task_404(
    server, home, images
) -> None:
    # pets3@1 was never loaded by the server: its artifact is read, and refused, on demand.
    artifact = home / "artifacts" / "pets3" / "v1.safetensors"
    original = artifact.read_bytes()
    data = bytearray(original)
    data[-10] ^= 0xFF
    artifact.write_bytes(bytes(data))
    good = [{"name": "a", "data": b64(images[0].read_bytes())}]
    with ThreadPoolExecutor(4) as pool:
        futures = {t: pool.submit(server.post_json, {"task": t, "images": good})
                   for t in ("pets3@1", "pets3", "shapes", "digits")}  # fmt: skip
        results = {t: f.result() for t, f in futures.items()}
    status, body = results["pets3@1"]
    assert "corrupt" in one_line_error(status, body, 500)
    for t in ("pets3", "shapes", "digits"):
        assert results[t][0] == 200, results[t]
    fork_server().run(home, "task", "remove", "digits", "--yes", "--force")
    status, body = server.post_json({"task": "digits", "images": good})
    assert "unknown task 'digits'" in one_line_error(status, body, 404)
    assert server.post_json({"task": "pets3", "images": good})[0] == 200
    artifact.write_bytes(original)  # mgr verify runs on this home later


@pytest.mark.slow  # a second server and a kill
def test_kill_9_mid_load_then_restart_serves_mixed_batches_exactly(server, home, images) -> None:
    stop = threading.Event()
    answered = []

    def load() -> None:
        i = 0
        while not stop.is_set():
            try:
                answered.append(send(server, ("shapes", "pets3")[i % 2], images[:2], i % 2 == 0))
            except (OSError, AssertionError, http.client.HTTPException):
                return  # the server is gone
            i += 1

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join(30)
    assert answered, "no request was answered before the kill"
    srv = fork_server()
    verify = srv.run(home, "verify", "--json").json()
    assert verify["ok"] and verify["problems"] == 0, verify
    assert srv.run(home, "status", "--json").json()["state"] == "idle"

    again = Server(home, "--max-wait-ms", "50", "--schedule", "mixed")
    try:
        jobs = [(("shapes", "pets3")[i % 2], images[i % 3 : i % 3 + 2], i % 3 == 0)
                for i in range(16)]  # fmt: skip
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda j: send(again, *j), jobs))
        check_answers(home, [(paths, out) for (_, paths, _), out in zip(jobs, outs, strict=True)])
        assert any(out["batch"]["mode"] == "mixed" for out in outs)
        assert metric(again, 'mgr_batches_total{mode="mixed"}') > 0
    finally:
        again.stop()
    assert again.proc.returncode == 0, again.output()


# -- without a server -------------------------------------------------------------------------


def test_a_taken_port_is_one_clean_error(home) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = fork_server().run(home, "serve", "--port", str(port), ok=False)
    assert_clean_error(res)
    assert f"cannot listen on 127.0.0.1:{port}" in res.stderr


def test_the_cost_model_switches_few_large_groups_and_mixes_many_small_ones() -> None:
    from manager.serve.costs import CostModel, fit_line

    assert fit_line(1, 0.003, 17, 0.019) == pytest.approx((0.002, 0.001))
    costs = CostModel(switch=0.007, merged_fixed=0.002, merged_per_image=0.0002,
                      mixed_fixed=0.004, mixed_per_image=0.0016, build=0.02)  # fmt: skip
    small, large = [1] * 8, [32, 32]
    assert costs.mixed_cost(small, rebuild=False) < costs.switching_cost(small, switches=7)
    assert costs.mixed_cost(large, rebuild=False) > costs.switching_cost(large, switches=1)
    # A rebuild is paid once: it can tip the choice back to switching.
    assert costs.mixed_cost([1, 1], rebuild=True) > costs.switching_cost([1, 1], switches=1)
    assert CostModel(0.01, 0.001, 0.001).mixed_cost(small, rebuild=False) is None
