"""`reptorch tabular --quick` end to end on the shared tables, and what its numbers must show:
the positive control finds Reptile's gain, the negative control finds none, the untouched
initialisation scores at chance, and a rerun resumes from the saved parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reptorch.cli import main


@pytest.fixture(scope="module")
def quick_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tabular")
    args = ["tabular", "--quick", "--data-dir", str(shared_data), "--out", str(out)]
    assert main(args) == 0
    return out


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_quick_run_writes_every_output(quick_run: Path) -> None:
    assert (quick_run / "accuracy_vs_shots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    study = json.loads((quick_run / "results.json").read_text())
    assert {p["family"] for p in study["problems"]} == {"A", "B", "C"}
    report = (quick_run / "report.md").read_text()
    assert report.startswith("**Primary figure** (declared before running): family A, 5 shots")
    for group in ("A: new classes", "B: positive control", "B: negative control", "C: new tables"):
        assert f"#### {group}" in report
    primary = _summary(quick_run)["primary"]
    assert primary["best_other"] != "reptile" and primary["shots"] == 5
    for problem in study["problems"]:  # all methods scored on the same test episodes
        counts = {len(r["5"]["test"][0]) for r in problem["results"].values()}
        assert counts == {20}
        assert all(len(r["5"]["test"]) == 3 for r in problem["results"].values())  # 3 seeds


def test_controls_behave(quick_run: Path) -> None:
    groups = _summary(quick_run)["groups"]
    positive = groups["B: positive control (shared U)"]["reptile_minus"]["scratch"]
    negative = groups["B: negative control (U per task)"]["reptile_minus"]["scratch"]
    for shots in ("1", "5"):
        mean, low, _ = positive[shots]
        assert low > 0 and mean > 0.05, positive  # the harness finds a real effect
        mean, low, _ = negative[shots]
        assert low < 0 and mean < 0.02, negative  # and does not invent one


def test_untouched_initialisation_scores_at_chance(quick_run: Path) -> None:
    for group, entry in _summary(quick_run)["groups"].items():
        for shots, (mean, low, high) in entry["accuracy"]["reptile, untouched init"].items():
            assert low <= entry["chance"] <= high, (group, shots, mean)


def test_rerun_resumes_from_the_parts(quick_run: Path, shared_data: Path, capsys) -> None:
    before = (quick_run / "results.json").read_bytes()
    args = ["tabular", "--quick", "--data-dir", str(shared_data), "--out", str(quick_run)]
    assert main(args) == 0
    out = capsys.readouterr().out
    for name in ("A/letter", "B/positive", "B/negative", "C/held-out tables"):
        assert f"{name}: resumed" in out
    assert (quick_run / "results.json").read_bytes() == before


def test_report_only_gathers_finished_parts(quick_run: Path, shared_data: Path, capsys) -> None:
    out = quick_run.parent / "partial"
    (out / "parts").mkdir(parents=True)
    for part in (quick_run / "parts").glob("B-*.json"):
        (out / "parts" / part.name).write_bytes(part.read_bytes())
    args = ["tabular", "--quick", "--data-dir", str(shared_data), "--out", str(out)]
    assert main([*args, "--report-only"]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("**Partial study**: not finished: A/letter, C/held-out tables")
    assert "#### B: positive control" in report and "#### A:" not in report
    assert "Primary figure" not in report  # no family-A table finished
    empty = ["tabular", "--quick", "--data-dir", str(shared_data), "--out", str(out / "none")]
    assert main([*empty, "--report-only"]) == 1
    assert "nothing finished" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "2"], "needs at least 3 meta-training seeds"),
        (["--families", "A,D"], "--families 'A,D': choose from A, B, C"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, capsys, extra, message) -> None:
    assert main(["tabular", "--quick", "--out", str(tmp_path), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_tables_name_the_fix(tmp_path: Path, capsys) -> None:
    args = ["tabular", "--quick", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "reptorch data download tabular" in err and err.count("\n") == 1
