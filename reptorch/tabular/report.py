"""From the study's JSON to tables, intervals, the figure and the plain-words answer.

Intervals are 95% percentile intervals of a two-level bootstrap: meta-training seeds resampled
(the same seeds for every table), then test episodes within each table; a family's score is the
mean over its tables of the mean over seeds and episodes. Differences are paired: the same
resampled seeds and episodes for both methods, since every method saw the same episodes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reptorch.run.io import atomic_write_bytes  # noqa: E402

REPTILE = "reptile"
UNTOUCHED = "reptile, untouched init"
GROUPS = {
    "A: new classes, same columns": lambda p: p["family"] == "A",
    "B: positive control (shared U)": lambda p: p["family"] == "B" and p["problem"] == "positive",
    "B: negative control (U per task)": lambda p: p["family"] == "B" and p["problem"] == "negative",
    "C: new tables": lambda p: p["family"] == "C",
}


def bootstrap(
    arrays: list[np.ndarray], samples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean over tables of each (seeds, episodes) array's mean, with a 95%
    interval resampling seeds (shared) and episodes (per table)."""
    rng = np.random.default_rng(seed)
    n_seeds = arrays[0].shape[0]
    seed_idx = rng.integers(n_seeds, size=(samples, n_seeds))
    draws = np.zeros(samples)
    for array in arrays:
        ep_idx = rng.integers(array.shape[1], size=(samples, array.shape[1]))
        draws += array[seed_idx[:, :, None], ep_idx[:, None, :]].mean(axis=(1, 2))
    draws /= len(arrays)
    mean = float(np.mean([a.mean() for a in arrays]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return mean, float(low), float(high)


def _test(problem: dict, method: str, shots: int) -> np.ndarray:
    return np.asarray(problem["results"][method][str(shots)]["test"], dtype=np.float64)


def _val(problems: list[dict], method: str, shots: int) -> float:
    return float(np.mean([np.mean(p["results"][method][str(shots)]["val"]) for p in problems]))


def summarise(study: dict) -> dict:
    """Per group: accuracy (mean, low, high) per method and shots, Reptile's paired differences,
    seconds, chance; and the primary figure."""
    shots = study["config"]["shots"]
    methods = [m for m in study["methods"] if m != REPTILE]
    out: dict = {"groups": {}}
    for group, member in GROUPS.items():
        problems = [p for p in study["problems"] if member(p)]
        if not problems:
            continue
        entry: dict = {
            "problems": [p["problem"] for p in problems],
            "chance": float(np.mean([1 / p["n_way"] for p in problems])),
            "accuracy": {},
            "reptile_minus": {},
            "seconds": {},
        }
        for method in [REPTILE, *methods, UNTOUCHED]:
            entry["accuracy"][method] = {
                str(k): bootstrap([_test(p, method, k) for p in problems]) for k in shots
            }
            if method in study["methods"]:
                entry["seconds"][method] = {
                    phase: float(np.mean([p["seconds"][method][phase] for p in problems]))
                    for phase in ("train", "test")
                }
        for method in methods:
            entry["reptile_minus"][method] = {
                str(k): bootstrap([_test(p, REPTILE, k) - _test(p, method, k) for p in problems])
                for k in shots
            }
        out["groups"][group] = entry
    primary = study["primary"]
    problems = [p for p in study["problems"] if p["family"] == primary["family"]]
    if problems and primary["shots"] in shots:
        k = primary["shots"]
        best = max(methods, key=lambda m: _val(problems, m, k))
        diff = bootstrap([_test(p, REPTILE, k) - _test(p, best, k) for p in problems])
        out["primary"] = {
            "family": primary["family"],
            "shots": k,
            "best_other": best,
            "best_other_chosen_by": "mean validation accuracy",
            "reptile_minus_best": diff,
            "verdict": verdict(diff),
        }
    return out


def verdict(diff: tuple[float, float, float]) -> str:
    _, low, high = diff
    if low > 0:
        return "Reptile is better"
    if high < 0:
        return "Reptile is worse"
    return "no detectable difference"


def _pct(triple, signed: bool = False) -> str:
    mean, low, high = (100 * v for v in triple)
    sign = "+" if signed else ""
    return f"{mean:{sign}.1f} [{low:{sign}.1f}, {high:{sign}.1f}]"


def markdown(study: dict, summary: dict) -> str:
    """The tables (accuracy % with 95% intervals) and the primary figure, as Markdown."""
    shots = study["config"]["shots"]
    head = "| method | " + " | ".join(f"{k}-shot" for k in shots) + " | train s | test s |"
    rule = "|---" * (len(shots) + 3) + "|"
    lines = []
    if study.get("missing"):
        lines += [
            f"**Partial study**: not finished: {', '.join(study['missing'])}; the figures below "
            "cover the finished problems only.",
            "",
        ]
    if "primary" in summary:
        p = summary["primary"]
        lines += [
            f"**Primary figure** (declared before running): family {p['family']}, {p['shots']} "
            f"shots, Reptile minus the best other method by validation ({p['best_other']}): "
            f"{_pct(p['reptile_minus_best'], True)} points: {p['verdict']}.",
            "",
        ]
    for group, entry in summary["groups"].items():
        lines += [
            f"#### {group}",
            "",
            f"Tables/tasks: {', '.join(entry['problems'])}; chance {100 * entry['chance']:.1f}%.",
            "",
            head,
            rule,
        ]
        for method, by_k in entry["accuracy"].items():
            cells = " | ".join(_pct(by_k[str(k)]) for k in shots)
            secs = entry["seconds"].get(method)
            timing = f"{secs['train']:.1f} | {secs['test']:.2f}" if secs else "- | -"
            lines.append(f"| {method} | {cells} | {timing} |")
        lines += [
            "",
            "Reptile minus each method (paired, points):",
            "",
            head[: head.index(" train")],
            "|---" * (len(shots) + 1) + "|",
        ]
        for method, by_k in entry["reptile_minus"].items():
            lines.append(
                f"| {method} | " + " | ".join(_pct(by_k[str(k)], True) for k in shots) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(study: dict, summary: dict, path: Path) -> None:
    """Accuracy against shots, one panel per group, one line per method (95% intervals)."""
    shots = study["config"]["shots"]
    groups = summary["groups"]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 4.2), squeeze=False)
    for ax, (group, entry) in zip(axes[0], groups.items(), strict=True):
        for i, (method, by_k) in enumerate(entry["accuracy"].items()):
            mean = np.array([by_k[str(k)][0] for k in shots])
            err = np.array(
                [
                    [by_k[str(k)][0] - by_k[str(k)][1], by_k[str(k)][2] - by_k[str(k)][0]]
                    for k in shots
                ]
            ).T
            style = {"linewidth": 1, "color": plt.get_cmap("tab10")(i % 10)}
            if method == REPTILE:
                style = {"linewidth": 2.5, "color": "k"}
            elif method == UNTOUCHED:
                style = {"linestyle": ":", "color": "lightgrey"}
            ax.errorbar(shots, 100 * mean, yerr=100 * err, label=method, capsize=2, **style)
        ax.axhline(100 * entry["chance"], color="grey", linewidth=0.5)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set_title(group, fontsize=10)
        ax.set_xlabel("shots per class (K)")
        ax.set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    from io import BytesIO

    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
