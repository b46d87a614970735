"""Where a run stands, from its directory alone (`reptorch status RUN_DIR`), while it runs or
between the working days it takes (or where each run a directory holds stands): its settings,
how far it is (the newest checkpoint, and the metrics log, which runs up to an interval ahead
of it), the meta step there, its time so far and lately, the interval scores of late, the
evaluations saved beside it and the staged ones in progress; on request, the interval scores
averaged over windows of iterations (`interval_windows`), the learning curve as a table. Reads
only small files: no tensor is loaded, no data is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reptorch.config import TrainConfig
from reptorch.errors import CheckpointError
from reptorch.run.checkpoint import list_checkpoints
from reptorch.run.directory import read_run_config, saved_evaluations
from reptorch.run.final_evaluation import MODE_NAMES
from reptorch.run.metrics_log import read_metrics, training_seconds
from reptorch.schedule import linear_meta_step
from reptorch.stats import mean_ci95

RECENT = 100  # interval rows averaged for "of late"


def recent_pace(iterations: list[float], seconds: list[float]) -> tuple[float, int] | None:
    """(seconds per iteration, iterations) over the last stretch of the log: `seconds` restart
    at 0 on every resume, so the stretch runs from the last restart; None under two rows."""
    start = len(seconds) - 1
    while start > 0 and seconds[start - 1] <= seconds[start]:
        start -= 1
    done = iterations[-1] - iterations[start]
    if done <= 0:
        return None
    return (seconds[-1] - seconds[start]) / done, int(done)


def runs_in(directory: Path) -> list[Path]:
    """The runs `directory` stands for: itself if it is one (config.json), else its immediate
    subdirectories that are (`reptorch gradcomb`'s ten curves, a folder of runs), sorted; the
    one-line error of a directory without a run where there is none."""
    directory = Path(directory)
    if (directory / "config.json").is_file() or not directory.is_dir():
        return [directory]
    found = sorted(p for p in directory.iterdir() if (p / "config.json").is_file())
    if not found:
        read_run_config(directory)  # raises its one-line error
    return found


def interval_windows(metrics: dict[str, list[float]], width: int) -> list[dict[str, Any]]:
    """The interval rows of the log grouped by iteration into windows [k * width, (k + 1) *
    width): per window its rows, the mean training-task and monitored-split scores (each with
    the 95% interval over the window's rows: one task per row, so the rows are independent),
    the mean inner loss and the meta step at its first and last row. A resumed run's repeated
    rows (logged again after its last checkpoint) count once, the later one."""
    if width < 1:
        raise ValueError(f"width={width}: give a window of at least one iteration")
    latest = {int(it): j for j, it in enumerate(metrics["iteration"])}  # the last row per iteration
    windows: dict[int, list[int]] = {}
    for iteration, j in sorted(latest.items()):
        windows.setdefault(iteration // width, []).append(j)
    columns = {
        name: torch.tensor(metrics[name], dtype=torch.float64)
        for name in ("train", "monitor", "inner_loss")
    }
    rows = []
    for k, indices in sorted(windows.items()):
        picked = {name: values[indices] for name, values in columns.items()}
        train, train_ci = mean_ci95(picked["train"])
        monitor, monitor_ci = mean_ci95(picked["monitor"])
        rows.append(
            {
                "first": k * width,
                "last_row": int(metrics["iteration"][indices[-1]]),
                "rows": len(indices),
                "train": train,
                "train_ci95": train_ci,
                "monitor": monitor,
                "monitor_ci95": monitor_ci,
                "inner_loss": picked["inner_loss"].mean().item(),
                "meta_step": [metrics["meta_step"][indices[0]], metrics["meta_step"][indices[-1]]],
            }
        )
    return rows


def run_status(directory: Path, windows: int | None = None) -> dict[str, Any]:
    """The status of the run in `directory` (see module doc), as a JSON-ready dict; with
    `windows`, also its interval scores over windows of that many iterations."""
    directory = Path(directory)
    config: TrainConfig = read_run_config(directory)
    found = list_checkpoints(directory)
    iteration = found[-1] if found else 0
    status: dict[str, Any] = {
        "run": str(directory),
        "dataset": config.dataset,
        "ways": config.classes,
        "shots": config.shots,
        "algorithm": config.algorithm,
        "parallel": config.parallel,
        "chain_workers": config.chain_workers,
        "kernels": config.kernels,
        "checkpoint": iteration,
        "meta_iters": config.meta_iters,
        "meta_step": linear_meta_step(
            iteration, config.meta_iters, config.meta_step, config.meta_step_final
        ),
    }
    try:
        metrics = read_metrics(directory)
    except CheckpointError:  # no log yet
        metrics = None
    if metrics is not None:
        status["logged"] = int(metrics["iteration"][-1])
        status["hours"] = training_seconds(directory) / 3600
        pace = recent_pace(metrics["iteration"], metrics["seconds"])
        if pace is not None:
            per, over = pace
            left = max(config.meta_iters - iteration, 0)
            status |= {"seconds_per_iteration": per, "over": over, "hours_left": left * per / 3600}
        window = min(RECENT, len(metrics["train"]))
        status["interval"] = {
            "rows": window,
            "monitor_split": "val" if (directory / "val").is_dir() else "test",
            "train": sum(metrics["train"][-window:]) / window,
            "monitor": sum(metrics["monitor"][-window:]) / window,
        }
        if windows is not None:
            status["windows"] = interval_windows(metrics, windows)
    status["evaluations"], status["staged"] = saved_evaluations(directory)
    return status


def describe_group(statuses: list[dict[str, Any]]) -> str:
    """One line for several runs (a directory of runs): how far they are together and, at each
    one's recent pace, the hours left if they run one after another (where all paces are known)."""
    done = sum(s["checkpoint"] for s in statuses)
    total = sum(s["meta_iters"] for s in statuses)
    line = f"{len(statuses)} runs: {done:,} of {total:,} iterations in all"
    left = [s.get("hours_left") for s in statuses if s["checkpoint"] < s["meta_iters"]]
    if left and all(h is not None for h in left):
        line += f"; ~{sum(left):.1f} h to go at their recent paces, one after another"
    return line


def describe_status(status: dict[str, Any]) -> list[str]:
    """The status as lines for a terminal."""
    s = status
    regression = s["dataset"] == "sine"
    chain = (
        f"exact chain, {s['chain_workers']} worker(s)"
        if s["parallel"] == "loop"
        else "tasks side by side"
    )
    lines = [
        f"{s['run']}: {s['dataset']} {s['ways']}-way {s['shots']}-shot, {s['algorithm']}, "
        f"{chain}, {s['kernels']} passes",
        f"iteration {s['checkpoint']:,} of {s['meta_iters']:,} "
        f"({100 * s['checkpoint'] / max(s['meta_iters'], 1):.1f}%, the newest checkpoint"
        + (f"; the log runs to {s['logged']:,}" if s.get("logged", 0) > s["checkpoint"] else "")
        + f"), meta step {s['meta_step']:.4g}",
    ]
    if "hours" in s:
        line = f"trained {s['hours']:.1f} h"
        if s["checkpoint"] >= s["meta_iters"]:
            line += ": complete"
        elif "seconds_per_iteration" in s:
            line += (
                f"; lately {s['seconds_per_iteration']:.3g} s per iteration (the last "
                f"{s['over']:,}), so ~{s['hours_left']:.1f} h to go at that pace"
            )
        lines.append(line)
        interval = s["interval"]
        monitor = interval["monitor_split"]
        if regression:
            shown = f"MSE train {interval['train']:.3f}, {monitor} {interval['monitor']:.3f}"
        else:
            shown = (
                f"train {100 * interval['train']:.1f}%, {monitor} {100 * interval['monitor']:.1f}%"
            )
        lines.append(f"interval scores, mean of the last {interval['rows']} rows: {shown}")
    lines += describe_windows(s)
    lines += _describe_evaluations(s)
    for p in s["staged"]:
        total = f"{p['tasks']:,}" if p["tasks"] else "?"
        lines.append(f"staged evaluation {p['file']}: {p['done']:,} of {total} tasks done")
    return lines


def _describe_evaluations(s: dict[str, Any]) -> list[str]:
    """Each cell's latest saved evaluation, a line each, then how many earlier checkpoints'
    evaluations the run keeps (all of them are in the JSON; `reptorch compare RUN` lists them)."""
    latest = {e["cell"]: e for e in s["evaluations"]}  # each cell's rows in checkpoint order
    lines = []
    for e in latest.values():
        mode = MODE_NAMES[bool(e["transductive"])]
        value = (
            f"{100 * e['value']:.2f} +- {100 * (e['ci95'] or 0):.2f}%"
            if e["metric"] == "accuracy"
            else f"MSE {e['value']:.4f} +- {e['ci95'] or 0:.4f}"
        )
        stale = "" if e["iteration"] == s["checkpoint"] else ", before the newest checkpoint"
        lines.append(
            f"evaluation {e['file']}: {value} on {e['tasks']:,} tasks ({e['ways']}-way "
            f"{e['shots']}-shot, {mode}, {e['split']}), at iteration {e['iteration']:,}{stale}"
        )
    earlier = len(s["evaluations"]) - len(latest)
    if earlier:
        lines.append(
            f"and {earlier} evaluation(s) of earlier checkpoints (eval-...-at<N>.json): "
            f"`reptorch compare {s['run']}` lists each cell's history"
        )
    return lines


def describe_windows(status: dict[str, Any]) -> list[str]:
    """The windows of `interval_windows` as a table (none if not asked for)."""
    if "windows" not in status:
        return []
    regression = status["dataset"] == "sine"
    monitor = status["interval"]["monitor_split"]

    def shown(value: float, ci: float) -> str:
        return f"{value:.3f} +- {ci:.3f}" if regression else f"{100 * value:.1f} +- {100 * ci:.1f}%"

    lines = [f"iterations | rows | train tasks | {monitor} tasks | inner loss | meta step"]
    for w in status["windows"]:
        lines.append(
            f"{w['first']:,}-{w['last_row']:,} | {w['rows']} | "
            f"{shown(w['train'], w['train_ci95'])} | {shown(w['monitor'], w['monitor_ci95'])} | "
            f"{w['inner_loss']:.2f} | {w['meta_step'][0]:.2f}-{w['meta_step'][1]:.2f}"
        )
    return lines
