"""`reptorch tabular`: does Reptile help on tabular data? Every method on the KEEL tables.

Writes `<out>/results.json` (everything), `<out>/summary.json` (intervals, the primary figure),
`<out>/report.md` (a table per family) and `<out>/accuracy_vs_shots.png`; prints the report.
Each problem is saved in `<out>/parts/` as it finishes: rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from reptorch.errors import ConfigError
from reptorch.run.io import atomic_write_bytes
from reptorch.tabular.experiment import FAMILIES, StudyConfig, quick_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tabular",
        help="does Reptile help on tables? Reptile vs the baselines on 43 KEEL tables",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir", help="data root holding tabular/keel/ (default: $REPTORCH_DATA)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: tabular-study, or tabular-quick with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a small version (minutes; for CI)")
    parser.add_argument("--families", default="A,B,C", help="comma-separated subset of A,B,C")
    parser.add_argument("--seeds", type=int, default=None, help="meta-training seeds (at least 3)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="report the problems already finished in --out (parts/), run nothing",
    )
    parser.set_defaults(func=run)


def config_from(args: argparse.Namespace) -> StudyConfig:
    config = quick_config() if args.quick else StudyConfig()
    families = tuple(f.strip().upper() for f in args.families.split(",") if f.strip())
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ConfigError(f"--families {args.families!r}: choose from A, B, C (comma-separated)")
    config = dataclasses.replace(config, families=families)
    if args.seeds is not None:
        if args.seeds < 3:
            raise ConfigError(
                f"--seeds {args.seeds}: the study needs at least 3 meta-training seeds"
            )
        config = dataclasses.replace(config, seeds=tuple(range(args.seeds)))
    return config


def run(args: argparse.Namespace) -> int:
    from reptorch.tabular.experiment import run_study
    from reptorch.tabular.report import markdown, plot, summarise

    config = config_from(args)
    out = args.out or Path("tabular-quick" if args.quick else "tabular-study")
    start = time.perf_counter()
    study = run_study(
        config,
        args.data_dir,
        out,
        log=lambda line: print(line, flush=True),
        run_missing=not args.report_only,
    )
    if not study["problems"]:
        raise ConfigError(f"nothing finished in {out / 'parts'} yet: run without --report-only")
    summary = summarise(study)
    summary["wall_clock_seconds_this_run"] = time.perf_counter() - start
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1).encode())
    report = markdown(study, summary)
    atomic_write_bytes(out / "report.md", report.encode())
    plot(study, summary, out / "accuracy_vs_shots.png")
    print(report)
    print(
        f"wrote {out / 'results.json'}, {out / 'summary.json'}, {out / 'report.md'}, "
        f"{out / 'accuracy_vs_shots.png'}"
    )
    return 0
