"""Latency of the static demo (`reptorch demo --export`) in headless Chromium, beside the
Python engine's on the same tasks, in the same run.

    python -m bench.static_demo --repeats 30 --out docs/static-demo.json

Exports the model, serves the directory with Python's static file server on 127.0.0.1, opens it
in Debian's Chromium (Playwright) and times, on distinct support sets made of the shipped
example drawings (so that no fine-tuning is cached):
- `page`: what the page waits for, through its backend (static/browser.js, the engine in a Web
  Worker): a new support set (render + 50 fine-tuning steps + predict) and a query stroke once
  the support set is tuned;
- `engine`: the browser engine's fine-tuning + prediction alone, on the page's thread, with the
  WebAssembly kernels and with the JavaScript fallback (the measurement behind the choice);
- `python`: `reptorch.demo.engine.Engine.predict` on the same images, one thread, as
  `reptorch demo` runs it (the served demo's engine, without HTTP).
Reports medians and 90th percentiles in ms, the load average and the export's size.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import itertools
import json
import os
import platform
import random
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"]
SETTINGS = {"3-way 1-shot": (3, 1), "5-way 5-shot": (5, 5)}

MEASURE = """async ([tasks, kernels]) => {
    const backend = window.reptorchDemo.backend;  // the page's: a BrowserBackend in a worker
    const local = await new ReptorchBackends.BrowserBackend().load();
    const out = { page_new_support: [], page_query: [], engine: [] };
    const engine = new ReptorchEngine.Engine(local.engine.meta, local.weights, kernels);
    engine.warmUp();
    for (const task of tasks) {
        if (kernels === local.engine.kernels) {
            let start = performance.now();
            await backend.predict(task.support, task.query);
            out.page_new_support.push(performance.now() - start);
            start = performance.now();
            await backend.predict(task.support, task.query2);
            out.page_query.push(performance.now() - start);
        }
        const images = task.support.flat().map((d) => ReptorchRender.render(d));
        const query = ReptorchRender.render(task.query);
        const ways = task.support.length, shots = task.support[0].length;
        const start = performance.now();
        const { params } = engine.fineTune(images, ways, shots);
        engine.predict(params, images, query, ways);
        out.engine.push(performance.now() - start);
    }
    out.kernels = engine.kernels;
    return out;
}"""


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def tasks(examples: list, ways: int, shots: int, count: int, seed: int) -> list[dict]:
    """`count` distinct support sets of ways x shots drawings, with two queries (drawings of the
    first and second class by drawers outside the support set); drawings in the page's frame
    (120-pixel boxes, coordinates rounded to 0.1 as the page records them)."""
    rng = random.Random(seed)
    scale = 120 / 105
    chosen, seen = [], set()
    combos = list(itertools.permutations(range(len(examples)), ways))
    while len(chosen) < count:
        classes = rng.choice(combos)
        drawers = [tuple(rng.sample(range(6), shots)) for _ in classes]
        key = (classes, tuple(drawers))
        if key in seen:
            continue
        seen.add(key)
        support = [[_frame(examples[c][k], scale) for k in ks] for c, ks in zip(classes, drawers)]
        query, query2 = (
            _frame(examples[classes[c]][min(set(range(6)) - set(drawers[c]))], scale)
            for c in (0, 1)
        )
        chosen.append({"support": support, "query": query, "query2": query2})
    return chosen


def _frame(drawing: list, scale: float) -> list:
    return [[[round(x * scale, 1), round(y * scale, 1)] for x, y in s] for s in drawing]


def stats(values: list[float]) -> dict:
    return {
        "median_ms": round(float(np.median(values)), 1),
        "p90_ms": round(float(np.percentile(values, 90)), 1),
        "n": len(values),
    }


def python_engine(model, chosen: list[dict]) -> tuple[list[float], bool]:
    """Engine.predict (fresh fine-tuning) on the same images, one thread, as `reptorch demo`:
    (times, whether reptorch.fast fell back to eager PyTorch, i.e. slower than it should)."""
    import warnings

    import torch

    from reptorch.demo.engine import Engine
    from reptorch.demo.render import render

    torch.set_num_threads(1)
    engine = Engine(model, workers=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.warm_up()
    eager = any("no TorchScript" in str(w.message) for w in caught)
    times = []
    for task in chosen:
        support = np.stack([np.stack([render(d) for d in shots]) for shots in task["support"]])
        query = render(task["query"])
        engine.forget()
        start = time.perf_counter()
        engine.predict(support, query)
        times.append((time.perf_counter() - start) * 1e3)
    return times, eager


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="omniglot-5way")
    parser.add_argument("--repeats", type=int, default=30, help="support sets per setting")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from reptorch.demo.export import export_site
    from reptorch.demo.model import from_pretrained
    from reptorch.demo.strokes import load_examples

    model = from_pretrained(args.model)
    examples = [c["drawings"] for c in load_examples()["classes"]]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        summary = export_site(model, Path(tmp) / "site")
        handler = functools.partial(Quiet, directory=str(summary.directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        results: dict = {}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_selector("body[data-ready='1']")
            version = browser.version
            for name, (ways, shots) in SETTINGS.items():
                chosen = tasks(examples, ways, shots, args.repeats + 1, seed=ways * 10 + shots)
                warm, timed = chosen[:1], chosen[1:]
                page.evaluate(MEASURE, [warm, "webassembly"])  # compile and warm the JIT
                wasm = page.evaluate(MEASURE, [timed, "webassembly"])
                js = page.evaluate(MEASURE, [timed[: max(5, args.repeats // 3)], "javascript"])
                results[name] = {
                    "page_new_support": stats(wasm["page_new_support"]),
                    "page_query_stroke": stats(wasm["page_query"]),
                    "engine_webassembly": stats(wasm["engine"]),
                    "engine_javascript": stats(js["engine"]),
                }
                times, eager = python_engine(model, timed)
                results[name]["python_engine"] = stats(times) | {"eager_fallback": eager}
                print(name, json.dumps(results[name]), flush=True)
            browser.close()
        server.shutdown()
    report = {
        "model": args.model,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "chromium": version,
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "other_processes": _busy(),
        "export_bytes": {
            "total": summary.total_bytes,
            "model": summary.weights_bytes,
            "page_and_engine": summary.engine_bytes,
        },
        "results": results,
    }
    print(json.dumps(report["export_bytes"]), json.dumps(report["load_average_1min"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


def _busy() -> list[str]:
    """The processes using CPU besides this one (nice level, %CPU, command), for the record."""
    lines = subprocess.run(
        ["ps", "-eo", "ni,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True
    ).stdout.splitlines()[1:8]
    return [" ".join(line.split()[:2] + [" ".join(line.split()[2:])[:90]]) for line in lines]


if __name__ == "__main__":
    main()
