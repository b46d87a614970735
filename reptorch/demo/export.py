"""`reptorch demo --export DIR`: the drawing demo as a static site that fine-tunes in the browser.

DIR receives the served demo's page (`static/index.html`, switched to its in-browser engine by
one attribute), its scripts (`static/render.js` renders strokes as `reptorch.demo.render` does;
`static/engine.js` fine-tunes and predicts as `reptorch.demo.engine.Engine` does), the example
drawings, and the model:
- `model.json`: the architecture, the inner optimiser with its carried step counter, the
  evaluation settings, the parameters' names and layouts, and the mini-batch indices Engine
  draws from its fixed seed for every N-way K-shot task (shipped rather than re-drawn: they come
  from PyTorch's generator, which the browser does not have);
- `weights.bin`: little-endian float32, phi then the inner Adam state's first and second
  moments, each parameter in `model.json`'s order and the browser engine's layouts.

Nothing is fetched from elsewhere at run time; any static file server (or host) serves DIR.
The site is written into a temporary sibling directory and renamed into place, so DIR is never
half-written; DIR may be absent, empty or an earlier export (replaced), nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reptorch.demo.engine import MAX_SHOTS, Engine
from reptorch.demo.model import DemoModel
from reptorch.demo.strokes import load_examples
from reptorch.errors import ConfigError
from reptorch.inner_optim import Adam, AdamState

FORMAT = "reptorch-static-demo"
STATIC = Path(__file__).parent / "static"
PAGE_FILES = (
    "demo.css",
    "demo.js",
    "render.js",
    "kernels.js",
    "kernel-sets.js",
    "engine.js",
    "browser.js",
    "worker.js",
)
SERVED_ENGINE = '<meta name="reptorch-engine" content="server">'
BROWSER_ENGINE = '<meta name="reptorch-engine" content="browser">'


@dataclass(frozen=True)
class ExportSummary:
    directory: Path
    weights_bytes: int  # weights.bin + model.json
    engine_bytes: int  # the page's code: html, css and scripts
    total_bytes: int  # everything in the directory


def browser_layout(name: str, value: torch.Tensor) -> np.ndarray:
    """A parameter (or moment estimate) in the browser engine's layout, float32, flattened:
    conv weights (out, in, ky, kx) -> (ky, kx, in, out); the classifier's (classes, C*2*2 in
    C, y, x order) -> (classes, y, x, C), matching its channels-last activations."""
    array = value.detach().to(torch.float32)
    if name.endswith("conv.weight"):
        array = array.permute(2, 3, 1, 0)
    elif name == "classifier.weight":
        classes, features = array.shape
        side = int(round((features / 64) ** 0.5))
        array = array.reshape(classes, -1, side, side).permute(0, 2, 3, 1)
    return array.contiguous().numpy().astype("<f4").reshape(-1)


def describe(model: DemoModel) -> tuple[dict, bytes]:
    """(model.json's content, weights.bin's bytes) for a demo model."""
    engine = Engine(model)
    names = [name for name, _ in model.module().named_parameters()]
    parts = [browser_layout(n, model.phi[n]) for n in names]
    optimizer = engine.optimizer
    state = model.inner_state
    if isinstance(optimizer, Adam):
        if not isinstance(state, AdamState):
            raise ConfigError(f"{model.name}: its inner state is not Adam's; cannot export it")
        parts += [browser_layout(n, state.exp_avg[n]) for n in names]
        parts += [browser_layout(n, state.exp_avg_sq[n]) for n in names]
        described = {"name": "adam", "lr": optimizer.lr, "beta1": optimizer.beta1}
        described |= {"beta2": optimizer.beta2, "eps": optimizer.eps, "step": int(state.step)}
    else:
        described = {"name": "sgd", "lr": optimizer.lr, "step": int(state.step)}
    spec = engine.evaluator(2, 1).spec
    indices = {}
    for ways in range(2, model.ways + 1):
        for shots in range(1, MAX_SHOTS + 1):
            table = engine.indices(engine.evaluator(ways, shots), 1)[0]
            indices[f"{ways}x{shots}"] = table.tolist()
    meta = {
        "format": FORMAT,
        "version": 1,
        "model": model.name,
        "classes": model.ways,
        "filters": 64,
        "max_shots": MAX_SHOTS,
        "inner_steps": spec.inner_iters,
        "inner_batch": spec.inner_batch,
        "learning_rate": model.config.learning_rate,
        "loss_reduction": model.config.loss_reduction,
        "weight_decay": spec.weight_decay,
        "optimizer": described,
        "parameters": [
            {"name": n, "shape": list(model.phi[n].shape), "size": model.phi[n].numel()}
            for n in names
        ],
        "weights": "weights.bin",
        "seed": engine.seed,
        "indices": indices,
    }
    return meta, np.concatenate(parts).tobytes()


def is_export(directory: Path) -> bool:
    """Whether a directory holds an earlier export (its model.json says so)."""
    try:
        return json.loads((directory / "model.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def export_site(model: DemoModel, directory: Path | str) -> ExportSummary:
    """Writes the static demo of `model` to `directory` (see the module's docstring)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--export {directory}: a file is in the way; choose a directory")
    if directory.is_dir() and any(directory.iterdir()) and not is_export(directory):
        raise ConfigError(
            f"--export {directory}: not empty and not an earlier export; choose a new directory"
        )
    page = (STATIC / "index.html").read_text()
    if page.count(SERVED_ENGINE) != 1:
        raise RuntimeError("static/index.html lacks its reptorch-engine marker")
    meta, weights = describe(model)
    parent = directory.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=parent))
    try:
        (staging / "static").mkdir()
        (staging / "index.html").write_text(page.replace(SERVED_ENGINE, BROWSER_ENGINE))
        for name in PAGE_FILES:
            shutil.copyfile(STATIC / name, staging / "static" / name)
        (staging / "weights.bin").write_bytes(weights)
        (staging / "model.json").write_text(json.dumps(meta, separators=(",", ":")))
        (staging / "examples.json").write_text(json.dumps(load_examples(), separators=(",", ":")))
        for path in [staging, staging / "static"]:
            os.chmod(path, 0o755)  # mkdtemp's 0700 would hide the site from a web server
        _replace(staging, directory.absolute())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    sizes = {
        p.relative_to(directory): p.stat().st_size for p in directory.rglob("*") if p.is_file()
    }
    weights_bytes = sizes[Path("weights.bin")] + sizes[Path("model.json")]
    engine_bytes = sizes[Path("index.html")] + sum(sizes[Path("static") / n] for n in PAGE_FILES)
    return ExportSummary(directory, weights_bytes, engine_bytes, sum(sizes.values()))


def _replace(staging: Path, directory: Path) -> None:
    """Renames staging to directory; an earlier export (or an empty directory) there is moved
    aside first and removed after, so that directory always holds one complete site."""
    if not directory.exists():
        staging.rename(directory)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
    aside.rmdir()
    directory.rename(aside)
    staging.rename(directory)
    shutil.rmtree(aside, ignore_errors=True)
