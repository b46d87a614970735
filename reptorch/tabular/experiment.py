"""The study: every method on the same seeded episodes of every problem, tuned on validation.

Honesty rules, enforced here:
  - every hyperparameter (fine-tuning learning rate and step count, C, k, tree depth) is chosen on
    validation episodes (validation classes or tables); the test episodes are scored once, with
    the chosen setting;
  - the meta-learned networks are trained with several seeds; the classical baselines need none;
  - all methods see the same test episodes (fixed by the episode seed), so differences are paired;
  - Reptile's untouched initialisation (0 fine-tuning steps) is scored too: with labels
    re-shuffled per episode it must sit at chance, 1/N, or something leaks;
  - wall-clock: meta-training (or pre-training) and test-time fitting, per method.
Each problem's results are written to `<out>/parts/` as it finishes, and a rerun with the same
settings picks them up, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from reptorch.run.io import atomic_write_bytes
from reptorch.tabular.baselines import GRIDS, baseline_accuracy
from reptorch.tabular.data import load_keel
from reptorch.tabular.episodes import (
    ClassSplitProblem,
    Episodes,
    SyntheticProblem,
    TableTransferProblem,
)
from reptorch.tabular.neural import (
    MetaConfig,
    features,
    finetune_accuracy,
    meta_train,
    pretrain,
    scratch_init,
)

# The tables with many classes and numeric features (tabular/README.md), for family A.
A_TABLES = ("letter", "penbased", "optdigits", "satimage", "texture", "segment", "vowel")
REPTILE = "reptile"
UNTOUCHED = "reptile, untouched init"
NEURAL = (REPTILE, "joint (k=1)", "scratch", "pretrain + fine-tune")
FEATURES = "pretrain + logistic regression"
METHODS = (*NEURAL, FEATURES, *GRIDS)
FAMILIES = ("A", "B", "C")
PRIMARY = {"family": "A", "shots": 5}  # declared before running: Reptile minus best other


@dataclass(frozen=True)
class StudyConfig:
    shots: tuple[int, ...] = (1, 5, 10, 20)
    queries: int = 15
    seeds: tuple[int, ...] = (0, 1, 2)
    val_episodes: int = 30
    test_episodes: int = 60
    finetune_lrs: tuple[float, ...] = (1e-3, 1e-2)
    meta_lrs: tuple[float, ...] = (1e-3, 1e-2)
    finetune_steps: tuple[int, ...] = (0, 5, 10, 25, 50, 100)
    families: tuple[str, ...] = FAMILIES
    a_tables: tuple[str, ...] = A_TABLES
    meta: MetaConfig = field(default_factory=MetaConfig)
    episode_seed: int = 1234

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def quick_config() -> StudyConfig:
    """The CI-sized study (a few minutes): one family-A table, short meta-training with the
    larger inner learning rate only, few episodes, 1 and 5 shots."""
    return StudyConfig(
        shots=(1, 5),
        val_episodes=10,
        test_episodes=20,
        finetune_steps=(0, 10, 25, 50),
        meta_lrs=(1e-2,),
        a_tables=("letter",),
        meta=MetaConfig(meta_iters=150),
    )


def build_problems(config: StudyConfig, data_dir) -> list:
    """The problems of the chosen families (family A and C read the KEEL tables)."""
    problems: list = []
    if "A" in config.families:
        tables = load_keel(data_dir, list(config.a_tables))
        problems += [ClassSplitProblem(tables[name]) for name in config.a_tables]
    if "B" in config.families:
        problems += [SyntheticProblem(shared=True), SyntheticProblem(shared=False)]
    if "C" in config.families:
        problems.append(TableTransferProblem(load_keel(data_dir)))
    return problems


def _episodes(problem, config: StudyConfig, split: str) -> dict[int, Episodes]:
    count = config.val_episodes if split == "val" else config.test_episodes
    offset = {"val": 1, "test": 2}[split]
    return {
        k: problem.episodes(
            split,
            count,
            k,
            config.queries,
            torch.Generator().manual_seed(config.episode_seed * 10 + offset * 1000 + k),
        )
        for k in config.shots
    }


def _choose_finetuning(phi, val: Episodes, config: StudyConfig) -> tuple[dict, float]:
    """(lr, steps) with the best mean validation accuracy (ties: fewer steps, smaller lr)."""
    best, best_acc = None, -1.0
    for lr in config.finetune_lrs:
        curve = finetune_accuracy(phi, val, lr, list(config.finetune_steps))
        for steps in sorted(curve):
            acc = curve[steps].mean().item()
            if acc > best_acc + 1e-12:
                best, best_acc = {"lr": lr, "steps": steps}, acc
    return best, best_acc


def _meta_trained(problem, algorithm, config, seed, val, chosen, record, method):
    """(phi, seconds) of meta-training. At the first seed the inner learning rate is chosen on
    validation from `config.meta_lrs` (mean over shot counts of the best fine-tuned validation
    accuracy); the other seeds reuse it. The extra runs count as the method's 'tuning' seconds."""
    if method in chosen:
        meta = dataclasses.replace(config.meta, inner_lr=chosen[method])
        return meta_train(problem, algorithm, meta, seed)
    best = None
    for lr in config.meta_lrs:
        meta = dataclasses.replace(config.meta, inner_lr=lr)
        phi, seconds = meta_train(problem, algorithm, meta, seed)
        score = sum(_choose_finetuning(phi, val[k], config)[1] for k in config.shots)
        if best is None or score > best[0] + 1e-12:
            best = (score, lr, phi, seconds)
        record.time(method, "tuning", seconds)
    record.time(method, "tuning", -best[3])
    chosen[method] = best[1]
    record.chosen[method] = {"inner_lr": best[1], "seed": seed}
    return best[2], best[3]


