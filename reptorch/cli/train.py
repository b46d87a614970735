"""`reptorch train`: meta-train with the reference flags (supervised-reptile `args.py`) or a preset.

Every flag defaults to None so that an explicit flag is told apart from a default: the reference
defaults (`reptorch.config`), then `--preset`'s values, then explicit flags. Rerunning the same
command on the same `--checkpoint` directory resumes it; `--pretrained` only evaluates it.
Started by torchrun (`torchrun --nproc-per-node N -m reptorch train ...`) the processes share
each meta-batch (`reptorch.distributed`); rank 0 alone writes and prints.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from reptorch import distributed
from reptorch.cli.common import add_dist_timeout, evaluate_and_report, in_group
from reptorch.config import (
    ALGORITHMS,
    DATASETS,
    EVAL_INNER_STATES,
    INNER_STATES,
    KERNELS,
    OUTER,
    PARALLEL,
    PRESETS,
    TrainConfig,
    resolve,
)
from reptorch.errors import ConfigError
from reptorch.losses import LOSS_REDUCTIONS
from reptorch.run.directory import read_run_config
from reptorch.run.training import Trainer, load_trainer

_D = TrainConfig()
# flag -> (config field, type, help); the default shown comes from TrainConfig.
_VALUE_FLAGS: dict[str, tuple[str, type, str]] = {
    "--classes": ("classes", int, "number of classes per task (N ways)"),
    "--shots": ("shots", int, "examples per class at evaluation (K shots)"),
    "--train-shots": ("train_shots", int, "examples per class in training tasks (0: = shots)"),
    "--inner-batch": ("inner_batch", int, "inner mini-batch size"),
    "--inner-iters": ("inner_iters", int, "inner optimiser steps per task (k)"),
    "--learning-rate": ("learning_rate", float, "inner (Adam or SGD) step size"),
    "--meta-step": ("meta_step", float, "outer step size eps at the start"),
    "--meta-step-final": ("meta_step_final", float, "outer step size at the end (linear)"),
    "--meta-batch": ("meta_batch", int, "tasks per meta-iteration"),
    "--meta-iters": ("meta_iters", int, "meta-iterations"),
    "--eval-batch": ("eval_batch", int, "mini-batch size of evaluation fine-tuning"),
    "--eval-iters": ("eval_iters", int, "fine-tuning steps per evaluation task"),
    "--eval-samples": ("eval_samples", int, "tasks in the final evaluation (0: skip it)"),
    "--eval-interval": ("eval_interval", int, "iterations between train/test lines"),
    "--foml-tail": ("foml_tail", int, "FOMAML: shots per class of a separate last batch"),
    "--weight-decay": ("weight_decay", float, "multiply weights by this before each step"),
    "--seed": ("seed", int, "seed of the initialisation, tasks and (unless --split-seed) split"),
    "--split-seed": (
        "split_seed",
        int,
        "seed of the random class split (Omniglot's reference split, a class-split folder); "
        "None: --seed, as the reference",
    ),
    "--checkpoint-every": ("checkpoint_every", int, "iterations between checkpoints"),
    "--keep-checkpoints": ("keep", int, "checkpoints kept on disk"),
    "--chain-workers": (
        "chain_workers",
        int,
        "slices each step's images of the exact chain (--parallel loop on a CPU) are cut into, "
        "one worker each while as many cores are free, else one worker in turn (same bits); 0: "
        "the cores for Mini-ImageNet's network and for Omniglot steps of 20 images or more, "
        "else 1; a resumed run keeps its recorded number unless given (docs/benchmarks.md)",
    ),
}
_FLAG_FIELDS = {
    "--transductive": ("transductive", "evaluate all queries in one batch"),
    "--replacement": ("replacement", "sample inner mini-batches with replacement"),
    "--allow-partial": ("allow_partial", "accept an incomplete Mini-ImageNet (the sample)"),
}
_CHOICES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "--algorithm": ("algorithm", ALGORITHMS, "meta-learning algorithm"),
    "--inner-state": ("inner_state", INNER_STATES, "inner optimiser state across tasks"),
    "--parallel": ("parallel", PARALLEL, "meta-batch tasks at once or in sequence"),
    "--outer": ("outer", OUTER, "outer update of phi"),
    "--loss-reduction": (
        "loss_reduction",
        LOSS_REDUCTIONS,
        "inner loss over a mini-batch: sum (the reference's) or mean (sine: mean)",
    ),
    "--kernels": (
        "kernels",
        KERNELS,
        "the conv blocks' BatchNorm / ReLU / pool passes: PyTorch's ops, or fused native ones "
        "(one pass each, built on first use; float rounding differs); default: fused where "
        "they build; a resumed run keeps its recorded choice unless given",
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="meta-train (Reptile, FOMAML, MAML, joint) with the reference flags or a preset",
        description="Explicit flags override --preset, which overrides the reference defaults "
        "shown. Rerunning the same command on the same --checkpoint directory resumes it.",
    )
    parser.add_argument(
        "--preset", help=f"a paper row: {', '.join(PRESETS)} (add --transductive for those rows)"
    )
    parser.add_argument(
        "--dataset", help=f"{', '.join(DATASETS)} (default: {_D.dataset})", metavar="NAME"
    )
    parser.add_argument("--data-dir", help="data root (default: $REPTORCH_DATA or ~/.cache)")
    for flag, (field, kind, text) in _VALUE_FLAGS.items():
        shown = getattr(_D, field)
        parser.add_argument(flag, type=kind, help=f"{text} (default: {shown})")
    for flag, (_field, text) in _FLAG_FIELDS.items():
        parser.add_argument(flag, action="store_true", default=None, help=text)
    for flag, (field, choices, text) in _CHOICES.items():
        shown = getattr(_D, field)
        parser.add_argument(flag, choices=choices, help=f"{text} (default: {shown})")
    parser.add_argument(
        "--foml", action="store_true", help="first-order MAML (= --algorithm fomaml)"
    )
    parser.add_argument("--sgd", action="store_true", help="plain SGD inner loop instead of Adam")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--checkpoint", default="model_checkpoint", help="run directory (default: %(default)s)"
    )
    parser.add_argument(
        "--pretrained", action="store_true", help="skip training: evaluate the checkpoint"
    )
    parser.add_argument(
        "--eval-inner-state",
        choices=EVAL_INNER_STATES,
        default=EVAL_INNER_STATES[0],
        help="inner state every evaluation task starts from (default: %(default)s)",
    )
    parser.add_argument(
        "--chain-threads",
        type=int,
        default=1,
        metavar="N",
        help="intra-op (OpenMP) threads of the exact sequential chain (--parallel loop on a "
        "CPU), instead of --chain-workers: up to ~1.25x faster on an otherwise idle machine, "
        "~2.5x slower beside a busy process (docs/benchmarks.md; default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the evaluation as JSON last")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dist_timeout(parser)
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Reference defaults <- preset <- explicit flags; conflicting flags are a `ConfigError`."""
    values: dict[str, Any] = {"dataset": args.dataset, "data_dir": args.data_dir}
    for flag, (field, *_) in {**_VALUE_FLAGS, **_FLAG_FIELDS, **_CHOICES}.items():
        values[field] = getattr(args, flag[2:].replace("-", "_"))
    if args.foml:
        if values["algorithm"] not in (None, "fomaml"):
            raise ConfigError(
                f"--foml conflicts with --algorithm {values['algorithm']}: --foml means "
                f"--algorithm fomaml; give one of them"
            )
        values["algorithm"] = "fomaml"
    if args.sgd:
        values["inner_optimizer"] = "sgd"
    values["device"] = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return resolve(args.preset, **values)


