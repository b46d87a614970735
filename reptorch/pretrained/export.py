"""Ships a trained run as a package model, with its measured model card.

    python -m reptorch.pretrained.export runs/omniglot-5w1s --name omniglot-5way \\
        --data-dir ../shared/data --tasks 10000

Copies the run's `config.json` and newest checkpoint into `reptorch/pretrained/<name>/`, then
evaluates the model exactly as `reptorch eval --model <name>` does: 1-shot and 5-shot, each
transductive and not (at the paper's fine-tuning batch for the shots), on `--tasks` seeded test
tasks (mean +- 95% CI), plus `--check-tasks` tasks per cell whose per-task scores the card keeps
so a test can show that `reptorch eval` reproduces them. The cells' evaluations are those
`reptorch eval --checkpoint RUN` saves in the run directory: one done there beforehand (over
several sessions, say) is reused, and a stopped export continues its cell. Writes `card.json`
and a human `README.md`. Nothing is half-written: the model folder is assembled beside the
target and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from reptorch.config import TrainConfig
from reptorch.errors import CheckpointError, ReptorchError
from reptorch.pretrained import MODELS_DIR
from reptorch.run.checkpoint import list_checkpoints, paths
from reptorch.run.directory import progress_file, run_eval_file, save_evaluation
from reptorch.run.eval_progress import model_digest
from reptorch.run.io import atomic_write_json
from reptorch.run.metrics_log import training_seconds
from reptorch.run.setup import paper_eval_batch
from reptorch.run.training import Trainer, load_trainer

# The paper's Reptile rows (paper-reference section 5):
# (dataset, ways, shots, transductive) -> (mean, ci)
PAPER = {
    ("omniglot", 5, 1, False): (95.39, 0.09),
    ("omniglot", 5, 5, False): (98.90, 0.10),
    ("omniglot", 20, 1, False): (88.14, 0.15),
    ("omniglot", 20, 5, False): (96.65, 0.33),
    ("omniglot", 5, 1, True): (97.68, 0.04),
    ("omniglot", 5, 5, True): (99.48, 0.06),
    ("omniglot", 20, 1, True): (89.43, 0.14),
    ("omniglot", 20, 5, True): (97.12, 0.32),
    ("miniimagenet", 5, 1, False): (47.07, 0.26),
    ("miniimagenet", 5, 5, False): (62.74, 0.37),
    ("miniimagenet", 5, 1, True): (49.97, 0.32),
    ("miniimagenet", 5, 5, True): (65.99, 0.58),
}
DATASET_TEXT = {  # (name, split) for the card
    "omniglot": ("Omniglot", "the Omniglot reference split"),
    "miniimagenet": ("Mini-ImageNet", "Ravi & Larochelle's split"),
}
SEEDED_SPLITS = {"omniglot"}  # split drawn from a seed (the reference's); others are fixed
CELLS = [(1, False), (5, False), (1, True), (5, True)]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.platform()}"


def copy_run(run: Path, target: Path) -> int:
    """config.json and the newest checkpoint of `run` into a fresh `target` folder."""
    found = list_checkpoints(run)
    if not (run / "config.json").is_file() or not found:
        raise CheckpointError(f"{run} holds no trained run (config.json and a checkpoint)")
    target.mkdir(parents=True)
    shutil.copy2(run / "config.json", target / "config.json")
    for source in paths(run, found[-1]):
        shutil.copy2(source, target / source.name)
    return found[-1]


def cell_summaries(trainer: Trainer, run: Path, shots: int, tasks: int) -> dict[bool, dict]:
    """The `shots`-shot cells, non-transductive and transductive, on `tasks` seeded test tasks,
    as `reptorch eval --checkpoint RUN --shots K [--transductive] --eval-samples N` saves them
    in the run directory: each reused from there when it is this model's (same digest, tasks
    and settings); the others evaluated there together from one fine-tuning per task, in stages
    (a stopped export continues them), and saved."""
    c = trainer.config
    digest = model_digest(trainer.learner.phi, trainer.learner.inner_state)
    summaries: dict[bool, dict] = {}
    paths: dict[bool, Path] = {}
    for transductive in (False, True):
        path = run_eval_file(run, c, transductive, "test", c.classes, shots)
        expected = {"tasks": tasks, "seed": c.seed, "shots": shots, "transductive": transductive}
        expected |= {"split": "test", "inner_steps": c.eval_iters, "eval_inner_state": "checkpoint"}
        expected |= {"inner_batch": paper_eval_batch(c, c.classes, shots), "model": digest}
        expected["kernels"] = c.kernels  # a cell is reproduced on the kernels that measured it
        try:
            saved = {"kernels": "aten", **json.loads(path.read_text())}  # older files: ATen's
            if all(saved.get(k) == v for k, v in expected.items()):
                summaries[transductive] = saved
                continue
        except (OSError, ValueError):
            pass
        paths[transductive] = path
    if paths:
        resume = {mode: progress_file(path) for mode, path in paths.items()}
        measured = trainer.evaluate_modes(
            tuple(paths), num_tasks=tasks, resume_files=resume, shots=shots, progress=False,
            keep_scores=True,
        )  # fmt: skip
        for mode, path in paths.items():
            save_evaluation(path, measured[mode])
            resume[mode].unlink(missing_ok=True)
            summaries[mode] = measured[mode]
    return summaries


def evaluate_cells(
    directory: Path, run: Path, data_dir: str | None, tasks: int, check_tasks: int
) -> list[dict]:
    """The four cells (1/5 shots x transductive or not) of the model in `directory`, copied
    from `run`, whose directory keeps the cells' evaluations (`cell_summaries`), each with
    its per-task check; a shot's two modes from one fine-tuning per task."""
    trainer = load_trainer(directory, data_dir=data_dir)
    rows: dict[tuple[int, bool], dict[str, Any]] = {}
    for shots in sorted({shots for shots, _ in CELLS}):
        cells = cell_summaries(trainer, run, shots, tasks) if tasks else {}
        checks = trainer.evaluate_modes(
            (False, True), num_tasks=check_tasks, keep_scores=True, shots=shots, progress=False
        )
        for transductive in (False, True):
            row: dict[str, Any] = {"shots": shots, "transductive": transductive}
            if tasks:
                summary = cells[transductive]
                row.update(tasks=tasks, accuracy=summary["accuracy"], ci95=summary["ci95"])
                row.update(seconds=summary["seconds"], inner_batch=summary["inner_batch"])
                if "modes_together" in summary:  # its seconds served both modes' fine-tuning
                    row["modes_together"] = summary["modes_together"]
            check = checks[transductive]
            row["check"] = {
                "tasks": check_tasks,
                "seed": check["seed"],
                "accuracy": check["accuracy"],
                "task_scores": check["task_scores"],
            }
            print(json.dumps({k: v for k, v in row.items() if k != "check"}), flush=True)
            rows[shots, transductive] = row
    return [rows[cell] for cell in CELLS]


