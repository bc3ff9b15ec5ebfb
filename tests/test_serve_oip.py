"""The Open Inference Protocol (KServe v2) through a real client, ``tritonclient[http]``, against
the real server in a subprocess (with an API key, sent as a header): health, metadata,
readiness, and inference with encoded images (BYTES, binary extension) and decoded pixels
(UINT8, JSON), with answers equal to ``mgr predict``'s."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import Server, one_line_error, png
from switch_helpers import copy_home, fork_server, template_home

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

KEY = "oip-key-0123456789"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return copy_home(
        template_home(tmp_path_factory.getbasetemp()), tmp_path_factory.mktemp("oip") / "home"
    )


@pytest.fixture(scope="module")
def server(home: Path):
    srv = Server(home, env={"MGR_API_KEY": KEY}, key=KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    c = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield c
    c.close()


def auth() -> dict[str, str]:
    """A fresh dict each call: tritonclient adds its own headers to the one it is given."""
    return {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def images(home: Path) -> list[Path]:
    paths = []
    for i, size in enumerate([(40, 32), (64, 48), (17, 90)]):
        p = home.parent / f"oip{i}.png"
        p.write_bytes(png(10 + i, size))
        paths.append(p)
    return paths


def expected(home: Path, label: str, paths: list[Path]) -> list[list[dict]]:
    out = fork_server().run(home, "predict", "--task", label, "--top-k", "3", "--json",
                            *map(str, paths)).json()  # fmt: skip
    assert f"{out['task']}@{out['version']}" == label
    return [p["top"] for p in out["predictions"]]


def assert_equal_to_predict(result, want: list[list[dict]]) -> None:
    probs = result.as_numpy("probabilities")
    classes = result.as_numpy("classes")
    assert probs.shape[0] == len(want) and classes.shape == (len(want), 3)
    for row, names, top in zip(probs, classes, want, strict=True):
        got = [n.decode() if isinstance(n, bytes) else n for n in names]
        assert got == [t["class"] for t in top]
        for t in top:
            assert abs(row[t["index"]] - t["probability"]) <= 1e-4
        assert abs(float(row.sum()) - 1) <= 1e-4


def test_health_metadata_and_readiness(client, server) -> None:
    assert client.is_server_live(headers=auth()) and client.is_server_ready(headers=auth())
    assert client.is_model_ready("pets3", headers=auth())
    assert client.is_model_ready("pets3", "1", headers=auth())
    assert not client.is_model_ready("nope", headers=auth())
    meta = client.get_model_metadata("pets3", headers=auth())
    assert meta["name"] == "pets3" and meta["versions"] == ["3"]
    assert {o["name"] for o in meta["outputs"]} == {"probabilities", "classes"}
    assert meta["inputs"][0]["datatype"] == "BYTES"
    classes = meta["parameters"]["classes"]
    assert meta["outputs"][0]["shape"] == [-1, len(classes)]
    assert client.get_model_metadata("pets3", "champion", headers=auth())["versions"] == ["3"]
    with pytest.raises(InferenceServerException, match="unknown task 'nope'"):
        client.get_model_metadata("nope", headers=auth())
    with pytest.raises(InferenceServerException, match="missing API key"):
        client.get_model_metadata("pets3")


def test_encoded_images_as_bytes_equal_mgr_predict(client, home, images) -> None:
    inp = tritonclient_http.InferInput("images", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array([p.read_bytes() for p in images], dtype=np.object_))
    outputs = [tritonclient_http.InferRequestedOutput("probabilities"),
               tritonclient_http.InferRequestedOutput("classes", class_count=3)]  # fmt: skip
    result = client.infer("pets3", [inp], outputs=outputs, headers=auth())
    assert result.get_response()["model_version"] == "3"
    assert_equal_to_predict(result, expected(home, "pets3@3", images))
    # A version by number, over JSON outputs this time.
    outputs = [tritonclient_http.InferRequestedOutput("probabilities", binary_data=False),
               tritonclient_http.InferRequestedOutput("classes", binary_data=False,
                                                      class_count=3)]  # fmt: skip
    old = client.infer("pets3", [inp], model_version="1", outputs=outputs, headers=auth())
    assert old.get_response()["model_version"] == "1"
    assert_equal_to_predict(old, expected(home, "pets3@1", images))


def test_decoded_pixels_as_uint8_in_json_equal_mgr_predict(client, home, images) -> None:
    from PIL import Image

    path = images[0]  # one image: a tensor's images share one size
    pixels = np.asarray(Image.open(path).convert("RGB"))[None]
    inp = tritonclient_http.InferInput("pixels", list(pixels.shape), "UINT8")
    inp.set_data_from_numpy(pixels, binary_data=False)
    outputs = [tritonclient_http.InferRequestedOutput("probabilities", binary_data=False),
               tritonclient_http.InferRequestedOutput("classes", binary_data=False,
                                                      class_count=3)]  # fmt: skip
    result = client.infer("shapes", [inp], outputs=outputs, headers=auth())
    assert_equal_to_predict(result, expected(home, "shapes@1", [path]))


def test_bad_infer_requests_are_one_line_4xx(server, images) -> None:
    def infer(doc: dict, task: str = "pets3") -> tuple[int, object]:
        return server.request(f"/v2/models/{task}/infer", json.dumps(doc).encode())[:2]

    good = {"name": "images", "datatype": "BYTES", "shape": [1],
            "data": [__import__("base64").b64encode(images[0].read_bytes()).decode()]}  # fmt: skip
    status, out = infer({"inputs": [good]})
    assert status == 200 and out["model_name"] == "pets3", out
    cases = [
        ({"inputs": []}, 400, "exactly one input"),
        ({"inputs": [{**good, "datatype": "INT64"}]}, 400, "unsupported input datatype"),
        ({"inputs": [{**good, "shape": [2]}]}, 400, "base64"),
        ({"inputs": [{**good, "data": ["%%%"]}]}, 400, "not valid base64"),
        ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 2, 2], "data": [0] * 4}]},
         400, "[n, H, W, 3]"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 5, 5],
                      "data": [0.0] * 75}]}, 400, "the model takes"),
        ({"inputs": [good], "outputs": [{"name": "logits"}]}, 400, "unknown output"),
    ]  # fmt: skip
    for doc, expect, words in cases:
        status, out = infer(doc)
        assert words in one_line_error(status, out, expect), (doc, out)
    status, out = infer({"inputs": [good]}, task="nope")
    assert "unknown task" in one_line_error(status, out, 404)
    status, out = server.request("/v2/models/pets3/infer", b"{", key=KEY)[:2]
    assert "malformed JSON" in one_line_error(status, out, 400)
