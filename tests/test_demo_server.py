"""The demo's engine and JSON API on an untrained model: the same numbers as a hand-written
fine-tuning loop, one-line 4xx answers to bad requests, 50 concurrent clients, the CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from reptorch.data.tasks import batched_minibatch_indices
from reptorch.demo.engine import Engine
from reptorch.demo.model import from_checkpoint
from reptorch.demo.render import render
from reptorch.demo.server import MAX_BODY, BackgroundServer, create_app, encode
from reptorch.evaluation import INDEX_SEED_OFFSET
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import Adam
from tests.helpers import untrained_omniglot_run


def scribble(seed: int, strokes: int = 2, points: int = 12) -> list:
    """A random drawing in canvas pixels."""
    rng = np.random.default_rng(seed)
    return [
        np.cumsum(rng.normal(0, 8, (points, 2)), 0).round(1).tolist() + [[0.0, 0.0]]
        for _ in range(strokes)
    ]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return untrained_omniglot_run(tmp_path_factory.mktemp("demo") / "run", eval_iters=10)


@pytest.fixture(scope="module")
def engine(run_dir):
    return Engine(from_checkpoint(run_dir), workers=1)


@pytest.fixture(scope="module")
def client(engine):
    return TestClient(create_app(engine))


def request_body(ways: int, shots: int, seed: int) -> dict:
    support = [[scribble(seed * 100 + 10 * c + k) for k in range(shots)] for c in range(ways)]
    return {"support": support, "query": scribble(seed * 100 + 99)}


def test_engine_equals_a_hand_written_fine_tuning_loop(engine):
    """Reference: the autograd oracle, inner Adam from the checkpoint's state, the evaluation's
    mini-batches (seed + 2^32), then the query in one batch with the support set."""
    ways, shots = 3, 2
    body = request_body(ways, shots, seed=1)
    support = np.stack([np.stack([render(d) for d in s]) for s in body["support"]])
    query = render(body["query"])
    got = engine.predict(support, query)

    model = engine.model
    reference = FunctionalModel(model.module(), model.loss())
    sx = torch.as_tensor(support).reshape(ways * shots, 1, 28, 28)
    sy = torch.arange(ways).repeat_interleave(shots)
    generator = torch.Generator().manual_seed(INDEX_SEED_OFFSET)
    spec = engine.evaluator(ways, shots).spec
    indices = batched_minibatch_indices(1, ways * shots, spec.inner_batch, 10, False, generator)
    params, state, losses = dict(model.phi), model.inner_state, []
    optimizer = Adam(model.config.learning_rate)
    for idx in indices[0]:
        loss, grads = reference.loss_and_grad(params, sx[idx], sy[idx])
        params, state = optimizer.step(params, grads, state)
        losses.append(float(loss))
    batch = torch.cat([sx, torch.as_tensor(query).reshape(1, 1, 28, 28)])
    with torch.no_grad():
        logits = reference(params, batch)[-1, :ways]
    np.testing.assert_allclose(got.probabilities, logits.double().softmax(-1), atol=2e-4)
    np.testing.assert_allclose(got.losses, losses, rtol=1e-3, atol=1e-4)
    assert got.predicted == int(logits.argmax())
    assert len(got.losses) == spec.inner_iters == 10


def test_cached_fine_tuning_gives_the_fresh_answer(engine, monkeypatch):
    """A second query on the same support set reuses theta_k: no inner loop runs, and the
    answer equals a fresh fine-tuning's (`Engine.run`, no cache)."""
    body = request_body(4, 2, seed=4)
    support = np.stack([np.stack([render(d) for d in s]) for s in body["support"]])
    first_query, second_query = render(body["query"]), render(scribble(77))
    engine.forget()
    assert engine.predict(support, first_query).fine_tuned
    calls = []
    original = engine._fine_tune
    monkeypatch.setattr(engine, "_fine_tune", lambda *a: calls.append(1) or original(*a))
    second = engine.predict(support, second_query)
    assert not second.fine_tuned and calls == []
    logits, losses = engine.run(
        torch.as_tensor(support)[None], torch.as_tensor(second_query)[None, None]
    )
    fresh = logits[0, 0, :4].double().softmax(-1)
    np.testing.assert_allclose(second.probabilities, fresh, rtol=0, atol=1e-12)
    np.testing.assert_allclose(second.losses, losses[0], rtol=0, atol=0)


