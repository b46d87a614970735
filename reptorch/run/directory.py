"""A run directory: config.json, checkpoints, metrics and evaluations of one meta-training run.

Read and written by one process only (rank 0 under torchrun); `prepare_directory` refuses a
directory that holds a run with other settings, naming them.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from reptorch.config import TrainConfig
from reptorch.errors import CheckpointError, ConfigError
from reptorch.run.checkpoint import Checkpoint, list_checkpoints, load_checkpoint
from reptorch.run.io import atomic_write_json


def eval_file(
    directory: Path, transductive: bool, split: str, setting: tuple[int, int] | None = None
) -> Path:
    """`eval-<mode>-<split>.json`, or `eval-<mode>-<split>-<N>w<K>s.json` for N-way K-shot tasks
    other than the run's own (`setting`; one run gives the 1-shot and 5-shot cells)."""
    mode = "transductive" if transductive else "nontransductive"
    tail = "" if setting is None else f"-{setting[0]}w{setting[1]}s"
    return Path(directory) / f"eval-{mode}-{split}{tail}.json"


def run_eval_file(
    directory: Path, config: TrainConfig, transductive: bool, split: str, ways: int, shots: int
) -> Path:
    """`eval_file` of a run for `ways`-way `shots`-shot tasks: the setting named only when it is
    not the run's own."""
    own = (ways, shots) == (config.classes, config.shots)
    return eval_file(directory, transductive, split, None if own else (ways, shots))


_AT = re.compile(r"-at\d+$")


def saved_iteration(path: Path) -> int | None:
    """The checkpoint iteration of the evaluation saved in `path`, or None (no file, unreadable,
    or from before evaluations recorded it)."""
    try:
        iteration = json.loads(Path(path).read_text()).get("iteration")
    except (OSError, ValueError, AttributeError):
        return None
    return iteration if isinstance(iteration, int) else None


def eval_cell(path: Path) -> str:
    """The cell an evaluation file holds, whichever checkpoint: its name without `.json` and
    without an `-at<iteration>` tail (`eval-<mode>-<split>[-NwKs]`)."""
    return _AT.sub("", Path(path).stem)


def earlier_eval_file(path: Path, iteration: int) -> Path:
    """`eval-...-at<iteration>.json`: where an evaluation of an earlier checkpoint than the
    newest one evaluated is kept, beside it (`eval-...json`)."""
    path = Path(path)
    return path.with_name(f"{eval_cell(path)}-at{iteration}.json")


def eval_target(path: Path, iteration: int) -> Path:
    """Where an evaluation of the checkpoint at `iteration` goes: `path` (the `eval_file`
    name), unless `path` holds one of a later checkpoint; then `earlier_eval_file`. So the plain
    name always holds the latest checkpoint evaluated and no evaluation is overwritten by one of
    another checkpoint."""
    saved = saved_iteration(path)
    return earlier_eval_file(path, iteration) if saved is not None and saved > iteration else path


def save_evaluation(path: Path, summary: dict[str, Any]) -> Path:
    """Saves `summary` (with its per-task scores, on one line) where `eval_target` says; an
    evaluation of an earlier checkpoint already at `path` first moves to its
    `earlier_eval_file` name (said on stderr). Returns the file written."""
    iteration, saved = int(summary["iteration"]), saved_iteration(path)
    if saved is not None and saved > iteration:
        path = earlier_eval_file(path, iteration)
    elif saved is not None and saved != iteration:
        kept = earlier_eval_file(path, saved)
        os.replace(path, kept)
        print(f"kept the evaluation of iteration {saved} as {kept}", file=sys.stderr)
    atomic_write_json(path, summary, inline=("task_scores",))
    return Path(path)


def saved_evaluations(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The saved evaluations (eval-*.json, every checkpoint's) by cell (`eval_cell`), each
    cell's in checkpoint order, and the staged ones in progress (*.progress.json); unreadable
    files are left out."""
    saved, staged = [], []
    for path in sorted(Path(directory).glob("eval-*.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if path.name.endswith(".progress.json"):
            key = summary.get("key", {})
            done = len(summary.get("scores", []))
            staged.append({"file": path.name, "done": done, "tasks": key.get("tasks")})
            continue
        metric = "accuracy" if "accuracy" in summary else "mse"
        keys = ("ci95", "tasks", "ways", "shots", "transductive", "split", "iteration")
        row = {"file": path.name, "cell": eval_cell(path), "metric": metric}
        saved.append(row | {"value": summary.get(metric)} | {k: summary.get(k) for k in keys})
    saved.sort(key=lambda row: (row["cell"], row["iteration"] or 0))
    return saved, staged


def progress_file(path: Path) -> Path:
    """Where a staged evaluation saved in `path` keeps its tasks done (`run.eval_progress`)."""
    return path.with_suffix(".progress.json")


def prepare_directory(directory: Path, config: TrainConfig) -> None:
    """Creates the run directory or checks that it was made with the same settings."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".ckpt-*.tmp"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)
    path = directory / "config.json"
    if path.exists():
        try:
            saved = TrainConfig.from_saved(json.loads(path.read_text())["config"])
        except (ValueError, KeyError, TypeError, ConfigError) as error:
            raise CheckpointError(f"unreadable {path}: {error}") from None
        diffs = saved.differences(config)
        if diffs:
            listed = "; ".join(f"{k} saved {a!r}, now {b!r}" for k, a, b in diffs)
            raise CheckpointError(
                f"{directory} holds a run with other settings ({listed}): rerun with the same "
                f"flags or choose another --checkpoint directory"
            )
    atomic_write_json(path, {"config": config.to_dict()})


def open_run(directory: Path, config: TrainConfig) -> Checkpoint | None:
    """Prepares the run directory (rank 0) and loads its newest checkpoint, if any."""
    prepare_directory(directory, config)
    return load_checkpoint(directory) if list_checkpoints(directory) else None


def read_run_config(directory: Path) -> TrainConfig:
    """The settings a run directory was trained with (its config.json); one-line errors."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{directory} holds no reptorch run (no config.json): train into it first with "
            f"`reptorch train --checkpoint {directory}`"
        )
    try:
        return TrainConfig.from_saved(json.loads(path.read_text())["config"])
    except (ValueError, KeyError, TypeError, ConfigError) as error:
        raise CheckpointError(f"unreadable {path}: {error}") from None


def recorded_config(directory: Path | None) -> TrainConfig | None:
    """The settings a run directory's config.json records (the float-rounding ones a resumed
    run keeps unless told: chain workers, kernels), or None where there is no run yet."""
    if directory is None or not (Path(directory) / "config.json").is_file():
        return None
    return read_run_config(directory)


def read_run(directory: Path, iteration: int | None = None) -> tuple[TrainConfig, Checkpoint]:
    """A run directory's config.json and newest checkpoint (or the one at `iteration`), which
    must exist."""
    return read_run_config(directory), load_checkpoint(directory, iteration)
