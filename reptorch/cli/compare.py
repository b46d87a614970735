"""`reptorch compare A B`: two saved evaluations of the same seeded tasks, task by task
(`reptorch.compare`): the paired difference of their scores with its 95% interval. Given two
run directories, every cell both have evaluated (the same file name), in turn."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reptorch.compare import (
    describe_comparison,
    load_evaluation,
    paired_comparison,
    paired_files,
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
        help="another evaluation of the same tasks, or a run directory (with A one too: each "
        "evaluation file both hold)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object instead (a list of them for two run directories)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
