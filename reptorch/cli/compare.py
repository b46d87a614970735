"""`reptorch compare A B`: two saved evaluations of the same seeded tasks, task by task
(`reptorch.compare`): the paired difference of their scores with its 95% interval. Given two
run directories, every cell both have evaluated (the same file name), in turn. Given one run
directory, each cell's history: every checkpoint evaluated and its change from the one before."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reptorch.compare import (
    describe_comparison,
    describe_history,
    load_evaluation,
    paired_comparison,
    paired_files,
    run_history,
)
from reptorch.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="the paired difference of two evaluations of the same tasks (two checkpoints, "
        "two runs, two modes), with its 95%% CI",
        description="B - A over the tasks both evaluations scored, each task's difference "
        "counted once: far narrower than the two intervals combined. Both files must come "
        "from `reptorch eval` with the same task list (split, seed, ways, shots, tasks).",
    )
    parser.add_argument(
        "a", metavar="A", help="an evaluation file (a run's eval-*.json), or a run directory"
    )
    parser.add_argument(
        "b",
        metavar="B",
        nargs="?",
        help="another evaluation of the same tasks, or a run directory (with A one too: each "
        "evaluation file both hold); left out with a run directory A: each cell's history, "
        "every checkpoint evaluated (eval-...-at<N>.json) and its change from the one before",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object instead (a list of them for two run directories)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.b is None:
        return _history(Path(args.a), args.json)
    a, b = Path(args.a), Path(args.b)
    runs = a.is_dir() and b.is_dir()
    pairs = paired_files(a, b) if runs else [(a, b)]
    results = []
    for file_a, file_b in pairs:
        try:
            result = paired_comparison(load_evaluation(file_a), load_evaluation(file_b))
        except ConfigError as error:
            raise ConfigError(f"{file_a} vs {file_b}: {error}" if runs else str(error)) from None
        results.append({"a_file": str(file_a), "b_file": str(file_b)} | result)
    if args.json:
        print(json.dumps(results if runs else results[0]))
        return 0
    blocks = [describe_comparison(r, r["a_file"], r["b_file"]) for r in results]
    print("\n\n".join("\n".join(block) for block in blocks))
    return 0


def _history(run_dir: Path, as_json: bool) -> int:
    if not run_dir.exists():
        raise ConfigError(f"{run_dir} not found: give a run directory or two evaluation files")
    if not run_dir.is_dir():
        raise ConfigError(
            f"{run_dir}: give a second evaluation file to compare with, or a run directory for "
            "its history"
        )
    history = run_history(run_dir)
    if as_json:
        print(json.dumps(history))
        return 0
    print("\n\n".join("\n".join(describe_history(cell)) for cell in history))
    return 0
