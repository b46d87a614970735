"""`reptorch plot`: the learning curve from a run's metrics log, and its one-line errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from reptorch.cli import main
from reptorch.plots import draw_evaluations, moving_average
from reptorch.run.metrics_log import COLUMNS, read_metrics


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _write_log(run: Path, rows: int) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = [",".join(COLUMNS)]
    for i in range(rows):
        it = 10 * i
        lines.append(f"{it},{1 - it / 1000},{10 - i / 10},{(i % 5) / 5},{(i % 3) / 3},{i * 0.5}")
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_moving_average_by_hand():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert moving_average([4.0, 0.0, 2.0], 10) == [4.0, 2.0, 2.0]


def test_read_metrics_columns(tmp_path):
    _write_log(tmp_path, 4)
    metrics = read_metrics(tmp_path)
    assert metrics["iteration"] == [0.0, 10.0, 20.0, 30.0]
    assert metrics["train"] == [0.0, 0.2, 0.4, 0.6]


def test_plot_writes_a_png(tmp_path, capsys):
    _write_log(tmp_path / "run", 50)
    out = tmp_path / "curve.png"
    assert main(["plot", str(tmp_path / "run"), "--out", str(out), "--smooth", "5"]) == 0
    width, height = _png_size(out)
    assert width > 500 and height > 400
    assert "50 rows, iterations 0..490; 491 meta-iterations run" in capsys.readouterr().out
    # rows are logged every 10 iterations: the newest checkpoint says how far the run went
    (tmp_path / "run" / "ckpt-00000500.json").write_text("{}")
    assert main(["plot", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert "iterations 0..490; 500 meta-iterations run" in capsys.readouterr().out


@pytest.mark.parametrize(
    "setup, args, message",
    [
        ("none", [], "metrics.csv not found"),
        ("empty", [], "has no rows yet"),
        ("bad", [], "line 3: unreadable"),
        ("good", ["--smooth", "0"], "--smooth 0"),
        ("good", ["--out-jpg"], "name a .png file"),
    ],
)
def test_plot_errors_are_one_line(tmp_path, capsys, setup, args, message):
    run = tmp_path / "run"
    run.mkdir()
    if setup == "empty":
        (run / "metrics.csv").write_text(",".join(COLUMNS) + "\n")
    elif setup == "bad":
        _write_log(run, 3)
        lines = (run / "metrics.csv").read_text().splitlines()
        lines[2] = "10,x,1,1,1,1"
        (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    elif setup == "good":
        _write_log(run, 3)
    out = str(tmp_path / ("curve.jpg" if "--out-jpg" in args else "curve.png"))
    extra = [a for a in args if a != "--out-jpg"]
    assert main(["plot", str(run), "--out", out, *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "curve.png").exists()


def _evaluation(run: Path, name: str, iteration: int, value: float, **fields) -> None:
    summary = {"accuracy": value, "ci95": 0.01, "tasks": 1000, "ways": 5, "shots": 1}
    summary |= {"transductive": False, "split": "test", "iteration": iteration} | fields
    (run / name).write_text(json.dumps(summary))


def test_plot_draws_the_runs_own_evaluations(tmp_path, capsys):
    run = tmp_path / "run"
    _write_log(run, 50)
    config = {"dataset": "omniglot", "classes": 5, "shots": 1}
    (run / "config.json").write_text(json.dumps({"config": config}))
    _evaluation(run, "eval-nontransductive-test.json", 400, 0.5)
    _evaluation(run, "eval-nontransductive-test-at100.json", 100, 0.4)
    _evaluation(run, "eval-transductive-test.json", 400, 0.55, transductive=True)
    _evaluation(run, "eval-nontransductive-test-5w5s.json", 400, 0.7, shots=5)  # other cell
    (run / "eval-nontransductive-val.json").write_text("{damaged")  # left out
    (run / "eval-nontransductive-test.progress.json").write_text('{"key": {}, "scores": []}')
    out = tmp_path / "curve.png"
    assert main(["plot", str(run), "--out", str(out)]) == 0
    assert "; 3 saved evaluations)" in capsys.readouterr().out
    _png_size(out)


def test_draw_evaluations_one_series_per_split_and_mode():
    import matplotlib.pyplot as plt

    rows = [
        {"iteration": 300, "value": 0.5, "ci95": 0.02, "split": "test", "transductive": False,
         "tasks": 1000},
        {"iteration": 100, "value": 0.4, "ci95": 0.03, "split": "test", "transductive": False,
         "tasks": 1000},
        {"iteration": 300, "value": 0.45, "ci95": 0.01, "split": "val", "transductive": False,
         "tasks": 2000},
        {"iteration": 200, "value": 0.6, "ci95": 0.01, "split": "test", "transductive": True,
         "tasks": 10},
        {"iteration": None, "value": 0.9, "ci95": 0.01, "split": "test", "transductive": True,
         "tasks": 10},  # an old file without its iteration cannot be placed
    ]  # fmt: skip
    fig, axes = plt.subplots()
    draw_evaluations(axes, rows, 100.0)
    drawn = {c.get_label(): c for c in axes.containers}
    plt.close(fig)
    assert set(drawn) == {
        "test, non-transductive (1,000-task evaluations)",
        "test, transductive (10-task evaluations)",
        "val, non-transductive (2,000-task evaluations)",
    }
    points = drawn["test, non-transductive (1,000-task evaluations)"].lines[0]
    assert list(points.get_xdata()) == [100, 300]  # in iteration order
    assert list(points.get_ydata()) == pytest.approx([40.0, 50.0])
    bars = drawn["test, non-transductive (1,000-task evaluations)"].lines[2][0]
    spans = [sorted(y for _, y in segment) for segment in bars.get_segments()]
    assert spans == [pytest.approx([37.0, 43.0]), pytest.approx([48.0, 52.0])]
