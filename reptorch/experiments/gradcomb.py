"""The gradient-combination experiment (paper Figure 4, paper-reference section 7).

Which sums of the k inner gradients g_1..g_k make a good meta-gradient? Ten curves on 5-shot
5-way Omniglot, each an ordinary `reptorch.run.training.Trainer` run (checkpointed and resumed
like `reptorch train`): plain SGD inner loop at lr 0.003 on the *summed* cross-entropy of
mini-batches of 25 (the reference's loss), meta-batch 1, train shots 5k so the k mini-batches
are disjoint, a constant meta step per curve:

- g1 (k = 1): joint training;
- g1+...+gk: Reptile, W - phi = -alpha (g_1 + ... + g_k), meta step 0.25;
- (g1+...+gk)/k: the same with the meta step divided by k;
- gk: first-order MAML, the last inner step W_k - W_{k-1} = -alpha g_k alone (its last mini-batch
  drawn like the others, disjoint from them here).

Accuracy is the reference's per-interval evaluation (`Trainer.interval_eval`): every
`eval_interval` iterations, one fresh task of the test split, fine-tuned with 5 SGD steps on
mini-batches of 25 (its whole support set), then its 5 queries classified (non-transductive);
the figure shows a centred moving average of it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reptorch.config import TrainConfig
from reptorch.errors import ConfigError
from reptorch.run.checkpoint import list_checkpoints, load_checkpoint
from reptorch.run.io import atomic_write_bytes, atomic_write_json
from reptorch.run.metrics_log import read_metrics
from reptorch.run.training import Trainer


@dataclass(frozen=True)
class Curve:
    label: str  # as in the paper's legend
    slug: str  # its run directory
    algorithm: str  # joint, reptile or fomaml
    k: int  # inner steps
    meta_step: float


CURVES: tuple[Curve, ...] = (
    Curve("g1", "g1", "joint", 1, 0.25),
    Curve("g1+g2", "sum2", "reptile", 2, 0.25),
    Curve("(g1+g2)/2", "mean2", "reptile", 2, 0.125),
    Curve("g2", "last2", "fomaml", 2, 0.25),
    Curve("g1+g2+g3", "sum3", "reptile", 3, 0.25),
    Curve("(g1+g2+g3)/3", "mean3", "reptile", 3, 0.08325),
    Curve("g3", "last3", "fomaml", 3, 0.25),
    Curve("g4", "last4", "fomaml", 4, 0.25),
    Curve("g1+g2+g3+g4", "sum4", "reptile", 4, 0.25),
    Curve("(g1+g2+g3+g4)/4", "mean4", "reptile", 4, 0.0625),
)


@dataclass(frozen=True)
class GradCombConfig:
    meta_iters: int = 40_000
    learning_rate: float = 0.003
    inner_batch: int = 25
    eval_batch: int = 25
    eval_iters: int = 5
    eval_interval: int = 10
    seed: int = 0
    data_dir: str | None = None
    device: str = "cpu"
    checkpoint_every: int = 100
    chunk: int = 1000  # iterations each curve advances per turn
    curves: tuple[str, ...] = tuple(c.slug for c in CURVES)

    def __post_init__(self) -> None:
        known = {c.slug for c in CURVES}
        unknown = [s for s in self.curves if s not in known]
        if unknown or not self.curves:
            raise ConfigError(f"curves {unknown}: choose from {', '.join(sorted(known))}")
        if self.chunk < 1:
            raise ConfigError(f"chunk={self.chunk}: iterations per turn must be at least 1")

    def selected(self) -> list[Curve]:
        return [c for c in CURVES if c.slug in self.curves]


def train_config(curve: Curve, config: GradCombConfig) -> TrainConfig:
    """The `TrainConfig` of one curve (reference flags: --shots 5 --train-shots 5k
    --inner-batch 25 --inner-iters k --learning-rate 0.003 --sgd --meta-batch 1
    --meta-step eps --meta-step-final eps --eval-batch 25 --eval-iters 5)."""
    return TrainConfig(
        dataset="omniglot",
        data_dir=config.data_dir,
        classes=5,
        shots=5,
        train_shots=5 * curve.k,
        inner_batch=config.inner_batch,
        inner_iters=curve.k,
        learning_rate=config.learning_rate,
        inner_optimizer="sgd",
        loss_reduction="sum",
        meta_step=curve.meta_step,
        meta_step_final=curve.meta_step,
        meta_batch=1,
        parallel="vmap",  # one task per meta-batch: the same semantics as "loop"
        meta_iters=config.meta_iters,
        eval_batch=config.eval_batch,
        eval_iters=config.eval_iters,
        eval_samples=0,
        eval_interval=config.eval_interval,
        algorithm=curve.algorithm,
        seed=config.seed,
        device=config.device,
        checkpoint_every=config.checkpoint_every,
    )


def completed(directory: Path) -> int:
    """Iterations a curve's run directory holds (0 if none)."""
    if not list_checkpoints(directory):
        return 0
    return load_checkpoint(directory).iteration


