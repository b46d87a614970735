"""Two evaluations of the same seeded tasks, compared task by task (`reptorch compare`).

Every saved evaluation keeps each task's score (`task_scores`). Two evaluations with the same
task list (dataset, split classes, seed, ways, shots, queries, number of tasks) scored the same
tasks, so their difference is paired: d_i = b_i - a_i, reported as mean(d) +- 1.96 sd(d) /
sqrt(n). Task difficulty is shared by both, so this interval is much narrower than the two
evaluations' own intervals combined, and it is what tells two checkpoints, two training runs or
two evaluation modes apart. A run directory's evaluations of one cell at successive checkpoints
(`eval-...json` and `eval-...-at<N>.json`) form its history: each checkpoint's change from the
one before.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from reptorch.errors import ConfigError
from reptorch.run.directory import eval_cell
from reptorch.stats import mean_ci95

# What fixes an evaluation's task list: two evaluations agreeing on all of these scored the same
# tasks (`classes_digest`: the split's class names and sizes, `ImageClassDataset.classes_digest`).
SAME_TASKS = ("dataset", "split", "classes_digest", "seed", "ways", "shots", "queries", "tasks")
# What else may differ between the two, shown beside the difference.
SETTINGS = (
    "iteration", "model", "transductive", "inner_steps", "inner_batch", "eval_inner_state",
    "kernels",
)  # fmt: skip


def paired_files(run_a: Path, run_b: Path) -> list[tuple[Path, Path]]:
    """The evaluation files two run directories both hold, by name (`eval-<mode>-<split>[-NwKs]
    .json`: the same cell), in name order; a one-line error if they share none."""
    names = [
        {p.name for p in Path(run).glob("eval-*.json") if not p.name.endswith(".progress.json")}
        for run in (run_a, run_b)
    ]
    common = sorted(names[0] & names[1])
    if not common:
        raise ConfigError(
            f"{run_a} and {run_b} hold no evaluation of the same cell (eval-*.json of the same "
            "name): evaluate both with the same `reptorch eval` flags first"
        )
    return [(Path(run_a) / name, Path(run_b) / name) for name in common]


def load_evaluation(path: Path) -> dict[str, Any]:
    """A saved evaluation (`reptorch eval`'s eval-*.json) with its per-task scores, or a one-line
    error naming the file and the fix."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{path} is a directory: give one of its evaluation files "
            f"(e.g. {path / 'eval-nontransductive-test.json'})"
        )
    try:
        summary = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise ConfigError(f"{path} is not an evaluation file (invalid JSON: {error})") from None
    if not isinstance(summary, dict) or not ({"accuracy", "mse"} & set(summary)):
        raise ConfigError(f"{path} is not an evaluation file of `reptorch eval`")
    if not isinstance(summary.get("task_scores"), list):
        raise ConfigError(
            f"{path} has no per-task scores (saved by an older reptorch): evaluate again with "
            "`reptorch eval` to compare it"
        )
    if len(summary["task_scores"]) != summary.get("tasks"):
        raise ConfigError(
            f"{path}: {len(summary['task_scores'])} task scores for {summary.get('tasks')} "
            "tasks: the file is damaged; evaluate again"
        )
    return summary


