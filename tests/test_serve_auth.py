"""API keys of ``mgr serve`` through the real server in a subprocess: 401s with
``WWW-Authenticate``, the key file, ``MGR_API_KEY``, open probes and metrics, ``--protect-metrics``,
``mgr predict --server`` sending the key, keys never in the output, and the refusal to listen on a
non-loopback address without a key."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_clean_error
from serve_helpers import Server, b64, one_line_error, png
from switch_helpers import copy_home, fork_server, template_home

KEYS = ("k-first-0123456789abcdef", "k-second-fedcba9876543210")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return copy_home(
        template_home(tmp_path_factory.getbasetemp()), tmp_path_factory.mktemp("auth") / "home"
    )


@pytest.fixture(scope="module")
def key_file(home: Path) -> Path:
    path = home.parent / "keys.txt"
    path.write_text(f"# serving keys\n{KEYS[0]}\n\n  {KEYS[1]}  \n")
    return path


@pytest.fixture(scope="module")
def server(home: Path, key_file: Path):
    srv = Server(home, "--api-key-file", str(key_file), key=KEYS[1])
    yield srv
    srv.stop()


def predict_body() -> bytes:
    import json

    return json.dumps({"task": "pets3", "images": [b64(png(1))]}).encode()


def test_requests_without_a_valid_key_get_401_with_www_authenticate(server) -> None:
    cases = [("", "missing API key"), ("wrong", "invalid API key"),
             (KEYS[0] + "x", "invalid API key"), (KEYS[0][:-1], "invalid API key")]  # fmt: skip
    for key, words in cases:  # "": no Authorization header at all
        status, body, headers = server.request("/v1/predict", predict_body(), key=key)
        assert words in one_line_error(status, body, 401)
        assert headers["www-authenticate"].startswith("Bearer")
    # A scheme other than Bearer is refused too.
    status, body, _ = server.request(
        "/v1/predict", predict_body(), headers={"Authorization": f"Basic {KEYS[0]}"}, key=""
    )
    assert status == 401
    for path in ("/v1/tasks", "/healthz", "/v2/models/pets3", "/v2"):
        status, body, headers = _no_key(server, path)
        one_line_error(status, body, 401)


def _no_key(server: Server, path: str, body: bytes | None = None):
    return server.request(path, body, key="")


def test_every_key_of_the_file_works_and_probes_and_metrics_stay_open(server) -> None:
    for key in KEYS:
        status, out, headers = server.request("/v1/predict", predict_body(), key=key)
        assert status == 200 and out["answered"] == "pets3@3", out
        assert headers["x-request-id"]
    for path in ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics", "/docs"):
        assert _no_key(server, path)[0] == 200, path


def test_predict_server_sends_the_key_and_keys_never_reach_the_output(
    server, home: Path, key_file: Path
) -> None:
    image = home.parent / "auth.png"
    image.write_bytes(png(3))
    srv = fork_server()
    with_file = srv.run(home, "predict", "--server", server.url, "--task", "pets3",
                        "--api-key-file", str(key_file), str(image))  # fmt: skip
    assert with_file.stdout.startswith("task pets3@3\n")
    with_env = srv.run(home, "predict", "--server", server.url, "--task", "pets3", str(image),
                       MGR_API_KEY=KEYS[1])  # fmt: skip
    assert with_env.stdout == with_file.stdout
    without = srv.run(home, "predict", "--server", server.url, "--task", "pets3", str(image),
                      ok=False)  # fmt: skip
    assert_clean_error(without)
    assert "missing API key" in without.stderr and "401" in without.stderr
    output = server.output()  # stderr: start-up lines and the access log
    assert '"status":401' in output and '"status":200' in output
    for key in KEYS:
        assert key not in output


def test_protect_metrics_and_mgr_api_key(home: Path) -> None:
    srv = Server(home, "--protect-metrics", env={"MGR_API_KEY": KEYS[0]}, key=KEYS[0])
    try:
        assert _no_key(srv, "/metrics")[0] == 401
        assert srv.request("/metrics")[0] == 200
        assert _no_key(srv, "/readyz")[0] == 200
        status, out, _ = srv.request("/v1/predict", predict_body())
        assert status == 200, out
        assert srv.request("/v1/predict", predict_body(), key=KEYS[1])[0] == 401
    finally:
        assert srv.stop() == 0


def test_a_non_loopback_address_without_a_key_is_refused_in_one_line(home: Path) -> None:
    res = fork_server().run(home, "serve", "--host", "0.0.0.0", "--port", "0", ok=False)
    assert_clean_error(res)
    assert "refusing to listen on 0.0.0.0 without an API key" in res.stderr
    assert "--allow-unauthenticated" in res.stderr


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "not found"), ("# only a comment\n\n", "holds no key"), ("two words\n", "line 1")],
)
def test_a_bad_key_file_is_one_line(home: Path, content: str | None, words: str) -> None:
    path = home.parent / "bad-keys.txt"
    path.unlink(missing_ok=True)
    if content is not None:
        path.write_text(content)
    res = fork_server().run(home, "serve", "--port", "0", "--api-key-file", str(path), ok=False)
    assert_clean_error(res)
    assert words in res.stderr
    assert "two words" not in res.stderr  # a key file's content is never echoed
