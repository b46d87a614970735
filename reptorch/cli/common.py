"""What the CLI's subcommands share: the thread policy of a command, torchrun's process group,
the `--dist-timeout` flag, and printing and saving an evaluation's summary."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reptorch import distributed
from reptorch.chain_threads import cpu_threads
from reptorch.run.directory import eval_target, progress_file, run_eval_file, save_evaluation
from reptorch.run.final_evaluation import MODE_NAMES

if TYPE_CHECKING:
    from reptorch.run.training import Trainer


def add_dist_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dist-timeout",
        type=float,
        metavar="SECONDS",
        help="under torchrun: how long a process waits for the others before it stops with an "
        f"error (default: ${distributed.TIMEOUT_VARIABLE} or {distributed.DEFAULT_TIMEOUT:g})",
    )


def describe(summary: dict[str, Any]) -> str:
    """One line: score +- CI, tasks, ways, shots, queries, mode, split, seed, time."""
    metric = "accuracy" if "accuracy" in summary else "mse"
    value = summary[metric]
    shown = (
        f"{100 * value:.2f}% +- {100 * summary['ci95']:.2f}%"
        if metric == "accuracy"
        else (f"MSE {value:.4f} +- {summary['ci95']:.4f}")
    )
    mode = MODE_NAMES[bool(summary["transductive"])]
    return (
        f"{metric} {shown} (95% CI, 1.96 sd/sqrt(n)) over {summary['tasks']} tasks: "
        f"{summary['ways']}-way {summary['shots']}-shot, {summary['queries']} query/class, "
        f"{mode}, {summary['split']} split, seed {summary['seed']}, "
        f"{summary['inner_steps']} steps x batch {summary['inner_batch']}, "
        f"inner state {summary['eval_inner_state']}, iteration {summary['iteration']}, "
        f"{summary['seconds']:.1f} s ({summary['tasks_per_second']} tasks/s)"
        + (", one fine-tuning for both modes" if "modes_together" in summary else "")
    )


def report(summary: dict[str, Any], path: Path | None) -> None:
    """Prints the summary's line and saves it to `path`, if given (`save_evaluation`: one of
    an earlier checkpoint there is kept under its `-at<iteration>` name)."""
    print(describe(summary))
    if path is not None:
        try:
            save_evaluation(path, summary)
        except OSError as error:  # a read-only run directory still evaluates
            print(f"note: could not save the evaluation in {path}: {error}", file=sys.stderr)


def evaluate_and_report(
    trainer: Trainer,
    directory: Path | None,
    as_json: bool,
    group: distributed.Group,
    modes: tuple[bool | None, ...] = (None,),
    **request: Any,
) -> None:
    """`trainer.evaluate(**request)` in each mode of `modes` (transductive or not; None: the
    run's), from one fine-tuning per task, each reported and saved in the run directory (if
    any) as `eval_file` names it (`eval_target`: `-at<iteration>` for a checkpoint older than
    the one evaluated there last), with every task's score (`reptorch compare` pairs two
    evaluations of the same tasks). Resumable there: the tasks done are kept in its
    `.progress.json` until the result is saved, so that a stopped evaluation continues (one
    process)."""
    c = trainer.config
    chosen = tuple(c.transductive if mode is None else mode for mode in modes)
    ways, shots = request.get("ways") or c.classes, request.get("shots") or c.shots
    paths: dict[bool, Path] = {}
    if directory is not None:
        split = request.get("split", "test")
        iteration = trainer.learner.iteration
        paths = {
            m: eval_target(run_eval_file(directory, c, m, split, ways, shots), iteration)
            for m in chosen
        }
    resume = None
    writable = all(os.access(path.parent, os.W_OK) for path in paths.values())
    if paths and group.size == 1 and writable:
        resume = {mode: progress_file(path) for mode, path in paths.items()}
    summaries = trainer.evaluate_modes(chosen, resume_files=resume, keep_scores=True, **request)
    if group.is_main:
        for mode in chosen:
            report(summaries[mode], paths.get(mode))
        if as_json:  # one object, last: the summary, or {mode name: summary} for both modes
            named = {MODE_NAMES[mode]: summaries[mode] for mode in chosen}
            print(json.dumps(summaries[chosen[0]] if len(chosen) == 1 else named))
    for path in (resume or {}).values():
        path.unlink(missing_ok=True)


def in_group(body: Callable[[argparse.Namespace, int, distributed.Group], int], args) -> int:
    """`body(args, workers, group)` in torchrun's process group (or alone), which it then leaves."""
    workers = cpu_threads()
    group = distributed.setup(args.device, args.dist_timeout)
    try:
        return body(args, workers, group)
    finally:
        distributed.close()
