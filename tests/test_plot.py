"""`reptorch plot`: the learning curve from a run's metrics log, and its one-line errors."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from reptorch.cli import main
from reptorch.plots import moving_average
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
