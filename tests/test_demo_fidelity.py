"""The trained model on drawings rendered from real pen strokes: at least as accurate as on the
official images of the same drawings (3-way 1-shot tasks of held-out characters, support and
query by different drawers). bench/demo_fidelity.py measures the same on 1,000 tasks."""

from __future__ import annotations

import zipfile

import torch

from reptorch.data.omniglot_files import decode_png
from reptorch.demo import fidelity, strokes
from reptorch.demo.engine import Engine
from reptorch.demo.render import render
from reptorch.stats import mean_ci95

TASKS = 120


def test_rendered_strokes_classify_at_least_as_well_as_official_images(
    trained_demo_model, omniglot_strokes, omniglot_dir
):
    drawings = strokes.read_zip(omniglot_strokes)
    test_side = set((omniglot_dir / "reference-split-seed0-test.txt").read_text().split())
    characters = fidelity.characters_in(drawings, test_side)
    assert len(characters) == 36
    keys = [k for keys in characters.values() for k in keys]
    with zipfile.ZipFile(omniglot_dir / "images_background.zip") as archive:
        official = {
            k: decode_png(archive.read(f"images_background/{k}.png"), k) / 255.0 for k in keys
        }
    rendered = {k: render(drawings[k]) for k in keys}
    tasks = fidelity.sample_tasks(characters, TASKS, ways=3, shots=1, seed=1)
    for support, query in tasks:  # queries by drawers who drew none of their class's support
        for shots, q in zip(support, query):
            assert q not in shots and q.rsplit("/", 1)[0] == shots[0].rsplit("/", 1)[0]
    engine = Engine(trained_demo_model)
    on_rendered = fidelity.accuracy(engine, rendered, tasks)
    on_official = fidelity.accuracy(engine, official, tasks)
    difference, ci = mean_ci95(torch.as_tensor(on_rendered - on_official))
    assert on_rendered.mean() > 0.6  # far above chance (1/3) for a trained model
    assert difference + ci >= 0, (on_rendered.mean(), on_official.mean())
