"""The static demo (`reptorch demo --export DIR`) in Debian's headless Chromium (Playwright),
served by a plain static file server on 127.0.0.1 with every other request refused: its renderer
gives `reptorch.demo.render`'s images bit for bit, its fine-tuning gives `Engine`'s
probabilities, and drawing strokes into it classifies them. (The export's files, without a
browser: tests/test_demo_export.py.)"""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from reptorch.demo.engine import Engine
from reptorch.demo.export import STATIC, export_site
from reptorch.demo.render import render
from reptorch.demo.server import encode
from reptorch.demo.strokes import load_examples
from tests.test_demo_browser import ARGS, BOX, chromium  # noqa: F401 (the fixture)

# Probabilities: Chromium computes in float64, Engine in float32 (the same operations otherwise);
# measured differences are ~1e-8 after the 50 steps, so 1e-4 leaves room for another CPU's
# rounding while any real difference (a wrong mini-batch, layout or BN detail) moves them by
# 1e-2 or more.
PROBABILITY_TOLERANCE = 1e-4


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(trained_demo_model, tmp_path_factory):
    """The export of the shipped model, served on 127.0.0.1: (url, directory)."""
    directory = tmp_path_factory.mktemp("static") / "site"
    export_site(trained_demo_model, directory)
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", directory
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(chromium):  # noqa: F811 (the fixture imported above)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, site):
    """The exported page, loaded and ready; requests leaving 127.0.0.1 are refused and recorded,
    as are page errors (both must stay empty)."""
    url, _ = site
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    outside, errors = [], []

    def route(request_route):
        if request_route.request.url.startswith(url + "/"):
            request_route.continue_()
        else:
            outside.append(request_route.request.url)
            request_route.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url + "/index.html")
    page.wait_for_selector("body[data-ready='1']")
    yield page
    page.close()
    assert outside == [] and errors == []


