"""Trained models shipped inside the package: nothing is downloaded at run time.

Each model is a folder `reptorch/pretrained/<name>/` laid out like a run directory of
`reptorch train`, trimmed to what evaluation needs: `config.json` (the settings it was trained
with, the loss reduction included), one checkpoint (`ckpt-<iteration>.safetensors`: the weights
phi and the carried inner Adam state that every evaluation task starts from, as the reference;
`ckpt-<iteration>.json`: step counter, sha256), and its model card (`card.json`, `README.md`:
command, commit, iterations, training time, machine, the accuracy table, and per-task checks).

    model = reptorch.pretrained.load("omniglot-5way")
    model.phi, model.inner_state, model.config      # the weights, Adam state, TrainConfig
    model.trainer(data_dir).evaluate(shots=5)        # as `reptorch eval --model omniglot-5way`
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reptorch.config import TrainConfig
from reptorch.data.roots import resolve_data_root
from reptorch.errors import CheckpointError, ConfigError
from reptorch.run.checkpoint import Checkpoint, load_checkpoint
from reptorch.tree import Params

MODELS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class TrainedModel:
    """A shipped model: its settings, weights, carried inner state and card."""

    name: str
    directory: Path
    config: TrainConfig
    checkpoint: Checkpoint = field(repr=False)
    card: dict[str, Any] = field(repr=False)

    @property
    def phi(self) -> Params:
        return self.checkpoint.phi

    @property
    def inner_state(self) -> Any:
        return self.checkpoint.inner_state

    @property
    def iteration(self) -> int:
        return self.checkpoint.iteration

    def trainer(self, data_dir: str | None = None, device: str | None = None, workers=None):
        """A `reptorch.run.training.Trainer` holding this model, for evaluation on the dataset
        under `data_root(data_dir)`."""
        from reptorch.run.training import load_trainer  # the data path: only when evaluating

        return load_trainer(self.directory, device, data_root(data_dir), workers)


def data_root(data_dir: str | None) -> str:
    """Where a shipped model reads its dataset: `data_dir`, else `$REPTORCH_DATA`, else
    `~/.cache/reptorch`, as every command. Never its config's `data_dir`, which names the
    training machine's folder (a relative one, even, resolved against the caller's cwd)."""
    return str(resolve_data_root(data_dir))


def names() -> list[str]:
    """The shipped models' names, sorted."""
    return sorted(
        p.name
        for p in MODELS_DIR.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file()
    )


def path(name: str) -> Path:
    """The folder of model `name`; an unknown name is a `ConfigError` listing the models."""
    if name not in names():
        shipped = ", ".join(names()) or "none"
        raise ConfigError(f"no shipped model {name!r}: choose one of {shipped}")
    return MODELS_DIR / name


def load(name: str) -> TrainedModel:
    """Model `name` (see `names()`), verified by its checkpoint's sha256."""
    directory = path(name)
    try:
        config = TrainConfig.from_saved(
            json.loads((directory / "config.json").read_text())["config"]
        )
        card = json.loads((directory / "card.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"shipped model {directory} is damaged: {error}") from None
    return TrainedModel(name, directory, config, load_checkpoint(directory), card)
