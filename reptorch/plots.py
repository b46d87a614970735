"""Figures. matplotlib with the non-interactive Agg backend: files only, no display needed."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from reptorch.io import atomic_write_bytes  # noqa: E402


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