@pytest.fixture(scope="module")
def engine(trained_demo_model):
    """The Python engine on one thread, as `reptorch demo` runs it: two intra-op threads stall
    for seconds on a machine whose other core is busy (reptorch.chain_threads.cpu_threads)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Engine(trained_demo_model, workers=1)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def examples() -> list[list]:
    """The shipped drawings: examples[c][i], 5 characters x 6 drawers (105x105 frame)."""
    return [c["drawings"] for c in load_examples()["classes"]]


def test_browser_renders_drawings_as_python_does(page, examples):
    """Image for image: every shipped drawing, in its own frame and as the page sends it (canvas
    pixels rounded to 0.1), and some edge cases."""
    drawings = [d for drawings in examples for d in drawings]
    drawings += [
        [[[round(x * BOX / 105, 1), round(y * BOX / 105, 1)] for x, y in s] for s in d]
        for d in drawings
    ]
    drawings += [
        [[[3, 3]]],  # a lone dot
        [[[0, 0], [100, 0]]],  # a straight line
        [[[5, 5], [5, 5], [5, 5]], [[5, 5]]],  # one point, repeated
        [[[0, 0], [40, 90], [80, 0]], [[20, 45], [60, 45]]],
    ]
    got = page.evaluate(
        "(ds) => ds.map((d) => ReptorchRender.encode(ReptorchRender.render(d)))", drawings
    )
    want = [encode(render(d)) for d in drawings]
    differing = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert differing == [], f"{len(differing)} of {len(drawings)} images differ"


@pytest.mark.parametrize(
    ("classes", "shots", "query"),
    [((0, 2, 4), 1, (0, 5)), ((0, 1, 2, 3, 4), 5, (0, 5))],
    ids=["3-way-1-shot", "5-way-5-shot"],
)
def test_browser_probabilities_match_the_engine(page, examples, engine, classes, shots, query):
    support = [[examples[c][k] for k in range(shots)] for c in classes]
    drawing = examples[query[0]][query[1]]
    images = np.stack([np.stack([render(d) for d in shots_of]) for shots_of in support])
    expected = engine.predict(images, render(drawing))
    got = page.evaluate(
        """async ([support, query]) => {
            const backend = window.reptorchDemo.backend;
            const first = await backend.predict(support, query);
            const again = await backend.predict(support, query);
            return { first, again };
        }""",
        [support, drawing],
    )
    first = got["first"]
    assert first["fine_tuned"] and not got["again"]["fine_tuned"]  # the second reused it
    assert got["again"]["probabilities"] == first["probabilities"]
    np.testing.assert_allclose(
        first["probabilities"], expected.probabilities, atol=PROBABILITY_TOLERANCE, rtol=0
    )
    # losses: float32 cross-entropies near 0.003 resolve ~1e-6 (logits of ~10 cancel)
    np.testing.assert_allclose(first["losses"], expected.losses, rtol=1e-4, atol=1e-5)
    assert first["predicted"] == expected.predicted
    assert max(expected.probabilities) < 0.999 or shots == 5  # not a saturated, easy case


def test_browser_engine_kernels_agree_and_were_built_from_their_source(page, examples):
    """The WebAssembly kernels the page uses and the JavaScript fallback give the same
    fine-tuning; static/kernels.js was built from the static/kernels.wat beside it."""
    support = [[examples[c][0]] for c in (0, 2, 4)]
    got = page.evaluate(
        """async ([support, query]) => {
            const backend = await new ReptorchBackends.BrowserBackend().load();  // in the page
            const images = support.flat().map((d) => ReptorchRender.render(d));
            const q = ReptorchRender.render(query);
            const meta = backend.engine.meta;
            const js = new ReptorchEngine.Engine(meta, backend.weights, "javascript");
            return [backend.engine, js].map((engine) => {
                const { params, losses } = engine.fineTune(images, 3, 1);
                return { kernels: engine.kernels, losses, p: engine.predict(params, images, q, 3) };
            });
        }""",
        [support, examples[0][5]],
    )
    assert [g["kernels"] for g in got] == ["webassembly", "javascript"]
    np.testing.assert_allclose(got[0]["p"], got[1]["p"], atol=1e-9, rtol=0)
    np.testing.assert_allclose(got[0]["losses"], got[1]["losses"], rtol=1e-9)
    built = (STATIC / "kernels.js").read_text()
    assert hashlib.sha256((STATIC / "kernels.wat").read_bytes()).hexdigest() in built, (
        "static/kernels.wat changed: rebuild kernels.js (python -m bench.build_kernels)"
    )


def test_exported_page_classifies_drawn_strokes_offline(page, examples):
    """The mouse draws the shipped drawings into the boxes: 3 characters by one drawer, the query
    another drawer's drawing of the second; the bars come from the page alone."""
    from tests.test_demo_browser import draw

    query_class = 1
    for c in range(3):
        draw(page, f"{c}/0", examples[c][0])
    page.wait_for_function("document.getElementById('status').textContent.includes('query')")
    assert page.locator("#loss-curve polyline").count() == 1
    draw(page, "q", examples[query_class][4])
    page.wait_for_selector(".bar.best", timeout=30_000)
    assert page.locator(".bar").count() == 3
    assert page.locator(".bar.best").get_attribute("data-class") == str(query_class)
    assert "fine-tuning reused" in page.inner_text("#status")
    assert "in your browser" in page.inner_text("#model")
    # the engine ran in a Web Worker, off the page's thread
    assert page.evaluate("window.reptorchDemo.backend instanceof ReptorchBackends.WorkerBackend")
    assert page.locator("#api-link").count() == 0  # no JSON API without a server


def test_page_opened_from_a_file_says_how_to_serve_it(browser, site):
    _, directory = site
    page = browser.new_page()
    page.goto(Path(directory, "index.html").as_uri())
    page.wait_for_selector("body[data-ready='error']")
    assert "http.server" in page.inner_text("#status")
    page.close()
