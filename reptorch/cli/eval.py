"""`reptorch eval`: few-shot accuracy of a trained run, rebuilt from its directory alone.

Reads `config.json` and the newest checkpoint of `--checkpoint DIR` (or of the shipped model
`--model NAME`, `reptorch.pretrained`), fine-tunes on each seeded task's support set exactly as
the reference does and reports mean +- 95% CI over the tasks. Under torchrun the processes share
the task list; rank 0 prints and saves the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reptorch import distributed, pretrained
from reptorch.cli.common import add_dist_timeout, evaluate_and_report, in_group
from reptorch.config import EVAL_INNER_STATES
from reptorch.errors import ConfigError
from reptorch.run.training import load_trainer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a trained run on seeded few-shot tasks (mean +- 95%% CI)",
        description="Settings not given are those the run was trained with (its config.json).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run directory of `reptorch train`")
    source.add_argument(
        "--model", help=f"a shipped model: {', '.join(pretrained.names()) or 'none yet'}"
    )
    parser.add_argument(
        "--iteration",
        type=int,
        help="with --checkpoint: the kept checkpoint at this iteration (default: the newest); "
        "its results are saved as eval-...-at<ITERATION>.json when a later one's are there",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--transductive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="all queries in one batch (default: the run's setting)",
    )
    mode.add_argument(
        "--both-modes",
        action="store_true",
        help="non-transductive and transductive from one fine-tuning per task: each mode's "
        "result is the one its own command gives, saved in its own file, in about half the time",
    )
    parser.add_argument("--eval-samples", type=int, help="number of tasks (default: the run's)")
    parser.add_argument("--classes", type=int, help="ways (at most the network's outputs)")
    parser.add_argument("--shots", type=int, help="support examples per class")
    parser.add_argument("--eval-iters", type=int, help="fine-tuning steps per task")
    parser.add_argument("--eval-batch", type=int, help="fine-tuning mini-batch size")
    parser.add_argument(
        "--split", default="test", choices=("test", "val", "train"), help="(default: test)"
    )
    parser.add_argument("--seed", type=int, default=0, help="task-list seed (default: 0)")
    parser.add_argument(
        "--eval-inner-state",
        choices=EVAL_INNER_STATES,
        default=EVAL_INNER_STATES[0],
        help="inner optimiser state each task starts from: the one saved with the model (the "
        "reference) or a fresh one (default: %(default)s)",
    )
    parser.add_argument("--chunk", type=int, help="tasks evaluated at once (default: automatic)")
    parser.add_argument("--data-dir", help="data root (default: the run's)")
    parser.add_argument("--device", help="torch device (default: the run's)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object as last line (with --both-modes: {mode: summary})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dist_timeout(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return in_group(_evaluate, args)


def _evaluate(args: argparse.Namespace, workers: int, group: distributed.Group) -> int:
    if args.model is not None:  # read-only package data: the result is printed, not saved
        if args.iteration is not None:
            raise ConfigError("--iteration is for --checkpoint DIR, not --model: drop it")
        directory, save_to = pretrained.path(args.model), None
        data_dir = pretrained.data_root(args.data_dir)
    else:
        directory = save_to = Path(args.checkpoint)
        data_dir = args.data_dir  # else the run's own, as training read it
    trainer = load_trainer(directory, args.device, data_dir, workers, group, args.iteration)
    evaluate_and_report(
        trainer,
        save_to,
        args.json,
        group,
        split=args.split,
        num_tasks=args.eval_samples,
        seed=args.seed,
        inner_state=args.eval_inner_state,
        chunk=args.chunk,
        progress=not args.no_progress,
        modes=(False, True) if args.both_modes else (args.transductive,),
        ways=args.classes,
        shots=args.shots,
        inner_iters=args.eval_iters,
        inner_batch=args.eval_batch,
    )
    return 0
