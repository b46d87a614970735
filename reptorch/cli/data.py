"""`reptorch data download|check NAME`: get a dataset into the data root and verify it.

`download tabular` installs the 43 KEEL tables in `<root>/tabular/keel/`; `download miniimagenet`
installs Ravi's layout (`images/` + the split CSVs) in `<root>/miniimagenet/`, every image
verified against the manifest shipped with reptorch (`reptorch.data.download_miniimagenet`).

The data root is `--data-dir`, else `$REPTORCH_DATA`, else `~/.cache/reptorch`
(`reptorch.data.roots`), the same rule training uses, so what `download` installs is what
`check` and training find.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reptorch.data.roots import dataset_dir, resolve_data_root
from reptorch.errors import ConfigError, DataError

DOWNLOADABLE = ("omniglot", "tabular", "miniimagenet")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="download and check datasets")
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    root_help = "data root (default: $REPTORCH_DATA, else ~/.cache/reptorch)"

    download = actions.add_parser("download", help="fetch a dataset into the data root")
    download.add_argument("name", choices=DOWNLOADABLE)
    download.add_argument("--data-dir", help=root_help)
    download.add_argument(
        "--extract", action="store_true", help="omniglot: extract the zips (and drop them)"
    )
    download.add_argument("--force", action="store_true", help="download even if present")
    download.add_argument(
        "--url",
        help="omniglot, tabular: base address of the archives; miniimagenet: the zip/tar itself "
        "(default: the official/pinned public copy)",
    )
    download.add_argument(
        "--archive", help="miniimagenet: a zip/tar already on disk, instead of downloading"
    )
    download.add_argument("--quiet", action="store_true", help="no progress bar")
    download.set_defaults(func=run_download)

    check = actions.add_parser("check", help="count and verify a dataset's classes and images")
    check.add_argument("name", help="omniglot, miniimagenet or folder:PATH")
    check.add_argument("--data-dir", help=root_help)
    check.add_argument("--json", action="store_true", help="print a JSON summary as last line")
    check.set_defaults(func=run_check)


def run_download(args: argparse.Namespace) -> int:
    if args.archive is not None and args.url is not None:
        raise ConfigError("--url and --archive both given: use one (--archive for a file on disk)")
    if args.archive is not None and args.name != "miniimagenet":
        raise ConfigError(f"--archive is for miniimagenet only, not {args.name}: use --url")
    if args.name == "miniimagenet":
        from reptorch.data.download_miniimagenet import download_miniimagenet

        download_miniimagenet(
            dataset_dir("miniimagenet", args.data_dir),
            url=args.url,
            archive=args.archive,
            force=args.force,
            progress=not args.quiet,
        )
        return 0
    if args.name == "tabular":
        from reptorch.data.download_tabular import download_tabular
        from reptorch.tabular.data import keel_dir

        download_tabular(
            keel_dir(args.data_dir), base_url=args.url, force=args.force, progress=not args.quiet
        )
        return 0
    from reptorch.data.download import download_omniglot

    download_omniglot(
        dataset_dir("omniglot", args.data_dir),
        base_url=args.url,
        extract=args.extract,
        force=args.force,
        progress=not args.quiet,
    )
    return 0


def _summary(name: str, data_dir: str | None) -> dict[str, object]:
    if name == "omniglot":
        from reptorch.data.omniglot import check_omniglot

        return check_omniglot(data_dir)
    if name == "miniimagenet":
        from reptorch.data.download_miniimagenet import manifest_report
        from reptorch.data.miniimagenet import check_miniimagenet

        summary = check_miniimagenet(resolve_data_root(data_dir))
        if summary["layout"] is not None:
            report = manifest_report(str(summary["layout"]), Path(str(summary["path"])))
            if report is not None:
                summary["manifest"] = report
        return summary
    if name.startswith("folder:"):
        from reptorch.data.registry import load_splits

        splits = load_splits(name, data_dir)
        return {
            "dataset": name,
            "status": "ok",
            "splits": {
                k: {"classes": v.num_classes, "images": len(v), "image_shape": list(v.image_shape)}
                for k, v in splits.items()
            },
            "problems": [],
        }
    raise ConfigError(f"unknown dataset {name!r}: use omniglot, miniimagenet or folder:PATH")


def _print_report(summary: dict[str, object]) -> None:
    print(f"{summary['dataset']}: {summary.get('path', '')} (layout: {summary.get('layout')})")
    for split, counts in summary.get("splits", {}).items():  # type: ignore[union-attr]
        found = [f"{v} {k}" for k, v in counts.items() if isinstance(v, int) and "_" not in k]
        expected = [str(v) for k, v in counts.items() if k.startswith("expected_")]
        tail = f" (expected {' / '.join(expected)})" if expected else ""
        print(f"  {split}: {', '.join(found)}{tail}")
    totals = summary.get("totals")
    if totals:
        print(f"  total: {', '.join(f'{v} {k}' for k, v in totals.items())}")  # type: ignore[union-attr]
    manifest = summary.get("manifest")
    if isinstance(manifest, dict):  # Mini-ImageNet: which copy this is (informational)
        print(
            f"  manifest: {manifest['matched']} of {manifest['total']} images are reptorch's "
            f"verified copy" + ("" if manifest["ok"] else f" ({manifest['summary']})")
        )
    for problem in summary.get("problems", []):  # type: ignore[union-attr]
        print(f"  problem: {problem}")
    print(f"  status: {summary['status']}")


def run_check(args: argparse.Namespace) -> int:
    summary = _summary(args.name, args.data_dir)
    problems: list[str] = summary.get("problems", [])  # type: ignore[assignment]
    if summary["status"] == "missing" and not args.json:
        raise DataError(problems[0] if problems else f"{args.name} not found")
    if summary["status"] != "missing":
        _print_report(summary)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    if summary["status"] != "ok":
        first = problems[0] if problems else summary["status"]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        print(
            f"reptorch: error: {args.name} is {summary['status']}: {first}{more}", file=sys.stderr
        )
        return 1
    return 0
