"""`reptorch compare A B`: two saved evaluations of the same seeded tasks, task by task
(`reptorch.compare`): the paired difference of their scores with its 95% interval."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reptorch.compare import describe_comparison, load_evaluation, paired_comparison


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="the paired difference of two evaluations of the same tasks (two checkpoints, "
        "two runs, two modes), with its 95%% CI",
        description="B - A over the tasks both evaluations scored, each task's difference "
        "counted once: far narrower than the two intervals combined. Both files must come "
        "from `reptorch eval` with the same task list (split, seed, ways, shots, tasks).",
    )
    parser.add_argument("a", metavar="A", help="an evaluation file (a run's eval-*.json)")
    parser.add_argument("b", metavar="B", help="another evaluation of the same tasks")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    a, b = load_evaluation(Path(args.a)), load_evaluation(Path(args.b))
    result = paired_comparison(a, b)
    if args.json:
        print(json.dumps({"a_file": args.a, "b_file": args.b, **result}))
    else:
        print("\n".join(describe_comparison(result, args.a, args.b)))
    return 0
