"""What a run's settings build: its task sources, its network and loss, its meta-learner, its
evaluation settings; and the check that a run fits the processes it was started in.

Shared by training (`reptorch.run.training.Trainer`), evaluation of a run directory, the demo
and the experiments, so that all of them see a run exactly as it was trained.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reptorch import __version__
from reptorch.algorithms import ALGORITHMS
from reptorch.config import PRESETS, TrainConfig
from reptorch.distributed import Group, shared
from reptorch.errors import ConfigError
from reptorch.evaluation import EvalSpec
from reptorch.fast import fused
from reptorch.fast.oracle import spec_for
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import InnerOptimizer
from reptorch.losses import LossAndGrad, loss_for
from reptorch.meta import MetaLearner
from reptorch.models import MiniImageNetNet, OmniglotNet, SineMLP
from reptorch.outer import Interpolation, OuterOptimizer


def build_sources(config: TrainConfig) -> dict[str, Any]:
    """Split name -> task source (`TaskSampler` or `SineTasks`): train, [val,] test."""
    if config.is_regression:
        from reptorch.sine import SineTasks

        return {"train": SineTasks(), "test": SineTasks()}
    from reptorch.data.registry import load_splits
    from reptorch.data.tasks import TaskSampler

    options = {"allow_partial": True} if config.allow_partial else {}
    seed = config.effective_split_seed
    splits = load_splits(config.dataset, config.data_dir, seed=seed, **options)
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


def resolve_kernels(requested: str, module: nn.Module, device: str) -> str:
    """The blocks' passes a run uses (`TrainConfig.kernels`): `requested`, or for "" "fused"
    where the network is a paper conv net (the fast kernels), runs on the CPU and the native ops
    build (`reptorch.fast.fused`), else "aten"."""
    fast = spec_for(module) is not None and torch.device(device).type == "cpu"
    if requested == "":
        return "fused" if fast and fused.available() else "aten"
    if requested == "fused" and not fast:
        raise ConfigError(
            "kernels=fused: only the paper's conv nets on the CPU have fused passes; this run "
            "has none: drop --kernels"
        )
    if requested == "fused" and not fused.available():
        raise ConfigError(
            "kernels=fused: the native ops could not be built here (g++ and ninja are needed; "
            "see the warning above): train with --kernels aten"
        )
    return requested


def evaluation_kernels(config: TrainConfig, directory: Path, device: str, group: Group) -> str:
    """The run's blocks' passes, or PyTorch's ("aten", said once on stderr) where its fused
    passes cannot run: on another device, or where the native ops cannot be built. The same
    maths; float rounding differs from the run's, and the summary says which ran."""
    if config.kernels != "fused":
        return config.kernels
    if torch.device(device).type != "cpu":
        reason = f"they are CPU code and this evaluation runs on {device}"
    elif not fused.available():
        reason = "the native ops cannot be built here (g++ and ninja are needed)"
    else:
        return "fused"
    if group.is_main:
        print(
            f"note: {directory} was trained on the fused passes, but {reason}: evaluating on "
            f"PyTorch's ops (the same maths; float rounding differs from the run's)",
            file=sys.stderr,
        )
    return "aten"


def build_learner(
    config: TrainConfig,
    model: FunctionalModel,
    inner: InnerOptimizer,
    batched_loss_and_grad: LossAndGrad,
    group: Group,
) -> MetaLearner:
    """The run's meta-learner: its algorithm (on `batched_loss_and_grad`, the oracle the inner
    loops run on), phi from the network's initialisation, and the outer update: the reference
    interpolation or a `torch.optim` optimiser, on the annealed meta step."""
    algorithm = ALGORITHMS[config.algorithm](
        model,
        inner,
        inner_state=config.inner_state,
        parallel=config.parallel,
        weight_decay=config.weight_decay,
        batched_loss_and_grad=batched_loss_and_grad,
    )
    phi = model.init_params()
    schedule = (config.meta_step, config.meta_step_final, config.meta_iters)
    if config.outer == Interpolation.name:
        outer: Interpolation = Interpolation(*schedule)
    else:
        outer = OuterOptimizer(config.outer, phi, *schedule)
    return MetaLearner(algorithm, outer, phi, group)


def paper_eval_batch(config: TrainConfig, ways: int, shots: int) -> int:
    """The fine-tuning batch for `ways`-way `shots`-shot tasks of a run: its own `eval_batch`,
    except where that is the paper's for the run's row (a preset) and the paper's row for these
    tasks has another: one Mini-ImageNet run gives the 1-shot cells at batch 5 and the 5-shot
    cells at 15, as the reference's two commands (paper-reference section 4)."""
    own = PRESETS.get(f"{config.dataset}-{config.classes}w{config.shots}s")
    other = PRESETS.get(f"{config.dataset}-{ways}w{shots}s")
    if own is not None and other is not None and config.eval_batch == own["eval_batch"]:
        return other["eval_batch"]
    return config.eval_batch


def eval_spec(config: TrainConfig, **changes: Any) -> EvalSpec:
    """The evaluation settings of a run (`changes` override, e.g. transductive or shots; the
    batch follows the shots as `paper_eval_batch` says unless given)."""
    ways = changes.get("ways") or config.classes
    shots = changes.get("shots") or config.shots
    values = {
        "ways": config.classes,
        "shots": config.shots,
        "inner_iters": config.eval_iters,
        "inner_batch": paper_eval_batch(config, ways, shots),
        "transductive": config.transductive,
        "replacement": config.replacement,
        "weight_decay": config.weight_decay,
        "regression": config.is_regression,
    }
    values.update({k: v for k, v in changes.items() if v is not None})
    return EvalSpec(**values)


def check_group(config: TrainConfig, group: Group) -> None:
    """Every process was started with the same settings, and the run fits its processes."""
    agreed = {k: v for k, v in config.to_dict().items() if k not in ("device", "data_dir")}
    group.agree("configuration", {**agreed, "reptorch": __version__, "torch": torch.__version__})
    if group.size > 1 and config.parallel == "loop":
        raise shared(
            ConfigError(
                f"parallel='loop' (the reference's inner state threaded through the tasks in "
                f"sequence) runs in one process, not {group.size}: use --parallel vmap (the "
                f"tasks side by side, merged inner state) or start one process"
            )
        )
    if config.meta_batch < group.size:
        raise shared(
            ConfigError(
                f"meta_batch={config.meta_batch} tasks cannot be shared among {group.size} "
                f"processes: start at most {config.meta_batch} or raise --meta-batch"
            )
        )