def test_fine_tune_ahead_then_predict_only_classifies(client, engine, monkeypatch):
    """`/api/fine-tune` runs the inner loop once; `/api/predict` on the same support then reuses
    theta_k (no inner loop) and answers what a fresh fine-tuning would."""
    body = request_body(3, 2, seed=8)
    engine.forget()
    fresh = client.post("/api/predict", json=body).json()
    engine.forget()
    calls = []
    original = engine._fine_tune
    monkeypatch.setattr(engine, "_fine_tune", lambda *a: calls.append(1) or original(*a))
    ahead = client.post("/api/fine-tune", json={"support": body["support"]})
    assert ahead.status_code == 200, ahead.text
    tuned = ahead.json()
    assert tuned["fine_tuned"] and calls == [1] and tuned["losses"] == fresh["losses"]
    assert tuned["support"] == fresh["images"]["support"]
    again = client.post("/api/fine-tune", json={"support": body["support"]}).json()
    assert not again["fine_tuned"] and calls == [1]
    answer = client.post("/api/predict", json=body).json()
    assert not answer["fine_tuned"] and calls == [1]
    assert answer["probabilities"] == fresh["probabilities"]


def test_predict_and_render(client):
    body = request_body(3, 1, seed=2)
    response = client.post("/api/predict", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert abs(sum(data["probabilities"]) - 1) < 1e-9 and len(data["probabilities"]) == 3
    assert data["predicted"] == int(np.argmax(data["probabilities"]))
    assert data["images"]["query"] == encode(render(body["query"]))
    assert data["images"]["support"][2][0] == encode(render(body["support"][2][0]))
    again = client.post("/api/predict", json=body).json()
    assert again["probabilities"] == data["probabilities"]  # fixed seed: same answer
    drawings = [scribble(5), scribble(6)]
    images = client.post("/api/render", json={"drawings": drawings}).json()["images"]
    assert images == [encode(render(d)) for d in drawings]
    assert len(images[0]) == 784 and set(images[0]) <= {"0", "1"}
    info = client.get("/api/info").json()
    assert info["ways"] == 5 and info["inner_steps"] == 10
    assert len(client.get("/api/examples").json()["classes"]) == 5
    page = client.get("/").text  # relative paths: the static export serves the same page
    assert '"static/demo.js"' in page and 'name="reptorch-engine" content="server"' in page
    assert "pointerdown" in client.get("/static/demo.js").text
    assert "api/predict" in client.get("/static/browser.js").text
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]


def _body(**changes) -> dict:
    body = request_body(3, 1, seed=3)
    body.update(changes)
    return body


LINE = [[float(i), float(i % 7)] for i in range(10)]
BAD_REQUESTS = {
    "malformed JSON": (b'{"support": [', 400, "malformed JSON"),
    "not an object": (b"[1, 2]", 422, "body"),
    "support not a list": (_body(support="abc"), 422, "support"),
    "point of three numbers": (_body(query=[[[1, 2, 3]]]), 422, "query[0][0]"),
    "point not a number": (_body(query=[[["a", 2]]]), 422, "query[0][0][0]"),
    "empty drawing": (_body(query=[]), 422, "query"),
    "empty stroke": (_body(query=[[]]), 422, "query[0]"),
    "empty support drawing": (_body(support=[[[]], [[LINE]], [[LINE]]]), 422, "support[0][0]"),
    "one class": (_body(support=[[[LINE]]]), 422, "support"),
    "too many ways": (_body(support=[[[LINE]]] * 6), 422, "2 to 5"),
    "too many shots": (_body(support=[[[LINE]] * 6] * 3), 422, "1 to 5"),
    "ragged shots": (_body(support=[[[LINE]], [[LINE], [LINE]], [[LINE]]]), 422, "same number"),
    "too many strokes": (_body(query=[LINE] * 65), 422, "query"),
    "too many points": (_body(query=[LINE * 401]), 422, "query"),
    "too many points in strokes": (_body(query=[LINE * 100] * 5), 422, "4000"),
    "unknown field": (_body(extra=1), 422, "extra"),
    "NaN": (b'{"support": [[[[[0, 0]]]], [[[[0, NaN]]]]], "query": [[[0, 0]]]}', 422, "support"),
    "huge coordinate": (_body(query=[[[1e300, 0]]]), 422, "query"),
    "oversized body": (b"[" + b"0," * MAX_BODY + b"0]", 413, "bytes"),
}
# The same checks on /api/fine-tune's body (support only); a query is an unknown field there.
for _name in ("empty support drawing", "one class", "too many ways", "too many shots"):
    _request, _status, _fragment = BAD_REQUESTS[_name]
    BAD_REQUESTS[f"fine-tune: {_name}"] = ({"support": _request["support"]}, _status, _fragment)