def run(args: argparse.Namespace) -> int:
    return in_group(_train, args)


def default_parallel(directory: Path, config: TrainConfig, group: distributed.Group) -> str:
    """`--parallel` when not given: the run's own when resuming (runs begun before 'loop' became
    the default resume as they were trained); 'vmap' under torchrun with several processes (the
    reference's sequential chain runs in one process; said on stderr); else the default, 'loop'.
    """
    saved = group.from_main(partial(saved_parallel, directory), "the run's settings")
    if saved is not None:
        return saved
    if group.size > 1:
        if group.is_main:
            print(
                f"reptorch train: {group.size} processes run a meta-batch's tasks side by side "
                f"from one merged inner state (--parallel vmap); the reference's sequence "
                f"(--parallel loop, the default) runs in one process",
                file=sys.stderr,
            )
        return "vmap"
    return config.parallel


def saved_parallel(directory: Path) -> str | None:
    """The `parallel` a run directory was trained with, or None for a new run."""
    return read_run_config(directory).parallel if (directory / "config.json").is_file() else None


def _train(args: argparse.Namespace, workers: int, group: distributed.Group) -> int:
    directory = Path(args.checkpoint)
    progress = not args.no_progress
    if args.pretrained:
        trainer = load_trainer(directory, args.device, args.data_dir, workers, group)
        evaluate_and_report(
            trainer,
            directory,
            args.json,
            group,
            num_tasks=args.eval_samples,
            inner_state=args.eval_inner_state,
            progress=progress,
            modes=(args.transductive,),
        )
        return 0
    config = config_from_args(args)
    config = config.replace(device=distributed.device_for(group, config.device))
    if args.parallel is None:
        config = config.replace(parallel=default_parallel(directory, config, group))
    trainer = Trainer(config, directory, workers, group, chain_threads=args.chain_threads)
    trainer.train(progress=progress)
    if trainer.iterations and group.is_main:
        rate = trainer.iterations / max(trainer.seconds, 1e-9)
        processes = f", {group.size} processes" if group.size > 1 else ""
        tqdm.write(
            f"trained {trainer.iterations} iterations in {trainer.seconds:.1f} s ({rate:.2f} it/s"
            f"{processes})"
        )
    if config.eval_samples > 0:
        inner_state = args.eval_inner_state
        evaluate_and_report(
            trainer, directory, args.json, group, inner_state=inner_state, progress=progress
        )
    return 0
