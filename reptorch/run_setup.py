"""What a run's settings build: its task sources, its network and loss, its evaluation settings.

Shared by training (`reptorch.training.Trainer`), evaluation of a run directory, the demo and the
experiments, so that all of them see a run exactly as it was trained.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reptorch.config import TrainConfig
from reptorch.errors import ConfigError
from reptorch.evaluation import EvalSpec
from reptorch.losses import loss_for
from reptorch.models import MiniImageNetNet, OmniglotNet, SineMLP


def build_sources(config: TrainConfig) -> dict[str, Any]:
    """Split name -> task source (`TaskSampler` or `SineTasks`): train, [val,] test."""
    if config.is_regression:
        from reptorch.sine import SineTasks

        return {"train": SineTasks(), "test": SineTasks()}
    from reptorch.data.registry import load_splits
    from reptorch.data.tasks import TaskSampler

    options = {"allow_partial": True} if config.allow_partial else {}
    splits = load_splits(config.dataset, config.data_dir, seed=config.seed, **options)
    return {name: TaskSampler(data, config.classes, name=name) for name, data in splits.items()}


def build_module(config: TrainConfig, sources: dict[str, Any]) -> tuple[nn.Module, Any]:
    """The paper's network for the dataset (initialised from `config.seed`) and its loss."""
    torch.manual_seed(config.seed)
    loss_fn = loss_for(config.loss_reduction, config.is_regression)
    if config.is_regression:
        return SineMLP(), loss_fn
    channels, height, width = sources["train"].dataset.image_shape
    if config.dataset == "omniglot" or (height, width) == (28, 28):
        module: nn.Module = OmniglotNet(config.classes, filters=64, in_channels=channels)
    elif config.dataset == "miniimagenet" or (height, width) == (84, 84):
        module = MiniImageNetNet(config.classes, filters=32, in_channels=channels)
    else:
        raise ConfigError(
            f"dataset={config.dataset!r}: images of {height}x{width} fit neither network "
            f"(Omniglot 28x28, Mini-ImageNet 84x84); resize the images"
        )
    return module, loss_fn


def eval_spec(config: TrainConfig, **changes: Any) -> EvalSpec:
    """The evaluation settings of a run (`changes` override, e.g. transductive or shots)."""
    values = {
        "ways": config.classes,
        "shots": config.shots,
        "inner_iters": config.eval_iters,
        "inner_batch": config.eval_batch,
        "transductive": config.transductive,
        "replacement": config.replacement,
        "weight_decay": config.weight_decay,
        "regression": config.is_regression,
    }
    values.update({k: v for k, v in changes.items() if v is not None})
    return EvalSpec(**values)