def _split_seed(config: dict[str, Any]) -> str:
    """' (split seed S)' where the dataset's split is drawn from a seed (`--split-seed`, else
    `--seed`, as the reference), '' where it is fixed (Ravi & Larochelle's)."""
    if config["dataset"] not in SEEDED_SPLITS:
        return ""
    return f" (split seed {TrainConfig.from_saved(config).effective_split_seed})"


def card_markdown(card: dict[str, Any]) -> str:
    c = card["config"]
    ways = c["classes"]
    dataset, split = DATASET_TEXT.get(c["dataset"], (c["dataset"], "its split"))
    lines = [
        f"# {card['name']}: Reptile on {dataset}, {ways}-way",
        "",
        f"Trained with `{card['command']}` at commit `{card['commit'][:12]}` for "
        f"{card['iterations']:,} of {c['meta_iters']:,} meta-iterations "
        f"({card['training_hours']:.1f} h on {card['machine']}).",
        "",
    ]
    if card["iterations"] < c["meta_iters"]:
        lines += [
            f"**Training in progress**: this is the checkpoint at iteration "
            f"{card['iterations']:,}; the full protocol is {c['meta_iters']:,}.",
            "",
        ]
    lines += [
        f"Settings: the reference's ({c['classes']} classes, {c['train_shots']} train shots, "
        f"inner batch {c['inner_batch']}, {c['inner_iters']} inner Adam steps (beta1 = 0) at lr "
        f"{c['learning_rate']}, meta-batch {c['meta_batch']}, meta step {c['meta_step']} -> "
        f"{c['meta_step_final']}, loss reduction {c['loss_reduction']}, inner state "
        f"{c['inner_state']}, {c['parallel']} semantics), seed {c['seed']}, {split}"
        f"{_split_seed(c)}. "
        f"Evaluation: {c['eval_iters']} steps of the paper's batch for the shots (the table) "
        "from the carried Adam state, test split, seeded tasks (seed 0), mean +- 1.96 sd / "
        "sqrt(n).",
        "",
        "| shots | transductive | batch | tasks | accuracy | paper (Reptile) |",
        "|---|---|---|---|---|---|",
    ]
    for row in card["results"]:
        paper = PAPER.get((c["dataset"], ways, row["shots"], row["transductive"]))
        paper_text = f"{paper[0]:.2f} +- {paper[1]:.2f}%" if paper else "-"
        if "accuracy" in row:
            ours = f"{100 * row['accuracy']:.2f} +- {100 * row['ci95']:.2f}%"
            count = f"{row['tasks']:,}"
        else:
            ours = f"{100 * row['check']['accuracy']:.2f}% (check tasks only)"
            count = f"{row['check']['tasks']:,}"
        mode = "yes" if row["transductive"] else "no"
        batch = row.get("inner_batch", c["eval_batch"])
        lines.append(f"| {row['shots']} | {mode} | {batch} | {count} | {ours} | {paper_text} |")
    lines += [
        "",
        f"Reproduce: `reptorch eval --model {card['name']} --shots K [--transductive] "
        f"--eval-samples N --data-dir DATA`.",
        "",
    ]
    return "\n".join(lines)


