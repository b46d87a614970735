"""The demo's fidelity and speed: rendered pen strokes vs the official Omniglot images.

1. Ink overlap: every drawing of the stroke subset (3,120) rendered by the demo's preprocessing,
   against its official 28x28 image, both aligned on their ink box (`reptorch.demo.fidelity`);
   for scale, two drawers of the same character, and two characters.
2. Accuracy: N-way K-shot tasks over the characters of the subset that are on the test side of
   the reference split (never seen in meta-training), support and queries by different drawers;
   the same tasks made of rendered strokes and of the official images, classified by the demo's
   engine (fine-tuning as `reptorch eval`, non-transductive).
3. Latency of one prediction (engine alone, and the HTTP API in-process) on this machine.

    python -m bench.demo_fidelity --checkpoint runs/omniglot-5w1s --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from reptorch.chain_threads import cpu_threads
from reptorch.data.omniglot_files import decode_png
from reptorch.demo import fidelity, strokes
from reptorch.demo.engine import Engine
from reptorch.demo.model import from_checkpoint, from_pretrained
from reptorch.demo.render import render
from reptorch.demo.server import load_examples
from reptorch.stats import mean_ci95


def overlaps(drawings, official, rendered, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"rendered vs its official image": [], "official, other drawer": []}
    rows["official, other character"] = []
    keys = sorted(drawings)
    aligned = {k: fidelity.align(official[k]) for k in keys}
    for key in keys:
        character = key.rsplit("/", 1)[0]
        mates = [k for k in keys if k.startswith(character + "/") and k != key]
        strangers = [k for k in keys if not k.startswith(character + "/")]
        mate, stranger = mates[rng.integers(len(mates))], strangers[rng.integers(len(strangers))]
        rows["rendered vs its official image"].append(
            fidelity.overlap(fidelity.align(rendered[key]), aligned[key])
        )
        rows["official, other drawer"].append(fidelity.overlap(aligned[mate], aligned[key]))
        rows["official, other character"].append(fidelity.overlap(aligned[stranger], aligned[key]))
    summary = {
        name: {
            "iou": float(np.mean([r[0] for r in v])),
            "f1_1px": float(np.mean([r[1] for r in v])),
        }
        for name, v in rows.items()
    }
    ink = [((rendered[k] < 0.5).sum(), (official[k] < 0.5).sum()) for k in keys]
    summary["ink pixels rendered / official"] = float(
        sum(a for a, _ in ink) / sum(b for _, b in ink)
    )
    return summary


def latency(engine: Engine, examples: dict, repeats: int) -> dict:
    import httpx

    from reptorch.demo.server import BackgroundServer, create_app

    results = {}
    classes = examples["classes"]
    for ways, shots in ((3, 1), (5, 5)):
        if ways > engine.model.ways:
            continue
        support = [[classes[c]["drawings"][k] for k in range(shots)] for c in range(ways)]
        query = classes[1]["drawings"][-1]
        images = np.stack([np.stack([render(d) for d in s]) for s in support])
        engine.warm_up(ways, shots)
        times, cpu, query_only = [], [], []
        for _ in range(repeats):
            engine.forget()  # a new support set: fine-tuning + prediction
            start = time.process_time()  # CPU time of all threads: what an idle core would take
            times.append(engine.predict(images, render(query)).milliseconds)
            cpu.append((time.process_time() - start) * 1e3)
            # the same support set, a changed query (the user drawing the query): prediction only
            query_only.append(engine.predict(images, render(query[:-1] or query)).milliseconds)
        body = {"support": support, "query": query}
        http, http_query = [], []
        with (
            BackgroundServer(create_app(engine)) as served,
            httpx.Client(base_url=served.url) as client,
        ):
            client.post("/api/predict", json=body)  # connection and render cache warm
            for _ in range(repeats):
                engine.forget()
                start = time.perf_counter()
                assert client.post("/api/predict", json=body).status_code == 200
                http.append((time.perf_counter() - start) * 1e3)
            # the page's order: /api/fine-tune once every class is drawn, then each query stroke
            assert client.post("/api/fine-tune", json={"support": support}).status_code == 200
            for _ in range(repeats):
                start = time.perf_counter()
                assert client.post("/api/predict", json=body).json()["fine_tuned"] is False
                http_query.append((time.perf_counter() - start) * 1e3)
        results[f"{ways}-way {shots}-shot"] = {
            "engine_ms_median": statistics.median(times),
            "engine_ms_p90": float(np.percentile(times, 90)),
            "engine_cpu_ms_median": statistics.median(cpu),
            "query_only_ms_median": statistics.median(query_only),
            "http_ms_median": statistics.median(http),
            "http_ms_p90": float(np.percentile(http, 90)),
            "http_query_after_fine_tune_ms_median": statistics.median(http_query),
        }
    results["load_average_1min"] = os.getloadavg()[0]
    results["cpus"] = os.cpu_count()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a shipped model (reptorch.pretrained)")
    source.add_argument("--checkpoint", type=Path, help="an Omniglot run directory")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--ways", type=int, default=3)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=30, help="latency measurements")
    parser.add_argument("--latency-only", action="store_true", help="skip parts 1 and 2")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()

    model = from_checkpoint(args.checkpoint) if args.checkpoint else from_pretrained(args.model)
    cpu_threads()
    engine = Engine(model, workers=1)
    archive = args.data_dir / "omniglot-strokes" / "strokes_background_small2.zip"
    drawings = strokes.read_zip(archive)
    with zipfile.ZipFile(args.data_dir / "omniglot" / "images_background.zip") as images:
        official = {
            k: decode_png(images.read(f"images_background/{k}.png"), k) / 255.0 for k in drawings
        }
    rendered = {k: render(d) for k, d in drawings.items()}
    results: dict = {"model": model.name, "drawings": len(drawings)}
    if args.latency_only:
        results["latency"] = latency(engine, load_examples(), args.repeats)
        write(results, args.out)
        return
    results["overlap"] = overlaps(drawings, official, rendered, args.seed)

    split_file = args.data_dir / "omniglot" / "reference-split-seed0-test.txt"
    characters = fidelity.characters_in(drawings, set(split_file.read_text().split()))
    tasks = fidelity.sample_tasks(characters, args.tasks, args.ways, args.shots, args.seed)
    accuracy = {}
    for name, images in (("rendered strokes", rendered), ("official images", official)):
        start = time.perf_counter()
        scores = fidelity.accuracy(engine, images, tasks)
        mean, ci = mean_ci95(torch.as_tensor(scores))
        accuracy[name] = {"accuracy": mean, "ci95": ci, "seconds": time.perf_counter() - start}
        accuracy[name]["scores"] = scores
    difference = accuracy["rendered strokes"].pop("scores") - accuracy["official images"].pop(
        "scores"
    )
    paired = mean_ci95(torch.as_tensor(difference))
    results["accuracy"] = {
        "tasks": len(tasks),
        "ways": args.ways,
        "shots": args.shots,
        "characters": len(characters),
        **accuracy,
        "rendered minus official": {"mean": paired[0], "ci95": paired[1]},
    }
    results["latency"] = latency(engine, load_examples(), args.repeats)
    write(results, args.out)


def write(results: dict, out: Path | None) -> None:
    text = json.dumps(results, indent=2, default=float)
    print(text)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