def paired_comparison(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """b - a over the tasks both scored: mean and 95% interval of the per-task differences
    (paired), the interval the two means would have unpaired (sqrt(ci_a^2 + ci_b^2)), and how
    many tasks went up, down or stayed. a and b are `load_evaluation` summaries."""
    differing = [
        f"{key} {a.get(key)!r} vs {b.get(key)!r}" for key in SAME_TASKS if a.get(key) != b.get(key)
    ]
    if differing:
        raise ConfigError(
            f"the two evaluations scored different tasks ({'; '.join(differing)}): evaluate "
            "both with the same --split, --seed, --classes, --shots and --eval-samples on the "
            "same data"
        )
    metric = "accuracy" if "accuracy" in a else "mse"
    scores_a = torch.tensor(a["task_scores"], dtype=torch.float64)
    scores_b = torch.tensor(b["task_scores"], dtype=torch.float64)
    difference, ci95 = mean_ci95(scores_b - scores_a)
    mean_a, ci_a = mean_ci95(scores_a)
    mean_b, ci_b = mean_ci95(scores_b)
    return {
        "metric": metric,
        "tasks": int(scores_a.numel()),
        "a": mean_a,
        "a_ci95": ci_a,
        "b": mean_b,
        "b_ci95": ci_b,
        "difference": difference,
        "ci95": ci95,
        "unpaired_ci95": math.hypot(ci_a, ci_b),
        "higher": int((scores_b > scores_a).sum()),
        "lower": int((scores_b < scores_a).sum()),
        "same": int((scores_b == scores_a).sum()),
        "settings": {key: [a.get(key), b.get(key)] for key in SETTINGS if a.get(key) != b.get(key)},
        "task_list": {key: a.get(key) for key in SAME_TASKS},
    }


def describe_comparison(result: dict[str, Any], name_a: str, name_b: str) -> list[str]:
    """The comparison as lines: both scores, the paired difference, what differs."""
    percent = result["metric"] == "accuracy"

    def shown(value: float, ci: float) -> str:
        return f"{100 * value:.2f}% +- {100 * ci:.2f}" if percent else f"{value:.4f} +- {ci:.4f}"

    unit = " points" if percent else ""
    scale = 100 if percent else 1
    t = result["task_list"]
    lines = [
        f"A {name_a}: {result['metric']} {shown(result['a'], result['a_ci95'])}",
        f"B {name_b}: {result['metric']} {shown(result['b'], result['b_ci95'])}",
        f"B - A: {scale * result['difference']:+.2f} +- {scale * result['ci95']:.2f}{unit} "
        f"(95% CI, paired over the same {result['tasks']:,} tasks; unpaired it would be +- "
        f"{scale * result['unpaired_ci95']:.2f})",
        f"tasks where B scored higher {result['higher']:,}, lower {result['lower']:,}, "
        f"the same {result['same']:,}",
        f"the tasks: {t['dataset']} {t['split']} split, {t['ways']}-way {t['shots']}-shot, "
        f"{t['queries']} query/class, seed {t['seed']}",
    ]
    for key, (value_a, value_b) in result["settings"].items():
        if key == "model":
            value_a, value_b = str(value_a)[:12], str(value_b)[:12]
        lines.append(f"differs: {key} {value_a} (A) vs {value_b} (B)")
    return lines


def _summary(path: Path) -> dict[str, Any] | None:
    """A saved evaluation's summary, per-task scores or not; None for anything else."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("iteration"), int):
        return None
    return summary if {"accuracy", "mse"} & set(summary) else None


def _change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """after - before: paired where both kept their per-task scores of the same tasks, else
    unpaired (the two intervals combined); none where they scored different tasks (a field of
    SAME_TASKS that an older file lacks is not held against it)."""
    known = [key for key in SAME_TASKS if None not in (before.get(key), after.get(key))]
    if any(before[key] != after[key] for key in known):
        return {"kind": "other tasks"}
    scored = all(isinstance(x.get("task_scores"), list) for x in (before, after))
    if scored and len(before["task_scores"]) == len(after["task_scores"]) == after.get("tasks"):
        result = paired_comparison(before, after)
        return {"kind": "paired", "difference": result["difference"], "ci95": result["ci95"]}
    metric = "accuracy" if "accuracy" in after else "mse"
    difference = after[metric] - before[metric]
    return {
        "kind": "unpaired",
        "difference": difference,
        "ci95": math.hypot(before["ci95"], after["ci95"]),
    }


def run_history(run: Path) -> list[dict[str, Any]]:
    """Each cell a run directory has evaluated (`eval-<mode>-<split>[-NwKs]`), its evaluations in
    iteration order, each with its change from the one before (`_change`); cells in name order.
    A one-line error where the directory holds none."""
    cells: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(run).glob("eval-*.json")):
        summary = None if path.name.endswith(".progress.json") else _summary(path)
        if summary is not None:
            cells.setdefault(eval_cell(path), []).append(summary | {"file": path.name})
    if not cells:
        raise ConfigError(
            f"{run} holds no saved evaluation (eval-*.json): evaluate it with `reptorch eval "
            f"--checkpoint {run}` first"
        )
    history = []
    for cell, summaries in sorted(cells.items()):
        summaries.sort(key=lambda x: x["iteration"])
        metric = "accuracy" if "accuracy" in summaries[0] else "mse"
        rows = []
        for i, summary in enumerate(summaries):
            row = {"file": summary["file"], "iteration": summary["iteration"]}
            row |= {"value": summary[metric], "ci95": summary["ci95"], "tasks": summary["tasks"]}
            row["change"] = _change(summaries[i - 1], summary) if i else None
            rows.append(row)
        history.append({"cell": cell, "metric": metric, "rows": rows})
    return history


def describe_history(cell: dict[str, Any]) -> list[str]:
    """A cell's history as lines: per checkpoint its score and its change from the one before."""
    scale, unit = (100, "%") if cell["metric"] == "accuracy" else (1, "")
    digits = 2 if cell["metric"] == "accuracy" else 4
    lines = [f"{cell['cell']}: {cell['metric']} at each checkpoint evaluated, and the change"]
    for row in cell["rows"]:
        line = (
            f"  {row['iteration']:>9,}  {scale * row['value']:.{digits}f}{unit} +- "
            f"{scale * row['ci95']:.{digits}f} ({row['tasks']:,} tasks)"
        )
        change = row["change"]
        if change is not None and change["kind"] == "other tasks":
            line += "  (other tasks: no change measured)"
        elif change is not None:
            difference, ci95 = scale * change["difference"], scale * change["ci95"]
            line += f"  {difference:+.{digits}f} +- {ci95:.{digits}f} {change['kind']}"
        lines.append(line)
    return lines
