"""Figures. matplotlib with the non-interactive Agg backend: files only, no display needed."""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from reptorch.run.io import atomic_write_bytes  # noqa: E402


def plot_sine_figure(
    grid: torch.Tensor,
    truth: torch.Tensor,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    curves: dict[str, dict[int, torch.Tensor]],
    path: Path,
) -> None:
    """Paper Figure 1: per method, the true sine, its training points and the predictions after
    0, 8, ..., 32 steps (blue to red)."""
    methods = list(curves)
    cols = 2 if len(methods) > 2 else len(methods)
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(methods) :]:
        ax.set_visible(False)
    for ax, method in zip(axes.flat, methods, strict=False):
        steps = sorted(curves[method])
        for s in steps:
            frac = s / max(steps[-1], 1)
            ax.plot(grid, curves[method][s], color=(frac, 0, 1 - frac), label=f"after {s}")
        ax.plot(grid, truth, color=(0, 0.7, 0), linewidth=2, label="true")
        ax.plot(train_x, train_y, "x", color="k", label="train")
        ax.set_title(method)
        ax.set_ylim(-6, 6)
        ax.set_xlabel("x")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _save(fig, path: Path) -> None:
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())


def plot_theory_residuals(rows: list[dict], path: Path, title: str = "") -> None:
    """One log-log panel per algorithm: the relative residual of the fit a AvgGrad + b alpha
    AvgGradInner (solid) and of the paper's coefficients (dashed) against alpha, one colour per
    k, with an alpha^2 guide."""
    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows))
    ks = sorted({r["k"] for r in rows})
    fig, axes = plt.subplots(1, len(algorithms), figsize=(4.6 * len(algorithms), 4), squeeze=False)
    colours = plt.get_cmap("viridis")
    for ax, name in zip(axes.flat, algorithms, strict=True):
        for i, k in enumerate(ks):
            series = sorted(
                (r for r in rows if r["algorithm"] == name and r["k"] == k),
                key=lambda r: r["alpha"],
            )
            alphas = [r["alpha"] for r in series]
            colour = colours(i / max(len(ks) - 1, 1) * 0.85)
            ax.loglog(
                alphas, [r["residual"] for r in series], "o-", color=colour, label=f"k={k} fit"
            )
            ax.loglog(
                alphas,
                [r["residual_paper"] for r in series],
                "x--",
                color=colour,
                label=f"k={k} paper's (a, b)",
            )
        alphas = sorted({r["alpha"] for r in rows})
        top = max(r["residual_paper"] for r in rows if r["algorithm"] == name)
        guide = [top * (a / alphas[-1]) ** 2 for a in alphas]
        ax.loglog(alphas, guide, ":", color="grey", label="slope 2 (alpha^2)")
        ax.set_title(name)
        ax.set_xlabel("inner step alpha")
        ax.grid(True, which="major", alpha=0.3)
    axes.flat[0].set_ylabel("||E[g] - (a AvgGrad + b alpha AvgGradInner)|| / ||E[g]||")
    axes.flat[-1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_gradcomb(curves: dict[str, dict], path: Path, title: str = "") -> None:
    """Paper Figure 4: smoothed test accuracy against outer iteration, one line per gradient
    combination; colour by k, solid for sums (Reptile), dashed for scaled sums, dotted for the
    last gradient alone (first-order MAML)."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colours = {1: "black", 2: "tab:blue", 3: "tab:green", 4: "tab:red"}
    for label, c in curves.items():
        if not c["iteration"]:
            continue
        style = "-"
        if label.startswith("("):
            style = "--"
        elif "+" not in label and c["k"] > 1:
            style = ":"
        ax.plot(
            c["iteration"],
            c["test_smoothed"],
            style,
            color=colours.get(c["k"], "grey"),
            linewidth=1.6,
            label=label,
        )
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("accuracy (test tasks, smoothed)")
    ax.set_ylim(0.15, 1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_learning_curve(
    metrics: dict[str, list[float]],
    path: Path,
    *,
    title: str,
    monitor: str = "test",
    metric: str = "accuracy",
    window: int = 100,
    evaluations: Sequence[dict[str, Any]] = (),
) -> None:
    """Train and monitor scores (each one fresh task per logged iteration, smoothed over
    `window` rows), the meta step and the inner loss, against meta-iterations; with the saved
    evaluations of checkpoints (`run.directory.saved_evaluations` rows: iteration, value, ci95,
    split, transductive, tasks) as points with their 95% intervals, one series per split and
    mode, so that a checkpoint's many-task score stands beside the log's one-task rows."""
    x = metrics["iteration"]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    scale = 100.0 if metric == "accuracy" else 1.0
    for column, label, color in (("train", "train", "tab:blue"), ("monitor", monitor, "tab:red")):
        smooth = moving_average([scale * v for v in metrics[column]], window)
        top.plot(x, smooth, color=color, label=f"{label} ({window}-point moving average)")
    draw_evaluations(top, evaluations, scale)
    top.set_ylabel("accuracy (%)" if metric == "accuracy" else "MSE")
    top.grid(alpha=0.3)
    top.set_title(title)
    step = top.twinx()
    step.plot(x, metrics["meta_step"], color="tab:gray", linestyle="--", label="meta step")
    step.set_ylabel("meta step size")
    step.set_ylim(0, max(max(metrics["meta_step"]), 1e-9) * 1.05)
    lines = top.get_legend_handles_labels()
    extra = step.get_legend_handles_labels()
    top.legend(lines[0] + extra[0], lines[1] + extra[1], loc="lower right", fontsize=8)
    bottom.plot(x, moving_average(metrics["inner_loss"], window), color="tab:green")
    bottom.set_ylabel("inner loss")
    bottom.set_xlabel("meta-iteration")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


_SPLIT_COLORS = {"test": "black", "val": "tab:purple", "train": "tab:cyan"}


def draw_evaluations(axes, evaluations: Sequence[dict[str, Any]], scale: float) -> None:
    """Each (split, mode) of `evaluations` as points with 95% error bars: filled circles for
    the non-transductive mode, open squares for the transductive one."""
    series: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    usable = [r for r in evaluations if None not in (r.get("iteration"), r.get("value"))]
    for row in sorted(usable, key=lambda r: r["iteration"]):
        series.setdefault((str(row["split"]), bool(row["transductive"])), []).append(row)
    for (split, transductive), rows in sorted(series.items()):
        tasks = {int(r["tasks"]) for r in rows}
        count = f"{tasks.pop():,}-task" if len(tasks) == 1 else "many-task"
        axes.errorbar(
            [r["iteration"] for r in rows],
            [scale * r["value"] for r in rows],
            yerr=[scale * (r.get("ci95") or 0.0) for r in rows],
            color=_SPLIT_COLORS.get(split, "tab:olive"),
            marker="s" if transductive else "o",
            markerfacecolor="none" if transductive else None,
            linestyle="none",
            capsize=3,
            label=f"{split}, {'transductive' if transductive else 'non-transductive'} "
            f"({count} evaluations)",
        )
