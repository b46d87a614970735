"""The trained model a demo serves: its configuration, phi and carried inner optimiser state.

Loaded from a run directory alone (`config.json` + its newest checkpoint; no dataset needed) or
by name from the models shipped with reptorch (`reptorch.pretrained.load`). Any Omniglot-shaped
run works: the paper's 4-block conv net on 28x28 single-channel images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reptorch.config import TrainConfig
from reptorch.errors import ConfigError
from reptorch.losses import LossFn, loss_for
from reptorch.models import OmniglotNet
from reptorch.run.checkpoint import load_checkpoint
from reptorch.run.directory import read_run_config
from reptorch.tree import Params


@dataclass(frozen=True)
class DemoModel:
    config: TrainConfig
    phi: Params
    inner_state: Any  # AdamState or SGDState: what every fine-tuning starts from
    name: str  # where it came from, for the page and the logs

    @property
    def ways(self) -> int:
        """The network's outputs: the most classes a task may have."""
        return self.config.classes

    def loss(self) -> LossFn:
        """The inner loss the model was meta-trained and is evaluated with (its reduction)."""
        return loss_for(self.config.loss_reduction)

    def module(self) -> OmniglotNet:
        """A fresh network of the run's architecture (its own initial weights are unused)."""
        return OmniglotNet(self.config.classes, filters=64, in_channels=1)


def check_omniglot_shaped(model: DemoModel) -> DemoModel:
    """The model itself if its phi fits the Omniglot network of its config, else a one-liner."""
    if model.config.is_regression:
        raise ConfigError(f"{model.name} is a sine-regression run: the demo needs an Omniglot run")
    expected = {k: tuple(v.shape) for k, v in model.module().named_parameters()}
    found = {k: tuple(v.shape) for k, v in model.phi.items()}
    if expected != found:
        wrong = sorted(set(expected) ^ set(found)) or [
            k for k in expected if expected[k] != found[k]
        ]
        raise ConfigError(
            f"{model.name} is not an Omniglot-shaped run (28x28 grey images, "
            f"{model.config.classes} ways): parameter {wrong[0]} differs; choose an Omniglot run"
        )
    return model


def from_checkpoint(directory: Path) -> DemoModel:
    """The newest checkpoint of a `reptorch train` run directory, read without its data."""
    directory = Path(directory)
    config = read_run_config(directory)
    ckpt = load_checkpoint(directory)
    name = f"{directory} (iteration {ckpt.iteration})"
    return check_omniglot_shaped(DemoModel(config, _cpu(ckpt.phi), _cpu(ckpt.inner_state), name))


def from_pretrained(name: str) -> DemoModel:
    """A model shipped with reptorch, by name (`reptorch.pretrained`)."""
    from reptorch import pretrained  # late: only this path needs the shipped models

    loaded = pretrained.load(name)
    model = DemoModel(loaded.config, _cpu(loaded.phi), _cpu(loaded.inner_state), name)
    return check_omniglot_shaped(model)


def _cpu(value: Any) -> Any:
    """Tensors (in dicts and named tuples) moved to the CPU: the demo runs there."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_replace"):
        return type(value)(*(_cpu(v) for v in value))
    return value