BAD_REQUESTS["fine-tune: query given"] = (_body(), 422, "query")


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_requests_get_a_one_line_4xx_and_nothing_runs(client, engine, monkeypatch, name):
    body, status, fragment = BAD_REQUESTS[name]
    calls = []
    monkeypatch.setattr(engine, "_fine_tune", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(engine, "run", lambda *a, **k: calls.append(a))
    path = "/api/predict"
    if name.startswith("fine-tune"):
        path = "/api/fine-tune"
    if isinstance(body, dict):
        response = client.post(path, json=body)
    else:
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert set(response.json()) == {"detail"} and isinstance(detail, str)
    assert "\n" not in detail and fragment in detail, detail
    assert calls == []


def test_oversized_body_without_length_is_refused(client):
    chunks = (b"x" * 65536 for _ in range(MAX_BODY // 65536 + 2))
    response = client.post(
        "/api/render", content=chunks, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "bytes" in response.json()["detail"]


@pytest.fixture(scope="module")
def live_server(engine):
    with BackgroundServer(create_app(engine)) as server:
        yield server.url


def test_fifty_concurrent_clients_get_their_own_answers(client, live_server):
    bodies = [request_body(2 + i % 4, 1 + i % 2, seed=100 + i) for i in range(50)]
    expected = [client.post("/api/predict", json=b).json() for b in bodies]  # one at a time

    def ask(body):
        with httpx.Client(timeout=120) as http:
            return http.post(f"{live_server}/api/predict", json=body)

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(ask, bodies))
    assert [r.status_code for r in responses] == [200] * 50
    for got, want in zip(responses, expected):
        data = got.json()
        assert data["probabilities"] == want["probabilities"]
        assert data["images"] == want["images"]


def _cli(*argv: str) -> subprocess.Popen:
    code = "import sys; from reptorch.cli import main; sys.exit(main())"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def fastest_answer_ms(address: str, tries: int = 6) -> float:
    """The fastest of `tries` GET /api/info on one keep-alive connection, to the last byte.

    With Nagle's algorithm on the server's socket, the body (written after the headers) waits
    for the client's delayed ACK: never under 40 ms, whatever the load.
    """
    import socket
    import time

    host, port = address.removeprefix("http://").rsplit(":", 1)
    times = []
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        for _ in range(tries):
            start, data = time.perf_counter(), b""
            sock.sendall(b"GET /api/info HTTP/1.1\r\nHost: demo\r\n\r\n")
            while not data.endswith(b"}"):
                data += sock.recv(65536)
            times.append((time.perf_counter() - start) * 1e3)
    return min(times[1:])


@pytest.mark.parametrize("source", ["checkpoint", "shipped model"])
def test_cli_serves_on_localhost(run_dir, source):
    argv = ["--checkpoint", str(run_dir)] if source == "checkpoint" else []  # default: shipped
    process = _cli("demo", *argv, "--port", "0")
    try:
        address = None
        for _ in range(5):
            line = process.stdout.readline()
            match = re.search(r"open (http://\S+)/", line)
            if match:
                address = match.group(1)
                break
        assert address and address.startswith("http://127.0.0.1:"), address
        info = httpx.get(f"{address}/api/info", timeout=30).json()
        assert info["ways"] == 5
        assert "demo.js" in httpx.get(f"{address}/", timeout=30).text
        assert fastest_answer_ms(address) < 30  # Nagle's algorithm off (see `server.listen`)
    finally:
        process.terminate()
        process.wait(30)


def test_cli_mistakes_are_one_line(tmp_path):
    for argv, fragment in [
        (["demo", "--checkpoint", str(tmp_path)], "no config.json"),
        (["demo", "--checkpoint", str(tmp_path), "--port", "70000"], "--port"),
        (["demo", "--model", "no-such-model"], "omniglot-5way"),  # the models listed
    ]:
        process = _cli(*argv)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 1
        assert err.count("\n") == 1 and fragment in err, err


def test_package_data_ships_the_page_and_examples(tmp_path):
    """A wheel built from a clean copy of the sources holds the static files and the example
    strokes (an editable install would find them in the source tree either way)."""
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    shutil.copytree(
        root / "reptorch", source / "reptorch", ignore=shutil.ignore_patterns("__pycache__")
    )
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "-w",
        str(tmp_path),
        str(source),
    ]
    subprocess.run(command, check=True, capture_output=True)
    import zipfile

    (wheel,) = tmp_path.glob("reptorch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    from reptorch.demo.export import PAGE_FILES  # the page's files, the static export's too

    for name in ("static/index.html", *(f"static/{f}" for f in PAGE_FILES), "examples/README.md"):
        assert f"reptorch/demo/{name}" in names
    assert sum(n.startswith("reptorch/demo/examples/") and n.endswith(".txt") for n in names) == 30