def run_all(
    config: GradCombConfig,
    directory: Path,
    workers: int | None = None,
    on_iteration: Callable[[], None] | None = None,
    stop_at: int | None = None,
) -> dict[str, int]:
    """Trains (or resumes) every curve in turns of `chunk` iterations, so that a stopped command
    leaves them within one chunk of each other (a later call brings them level at its first
    turn); `stop_at` ends every curve there. Returns {slug: iterations done}."""
    trainers = {
        c.slug: Trainer(train_config(c, config), directory / c.slug, workers)
        for c in config.selected()
    }
    done = {slug: completed(directory / slug) for slug in trainers}
    mark = min(done.values())
    end = config.meta_iters if stop_at is None else min(stop_at, config.meta_iters)
    while mark < end:
        mark = min(mark + config.chunk, end)
        for slug, trainer in trainers.items():
            if done[slug] < mark:
                trainer.train(progress=False, stop_at=mark, on_iteration=on_iteration, echo=False)
                done[slug] = trainer.learner.iteration
    return done


def read_curve(directory: Path) -> dict[str, list]:
    """{iteration, train, test}: the interval evaluations of one run's metrics.csv (empty lists
    before its first logged evaluation)."""
    path = directory / "metrics.csv"
    if not path.is_file() or len(path.read_text().splitlines()) < 2:
        return {"iteration": [], "train": [], "test": []}
    metrics = read_metrics(directory)
    return {
        "iteration": [int(i) for i in metrics["iteration"]],
        "train": metrics["train"],
        "test": metrics["monitor"],
    }


def smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average over `window` points (shorter at the ends)."""
    if not values:
        return []
    x = torch.tensor(values, dtype=torch.float64)
    half = max(window, 1) // 2
    csum = torch.cat([torch.zeros(1, dtype=x.dtype), x.cumsum(0)])
    idx = torch.arange(len(values))
    lo, hi = (idx - half).clamp(min=0), (idx + half + 1).clamp(max=len(values))
    return ((csum[hi] - csum[lo]) / (hi - lo)).tolist()


def collect(config: GradCombConfig, directory: Path, window: int) -> dict[str, dict[str, Any]]:
    """{label: {slug, k, algorithm, meta_step, iteration, train, test, test_smoothed}}."""
    curves = {}
    for c in config.selected():
        data = read_curve(directory / c.slug)
        curves[c.label] = {
            "slug": c.slug,
            "algorithm": c.algorithm,
            "k": c.k,
            "meta_step": c.meta_step,
            **data,
            "test_smoothed": smooth(data["test"], window),
        }
    return curves


def write_curves(curves: dict[str, dict[str, Any]], directory: Path, meta: dict) -> None:
    """curves.json ({"config", "curves"}) and curves.csv (one row per curve and evaluation)."""
    atomic_write_json(directory / "curves.json", {"config": meta, "curves": curves})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["curve", "iteration", "train", "test", "test_smoothed"])
    for label, c in curves.items():
        for row in zip(c["iteration"], c["train"], c["test"], c["test_smoothed"], strict=True):
            writer.writerow([label, *row])
    atomic_write_bytes(directory / "curves.csv", out.getvalue().encode())


def summary(curves: dict[str, dict[str, Any]], last: int) -> dict[str, float]:
    """Mean test accuracy over the last `last` evaluations of each curve (NaN if none)."""
    result = {}
    for label, c in curves.items():
        tail = c["test"][-last:]
        result[label] = sum(tail) / len(tail) if tail else float("nan")
    return result


def paired_difference(
    a: dict[str, list], b: dict[str, list], last: int | None = None
) -> tuple[float, float, int]:
    """Mean and standard error of a - b over the evaluations both curves made at the same
    iterations (the last `last` of them, or all). Every curve draws its interval tasks from the
    same seeded generator, so the evaluation at iteration i is the same test task for every curve:
    the difference is paired. (The error is the tasks'; one training run per curve.)"""
    ya, yb = dict(zip(a["iteration"], a["test"])), dict(zip(b["iteration"], b["test"]))
    common = sorted(set(ya) & set(yb))
    if last is not None:
        common = common[len(common) - min(last, len(common)) :]
    n = len(common)
    if n < 2:
        return float("nan"), float("nan"), n
    d = torch.tensor([ya[i] - yb[i] for i in common], dtype=torch.float64)
    return float(d.mean()), float(d.std() / n**0.5), n


def findings(curves: dict[str, dict[str, Any]], last: int) -> list[dict[str, Any]]:
    """The paper's qualitative claims, each as a paired difference of test accuracy with its
    standard error: over the whole run (the mean accuracy over all evaluations, i.e. the area
    under the learning curve: what "learns faster" means) and over the last `last` evaluations
    (where the curves stand). "No progress" compares one curve's last and first windows."""
    labels = set(curves)
    out = []

    def add(claim: str, a: str, b: str) -> None:
        if a not in labels or b not in labels:
            return
        for window in ("whole run", f"last {last}"):
            mean, se, n = paired_difference(
                curves[a], curves[b], None if window == "whole run" else last
            )
            if n >= 2:  # enough evaluations for a difference and its error
                row = {"claim": claim, "difference": f"{a} - {b}", "window": window}
                out.append({**row, "mean": mean, "se": se, "n": n})

    if "g1" in labels:  # progress: last window against first window (not overlapping)
        y = curves["g1"]["test"]
        n = min(len(y) // 2, last)
        if n >= 2:
            x, first = torch.tensor(y[-n:], dtype=torch.float64), torch.tensor(y[:n]).double()
            mean = float(x.mean() - first.mean())
            se = float((x.var() / n + first.var() / n) ** 0.5)
            window = f"last {n} - first {n}"
            claim = "g1 alone makes no progress"
            out.append(
                {"claim": claim, "difference": "g1 - g1", "window": window}
                | {"mean": mean, "se": se, "n": n}
            )
    for a, b in (
        ("g1+g2+g3", "g1+g2"),
        ("g1+g2+g3+g4", "g1+g2+g3"),
        ("(g1+g2+g3)/3", "(g1+g2)/2"),
        ("(g1+g2+g3+g4)/4", "(g1+g2+g3)/3"),
        ("g3", "g2"),
        ("g4", "g3"),
    ):
        add("more inner gradients learn faster", a, b)
    for a, b in (("g1+g2", "g2"), ("g1+g2+g3", "g3"), ("g1+g2+g3+g4", "g4")):
        add("the sum (Reptile) beats the last gradient (FOMAML)", a, b)
    return out


def truncate(curves: dict[str, dict[str, Any]], end: int) -> dict[str, dict[str, Any]]:
    """The curves' evaluations at iterations < `end` (to compare runs that stand at different
    iterations on the same evaluations)."""
    out = {}
    for label, c in curves.items():
        n = sum(1 for i in c["iteration"] if i < end)
        out[label] = {
            **c,
            **{key: c[key][:n] for key in ("iteration", "train", "test", "test_smoothed")},
        }
    return out
