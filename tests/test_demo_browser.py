"""The demo page in a real headless Chromium (Debian's package, driven by Playwright): real human
pen strokes from the Omniglot stroke data drawn with the mouse into the boxes; the bars appear and
the query's class wins. Saves a screenshot (also to $REPTORCH_DEMO_SCREENSHOT when set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from reptorch.demo import strokes
from reptorch.demo.engine import Engine
from reptorch.demo.server import BackgroundServer, create_app

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-sync",
]
# Three characters of the reference split's test side (never seen in meta-training): the
# support drawings by drawer 01, the query a drawing of the second class by drawer 02.
CLASSES = ("Greek/character17", "Latin/character06", "Sanskrit/character04")
SUPPORT_DRAWER, QUERY_DRAWER, QUERY_CLASS = "01", "02", 1
BOX = 120  # CSS pixels of a drawing box (static/demo.js SIZE)


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} missing: apt-get install -y chromium"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def drawing(drawings: dict, character: str, drawer: str) -> list:
    (key,) = [k for k in drawings if k.startswith(character + "/") and k.endswith("_" + drawer)]
    return drawings[key]


def draw(page, box_key: str, strokes_105: list) -> None:
    """Replays a drawing (105x105 frame) with the mouse into the box `box_key`."""
    canvas = page.locator(f'canvas.draw[data-key="{box_key}"]')
    frame = canvas.bounding_box()
    scale = frame["width"] / 105
    for stroke in strokes_105:
        points = [(frame["x"] + x * scale, frame["y"] + y * scale) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point)
        page.mouse.up()


def test_draw_real_strokes_and_the_right_class_wins(
    chromium, trained_demo_model, omniglot_strokes, tmp_path
):
    import torch

    drawings = strokes.read_zip(omniglot_strokes)
    engine = Engine(trained_demo_model, workers=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `reptorch demo` runs (two threads stall when a core is busy)
    try:
        engine.warm_up()  # as `reptorch demo` does before it serves
        _draw_and_check(chromium, engine, drawings, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _draw_and_check(chromium, engine, drawings, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    with BackgroundServer(create_app(engine)) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator("canvas.draw").count() == 4  # 3-way 1-shot + the query
        for c, character in enumerate(CLASSES):
            draw(page, f"{c}/0", drawing(drawings, character, SUPPORT_DRAWER))
        assert page.locator(".bar").count() == 0  # no prediction before the query is drawn
        # every class drawn: the page fine-tunes ahead of the query ...
        page.wait_for_function("document.getElementById('status').textContent.includes('query')")
        assert page.locator("#loss-curve polyline").count() == 1
        draw(page, "q", drawing(drawings, CLASSES[QUERY_CLASS], QUERY_DRAWER))
        page.wait_for_selector(".bar.best", timeout=30_000)
        assert page.locator(".bar").count() == 3
        winner = page.locator(".bar.best").get_attribute("data-class")
        assert winner == str(QUERY_CLASS), page.inner_text("#bars")
        assert page.locator(f'.cell.class[data-class="{QUERY_CLASS}"].best').count() == 1
        ink = page.evaluate(
            """() => { const d = document.querySelector('canvas[data-seen="q"]')
                .getContext('2d').getImageData(0, 0, 28, 28).data;
                let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] < 128; return n; }"""
        )
        assert ink > 20  # the 28x28 image the network saw is shown beside the box
        assert page.locator("#loss-curve polyline").count() == 1
        # ... so the query's strokes reused those weights: no second fine-tuning
        assert "fine-tuning reused" in page.inner_text("#status"), page.inner_text("#status")
        shot = tmp_path / "demo.png"
        page.wait_for_timeout(500)  # let the bars' 0.15 s width transition finish
        widths = page.eval_on_selector_all(".bar .fill", "els => els.map(e => e.offsetWidth)")
        assert max(widths) > 0 and widths.index(max(widths)) == QUERY_CLASS, widths
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []
    assert shot.stat().st_size > 10_000
    if os.environ.get("REPTORCH_DEMO_SCREENSHOT"):
        shutil.copy(shot, os.environ["REPTORCH_DEMO_SCREENSHOT"])