def _choose(evaluate: Callable[[dict, Episodes], torch.Tensor], grid, val: Episodes):
    scores = [evaluate(hp, val).mean().item() for hp in grid]
    i = max(range(len(grid)), key=lambda j: (scores[j], -j))
    return grid[i], scores[i]


def _on_features(phi, hp: dict, eps: Episodes) -> torch.Tensor:
    """Logistic regression on the pre-trained network's last hidden layer."""
    sx, qx = features(phi, eps.support_x), features(phi, eps.query_x)
    return baseline_accuracy("logistic regression", hp, eps, sx, qx)


class Record:
    """Per method and shot count: chosen hyperparameters, validation score and test accuracies
    per seed (a list of E per-episode accuracies each), plus seconds per method."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, dict[str, list]]] = {}
        self.seconds: dict[str, dict[str, float]] = {}
        self.chosen: dict[str, dict] = {}  # meta-training settings chosen on validation

    def add(self, method: str, shots: int, hp, val: float | None, test: torch.Tensor) -> None:
        entry = self.results.setdefault(method, {}).setdefault(
            str(shots), {"hp": [], "val": [], "test": []}
        )
        entry["hp"].append(hp)
        entry["val"].append(val)
        entry["test"].append([round(v, 6) for v in test.tolist()])

    def time(self, method: str, phase: str, seconds: float) -> None:
        slot = self.seconds.setdefault(method, {"train": 0.0, "test": 0.0, "tuning": 0.0})
        slot[phase] += seconds


def run_problem(problem, config: StudyConfig, log: Callable[[str], None] = print) -> dict:
    """Every method on one problem; returns its JSON-ready record."""
    start = time.perf_counter()
    val, test = _episodes(problem, config, "val"), _episodes(problem, config, "test")
    record = Record()
    seeds = len(config.seeds)
    chosen: dict[str, float] = {}
    for seed in config.seeds:
        starts = {}
        for method, algorithm in ((REPTILE, "reptile"), ("joint (k=1)", "joint")):
            starts[method], seconds = _meta_trained(
                problem, algorithm, config, seed, val, chosen, record, method
            )
            record.time(method, "train", seconds / seeds)
        pre, seconds = pretrain(problem, config.meta, seed)
        starts["pretrain + fine-tune"] = pre
        record.time("pretrain + fine-tune", "train", seconds / seeds)
        record.time(FEATURES, "train", seconds / seeds)
        starts["scratch"] = scratch_init(problem, config.meta, seed)
        for k in config.shots:
            for method, phi in starts.items():
                hp, score = _choose_finetuning(phi, val[k], config)
                t0 = time.perf_counter()
                acc = finetune_accuracy(phi, test[k], hp["lr"], [hp["steps"]])[hp["steps"]]
                record.time(method, "test", (time.perf_counter() - t0) / seeds)
                record.add(method, k, hp, score, acc)
            untouched = finetune_accuracy(starts[REPTILE], test[k], 1e-3, [0])[0]
            record.add(UNTOUCHED, k, {"steps": 0}, None, untouched)
            hp, score = _choose(
                lambda hp, eps, pre=pre: _on_features(pre, hp, eps),
                GRIDS["logistic regression"],
                val[k],
            )
            t0 = time.perf_counter()
            acc = _on_features(pre, hp, test[k])
            record.time(FEATURES, "test", (time.perf_counter() - t0) / seeds)
            record.add(FEATURES, k, hp, score, acc)
        log(
            f"  {problem.family}/{problem.name}: seed {seed} done "
            f"({time.perf_counter() - start:.0f} s)"
        )
    for name, grid in GRIDS.items():  # no meta-training: the same for every seed
        for k in config.shots:
            hp, score = _choose(
                lambda hp, eps, name=name: baseline_accuracy(name, hp, eps), grid, val[k]
            )
            t0 = time.perf_counter()
            acc = baseline_accuracy(name, hp, test[k])
            record.time(name, "test", time.perf_counter() - t0)
            for _ in config.seeds:
                record.add(name, k, hp, score, acc)
            record.time(name, "train", 0.0)
    return {
        "family": problem.family,
        "problem": problem.name,
        "n_way": problem.n_way,
        "dim": problem.dim,
        "results": record.results,
        "meta_training_chosen": record.chosen,
        "seconds": record.seconds,
        "total_seconds": time.perf_counter() - start,
    }


def _part_path(out: Path, family: str, name: str) -> Path:
    return out / "parts" / f"{family}-{name.replace(' ', '_')}.json"


def run_study(
    config: StudyConfig,
    data_dir,
    out: Path,
    log: Callable[[str], None] = print,
    run_missing: bool = True,
) -> dict:
    """All problems, resuming from `<out>/parts/` written by an earlier run with the same
    settings; returns (and writes to `<out>/results.json`) everything. With `run_missing=False`
    only the saved parts are gathered (a partial study: `missing` lists the rest)."""
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    problems = build_problems(config, data_dir)
    key = config.key()
    parts, missing = [], []
    for problem in problems:
        path = _part_path(out, problem.family, problem.name)
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("config_key") == key:
                log(f"{problem.family}/{problem.name}: resumed from {path}")
                parts.append(saved)
                continue
        if not run_missing:
            log(f"{problem.family}/{problem.name}: not finished yet (no part in {path.parent})")
            missing.append(f"{problem.family}/{problem.name}")
            continue
        log(
            f"{problem.family}/{problem.name}: running "
            f"({problem.n_way}-way, {problem.dim} features)"
        )
        part = run_problem(problem, config, log)
        part["config_key"] = key
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(part).encode())
        parts.append(part)
    study = {
        "config": dataclasses.asdict(config),
        "config_key": key,
        "primary": PRIMARY,
        "methods": list(METHODS),
        "problems": parts,
        "missing": missing,
    }
    atomic_write_bytes(out / "results.json", json.dumps(study, indent=1).encode())
    return study
