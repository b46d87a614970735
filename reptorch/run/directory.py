"""A run directory: config.json, checkpoints, metrics and evaluations of one meta-training run.

Read and written by one process only (rank 0 under torchrun); `prepare_directory` refuses a
directory that holds a run with other settings, naming them.
"""

from __future__ import annotations

import json
from pathlib import Path

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


def read_run(directory: Path) -> tuple[TrainConfig, Checkpoint]:
    """A run directory's config.json and newest checkpoint (which must exist)."""
    return read_run_config(directory), load_checkpoint(directory)