def export(
    run: Path, name: str, data_dir: str | None, tasks: int, check_tasks: int, command: str
) -> Path:
    target = MODELS_DIR / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=MODELS_DIR))
    try:
        shutil.rmtree(staging)
        iteration = copy_run(run, staging)
        config = json.loads((staging / "config.json").read_text())["config"]
        card: dict[str, Any] = {
            "name": name,
            "command": command,
            "commit": git_commit(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "iterations": iteration,
            "training_hours": training_seconds(run) / 3600,
            "config": config,
            "results": [],
        }
        card["results"] = evaluate_cells(staging, run, data_dir, tasks, check_tasks)
        atomic_write_json(staging / "card.json", card)
        (staging / "README.md").write_text(card_markdown(card))
        for file in staging.iterdir():
            file.chmod(0o644)  # package data, readable by all (temp files are created 0600)
        staging.chmod(0o755)
        old = None
        if target.exists():
            old = target.rename(MODELS_DIR / f".{name}.old")
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory of `reptorch train`")
    parser.add_argument("--name", required=True, help="model name, e.g. omniglot-5way")
    parser.add_argument("--data-dir", help="data root holding omniglot/")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per cell (0: checks only)")
    parser.add_argument("--check-tasks", type=int, default=300, help="per-task checks per cell")
    parser.add_argument("--command", default="", help="the training command, for the card")
    args = parser.parse_args(argv)
    try:
        out = export(
            Path(args.run), args.name, args.data_dir, args.tasks, args.check_tasks, args.command
        )
    except ReptorchError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
