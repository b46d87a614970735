"""`reptorch status RUN_DIR` (`reptorch.run.status`): where a run stands, from its small files."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from reptorch.cli import main
from reptorch.run.status import describe_group, interval_windows, recent_pace, run_status
from tests.helpers import tiny_run


def test_the_pace_is_the_last_stretch_since_a_resume():
    iterations = [0, 10, 20, 30, 40, 50]
    seconds = [1.0, 11.0, 21.0, 0.5, 2.5, 4.5]  # resumed at 30, then 0.2 s per iteration
    assert recent_pace(iterations, seconds) == pytest.approx((0.2, 20))
    assert recent_pace([0], [1.0]) is None


def test_windows_average_each_iterations_rows_once():
    """Rows every 10 iterations; the run was resumed at 20 and logged 20 again (the later row
    counts). Windows of 20 iterations: [0, 20), [20, 40), [40, 60)."""
    metrics = {
        "iteration": [0, 10, 20, 30, 20, 30, 40],
        "train": [0.2, 0.4, 0.0, 0.0, 0.6, 0.8, 1.0],
        "monitor": [0.0, 0.2, 0.0, 0.0, 0.4, 0.2, 0.6],
        "inner_loss": [9.0, 7.0, 0.0, 0.0, 5.0, 4.0, 3.0],
        "meta_step": [1.0, 0.9, 0.8, 0.7, 0.8, 0.7, 0.6],
    }
    windows = interval_windows(metrics, 20)
    assert [(w["first"], w["last_row"], w["rows"]) for w in windows] == [
        (0, 10, 2),
        (20, 30, 2),
        (40, 40, 1),
    ]
    second = windows[1]
    assert second["train"] == pytest.approx(0.7) and second["monitor"] == pytest.approx(0.3)
    ci = 1.96 * statistics.stdev([0.6, 0.8]) / math.sqrt(2)
    assert second["train_ci95"] == pytest.approx(ci)
    assert second["inner_loss"] == pytest.approx(4.5) and second["meta_step"] == [0.8, 0.7]
    assert windows[2]["train_ci95"] == 0.0  # one row
    with pytest.raises(ValueError, match="width=0"):
        interval_windows(metrics, 0)


def test_status_of_a_run_with_saved_and_staged_evaluations(tmp_path, shared_data, capsys):
    run = tiny_run(tmp_path / "run", shared_data)
    assert main(["eval", "--checkpoint", str(run), "--eval-samples", "3", "--no-progress"]) == 0
    staged = {"key": {"tasks": 10}, "scores": [1.0, 0.5, 0.0], "predictions": []}
    (run / "eval-transductive-test.progress.json").write_text(json.dumps(staged))
    capsys.readouterr()

    status = run_status(run)
    assert (status["checkpoint"], status["meta_iters"], status["logged"]) == (2, 2, 0)
    assert (status["dataset"], status["ways"], status["kernels"]) == ("omniglot", 3, "fused")
    assert status["meta_step"] == pytest.approx(0.1)  # 1 -> 0.1 over 2: reached at the end
    (saved,) = status["evaluations"]
    summary = json.loads((run / "eval-nontransductive-test.json").read_text())
    assert saved["value"] == summary["accuracy"] and saved["tasks"] == 3
    assert status["staged"] == [
        {"file": "eval-transductive-test.progress.json", "done": 3, "tasks": 10}
    ]

    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "iteration 2 of 2 (100.0%" in out and ": complete" in out
    assert "eval-nontransductive-test.json" in out and "3 of 10 tasks done" in out
    assert main(["status", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == 2
    assert main(["status", str(run), "--windows", "1000"]) == 0
    table = capsys.readouterr().out.splitlines()
    header = table.index("iterations | rows | train tasks | test tasks | inner loss | meta step")
    assert table[header + 1].startswith("0-0 | 1 | ")
    assert main(["status", str(run), "--windows", "0"]) == 1
    assert "--windows 0" in capsys.readouterr().err


def test_status_of_a_directory_of_runs_gives_each_runs(tmp_path, shared_data, capsys):
    """`reptorch status runs/gradcomb`: the curves are runs in its subdirectories."""
    group = tmp_path / "gradcomb"
    for name in ("sum2", "g1"):
        tiny_run(group / name, shared_data)
    (group / "notes").mkdir()  # not a run: left out
    capsys.readouterr()
    assert main(["status", str(group)]) == 0
    out = capsys.readouterr().out
    *blocks, total = out.strip().split("\n\n")
    assert [b.split(":")[0] for b in blocks] == [str(group / "g1"), str(group / "sum2")]
    assert all("iteration 2 of 2" in b for b in blocks)
    assert total == "2 runs: 4 of 4 iterations in all"  # complete: no hours to go
    assert main(["status", str(group), "--json"]) == 0
    statuses = json.loads(capsys.readouterr().out)
    assert [s["run"] for s in statuses] == [str(group / "g1"), str(group / "sum2")]
    assert statuses[1] == run_status(group / "sum2")


def test_a_group_adds_the_hours_left_where_every_pace_is_known():
    runs = [
        {"checkpoint": 10, "meta_iters": 40, "hours_left": 0.5},
        {"checkpoint": 40, "meta_iters": 40},  # complete: no pace needed
        {"checkpoint": 20, "meta_iters": 40, "hours_left": 0.25},
    ]
    assert describe_group(runs) == (
        "3 runs: 70 of 120 iterations in all; ~0.8 h to go at their recent paces, one after another"
    )
    del runs[2]["hours_left"]  # one unknown pace: no total
    assert describe_group(runs) == "3 runs: 70 of 120 iterations in all"


def test_status_of_a_directory_without_a_run_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()  # a subdirectory that is no run either
    assert main(["status", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no config.json" in err
    assert main(["status", str(tmp_path / "missing")]) == 1
    assert "no config.json" in capsys.readouterr().err


def test_a_closed_pipe_is_not_an_error(tmp_path, shared_data):
    """`reptorch status RUN | head -1`: the reader leaves before we write; no traceback, 0."""
    import subprocess
    import sys

    run = tiny_run(tmp_path / "run", shared_data)
    code = "import sys; from reptorch.cli import main; sys.exit(main(sys.argv[1:]))"
    reader = subprocess.Popen(["true"], stdin=subprocess.PIPE)  # reads nothing, exits
    reader.wait()
    writer = subprocess.run(
        [sys.executable, "-c", code, "status", str(run)],
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    reader.stdin.close()
    assert writer.returncode == 0, writer.stderr
    assert "Traceback" not in writer.stderr and "BrokenPipe" not in writer.stderr


def test_status_shows_each_cells_latest_evaluation_and_counts_the_earlier_ones(
    tmp_path, shared_data, capsys
):
    """Three checkpoints of one cell evaluated (their iterations written into the files: 9, 10,
    12), named as `save_evaluation` names them; their text order (-at10 before -at9) is not their
    checkpoint order, which the rows follow."""
    run = tiny_run(tmp_path / "run", shared_data)
    assert main(["eval", "--checkpoint", str(run), "--eval-samples", "3", "--no-progress"]) == 0
    plain = run / "eval-nontransductive-test.json"
    summary = json.loads(plain.read_text())
    plain.write_text(json.dumps(summary | {"iteration": 12}))
    for iteration in (9, 10):
        earlier = summary | {"iteration": iteration, "accuracy": iteration / 100}
        (run / f"eval-nontransductive-test-at{iteration}.json").write_text(json.dumps(earlier))
    capsys.readouterr()

    rows = run_status(run)["evaluations"]
    assert [(r["cell"], r["iteration"]) for r in rows] == [
        ("eval-nontransductive-test", 9),
        ("eval-nontransductive-test", 10),
        ("eval-nontransductive-test", 12),
    ]
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    shown = [line for line in out.splitlines() if line.startswith("evaluation ")]
    assert len(shown) == 1 and "eval-nontransductive-test.json" in shown[0]
    assert "at iteration 12" in shown[0]
    earlier = "and 2 evaluation(s) of earlier checkpoints (eval-...-at<N>.json)"
    assert f"{earlier}: `reptorch compare {run}` lists each cell's history" in out
