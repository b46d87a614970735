"""`reptorch compare`: the paired difference of two evaluations of the same tasks, checked against
a hand computation of the per-task differences; the per-task scores every saved evaluation keeps;
one-line errors for files that cannot be paired."""

from __future__ import annotations

import json
import math
import shutil
import statistics

import pytest
import torch

from reptorch.cli import main
from reptorch.compare import load_evaluation, paired_comparison
from reptorch.data.dataset import ImageClassDataset
from reptorch.errors import ConfigError
from reptorch.run.io import atomic_write_json
from tests.helpers import tiny_run


def _summary(scores: list[float], **changes) -> dict:
    summary = {"accuracy": sum(scores) / len(scores), "ci95": 0.0, "tasks": len(scores)}
    summary |= {"dataset": "omniglot", "split": "test", "classes_digest": "ab12", "seed": 0}
    summary |= {"ways": 5, "shots": 1, "queries": 1, "iteration": 100, "transductive": False}
    return summary | {"task_scores": scores} | changes


def test_paired_difference_is_the_mean_and_interval_of_the_per_task_differences():
    a = [0.2, 0.4, 0.4, 1.0, 0.6, 0.0, 0.8]
    b = [0.4, 0.4, 0.6, 0.8, 1.0, 0.2, 0.8]
    result = paired_comparison(_summary(a), _summary(b, iteration=200))
    d = [y - x for x, y in zip(a, b)]
    assert result["difference"] == pytest.approx(statistics.fmean(d), abs=1e-12)
    assert result["ci95"] == pytest.approx(1.96 * statistics.stdev(d) / math.sqrt(7), abs=1e-12)
    ci_a = 1.96 * statistics.stdev(a) / math.sqrt(7)
    ci_b = 1.96 * statistics.stdev(b) / math.sqrt(7)
    assert result["unpaired_ci95"] == pytest.approx(math.sqrt(ci_a**2 + ci_b**2), abs=1e-12)
    assert (result["higher"], result["lower"], result["same"]) == (4, 1, 2)
    assert result["a"] == pytest.approx(statistics.fmean(a)) and result["tasks"] == 7
    assert result["settings"] == {"iteration": [100, 200]}


def test_regression_evaluations_compare_their_mse():
    a = {k: v for k, v in _summary([1.0, 2.0, 4.0]).items() if k != "accuracy"}
    b = {k: v for k, v in _summary([0.5, 2.5, 3.0]).items() if k != "accuracy"}
    result = paired_comparison(a | {"mse": 7 / 3}, b | {"mse": 2.0})
    assert result["metric"] == "mse"
    assert result["difference"] == pytest.approx(-1 / 3) and result["lower"] == 2


@pytest.mark.parametrize(
    "change, named",
    [
        ({"seed": 1}, "seed 0 vs 1"),
        ({"shots": 5}, "shots 1 vs 5"),
        ({"classes_digest": "ff00"}, "classes_digest 'ab12' vs 'ff00'"),
        ({"split": "val"}, "split 'test' vs 'val'"),
    ],
)
def test_evaluations_of_other_tasks_are_refused(change, named):
    scores = [0.2, 0.4, 0.6]
    with pytest.raises(ConfigError, match="scored different tasks") as error:
        paired_comparison(_summary(scores), _summary(scores, **change))
    assert named in str(error.value)


def test_files_that_cannot_be_compared_say_why(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({k: v for k, v in _summary([0.2]).items() if k != "task_scores"}))
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(_summary([0.2, 0.4], tasks=3)))
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "other.json").write_text(json.dumps({"config": {}}))
    cases = {
        old: "no per-task scores",
        damaged: "2 task scores for 3 tasks",
        tmp_path / "bad.json": "invalid JSON",
        tmp_path / "other.json": "not an evaluation file",
        tmp_path / "missing.json": "cannot read",
        tmp_path: "is a directory",
    }
    for path, fragment in cases.items():
        with pytest.raises(ConfigError, match=fragment):
            load_evaluation(path)


def test_long_lists_are_written_on_one_line(tmp_path):
    path = tmp_path / "eval.json"
    value = _summary([0.2, 0.4, 1.0])
    atomic_write_json(path, value, inline=("task_scores",))
    text = path.read_text()
    assert json.loads(text) == value
    assert '\n  "task_scores": [0.2,0.4,1.0],\n  "tasks": 3,\n' in text


def test_the_classes_digest_names_the_classes_and_their_sizes():
    images = torch.zeros(5, 1, 2, 2, dtype=torch.uint8)

    def digest(names, offsets):
        return ImageClassDataset(images, torch.tensor(offsets), names).classes_digest()

    base = digest(("a", "b"), [0, 2, 5])
    assert base == digest(("a", "b"), [0, 2, 5]) and len(base) == 16
    assert base != digest(("b", "a"), [0, 2, 5])  # the order fixes which class a task draws
    assert base != digest(("a", "b"), [0, 3, 5])


def test_eval_saves_task_scores_that_compare_pairs(tmp_path, shared_data, capsys):
    run = tiny_run(tmp_path / "run", shared_data)
    base = ["eval", "--checkpoint", str(run), "--eval-samples", "6", "--no-progress"]
    assert main([*base, "--both-modes"]) == 0
    plain = json.loads((run / "eval-nontransductive-test.json").read_text())
    batched = json.loads((run / "eval-transductive-test.json").read_text())
    for summary in (plain, batched):
        assert len(summary["task_scores"]) == 6 and len(summary["classes_digest"]) == 16
        assert statistics.fmean(summary["task_scores"]) == pytest.approx(summary["accuracy"])
    capsys.readouterr()
    files = [str(run / "eval-nontransductive-test.json"), str(run / "eval-transductive-test.json")]
    assert main(["compare", *files, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    d = [b - a for a, b in zip(plain["task_scores"], batched["task_scores"])]
    assert result["difference"] == pytest.approx(statistics.fmean(d), abs=1e-12)
    assert result["settings"] == {"transductive": [False, True]}
    assert result["higher"] + result["lower"] + result["same"] == 6
    assert main(["compare", *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2].startswith("B - A: ") and "paired over the same 6 tasks" in lines[2]
    assert lines[-1] == "differs: transductive False (A) vs True (B)"

    kept = tmp_path / "seed0.json"
    shutil.copy(files[0], kept)
    assert main([*base, "--no-transductive", "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["compare", str(kept), files[0]]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("reptorch: error:") and "\n" not in err and "seed 0 vs 1" in err


def test_two_runs_compare_cell_by_cell_on_the_same_split_only(tmp_path, shared_data, capsys):
    """A second training seed reshuffles Omniglot's split (the reference's `--seed`), so its
    test tasks are other characters and the comparison is refused by the classes' digest;
    with `--split-seed 0` the runs share the test characters and pair cell by cell."""
    first = tiny_run(tmp_path / "seed0", shared_data)
    reshuffled = tiny_run(tmp_path / "seed1", shared_data, "--seed", "1")
    same_split = tiny_run(tmp_path / "split0", shared_data, "--seed", "1", "--split-seed", "0")
    for run in (first, reshuffled, same_split):
        argv = ["eval", "--checkpoint", str(run), "--eval-samples", "5", "--both-modes"]
        assert main([*argv, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["compare", str(first), str(reshuffled)]) == 1
    err = capsys.readouterr().err.strip()
    assert "classes_digest" in err and "\n" not in err
    assert "eval-nontransductive-test.json vs" in err
    assert main(["compare", str(first), str(same_split), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["a_file"].rsplit("/", 1)[1] for r in results] == [
        "eval-nontransductive-test.json",
        "eval-transductive-test.json",
    ]
    for r in results:
        a = json.loads((first / r["a_file"].rsplit("/", 1)[1]).read_text())["task_scores"]
        b = json.loads((same_split / r["b_file"].rsplit("/", 1)[1]).read_text())["task_scores"]
        assert r["difference"] == pytest.approx(statistics.fmean(y - x for x, y in zip(a, b)))
        assert "model" in r["settings"]  # another initialisation, the same tasks
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(first), str(tmp_path / "empty")]) == 1
    assert "no evaluation of the same cell" in capsys.readouterr().err


def _write(path, summary) -> None:
    atomic_write_json(path, summary, inline=("task_scores",))


def test_a_runs_history_gives_each_checkpoints_change(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    s1 = [0.2, 0.4, 0.0, 0.6, 0.4]
    s2 = [0.4, 0.4, 0.2, 0.6, 1.0]
    s3 = [0.6, 0.4, 0.2, 1.0, 0.8]
    old = _summary(s1, iteration=100, ci95=0.05)
    del old["task_scores"], old["classes_digest"]  # saved by an older reptorch: unpaired
    _write(run / "eval-nontransductive-test-at100.json", old)
    _write(run / "eval-nontransductive-test-at200.json", _summary(s2, iteration=200, ci95=0.07))
    _write(run / "eval-nontransductive-test.json", _summary(s3, iteration=300))
    _write(run / "eval-transductive-test.json", _summary(s3[:4], iteration=300))
    _write(run / "eval-transductive-test-at200.json", _summary(s2, iteration=200))
    (run / "eval-nontransductive-val.json").write_text("{damaged")  # left out
    _write(run / "eval-transductive-test.progress.json", {"key": {}, "scores": []})
    assert main(["compare", str(run), "--json"]) == 0
    history = {cell["cell"]: cell for cell in json.loads(capsys.readouterr().out)}
    assert set(history) == {"eval-nontransductive-test", "eval-transductive-test"}
    rows = history["eval-nontransductive-test"]["rows"]
    assert [r["iteration"] for r in rows] == [100, 200, 300]
    assert rows[0]["change"] is None
    unpaired = rows[1]["change"]
    assert unpaired["kind"] == "unpaired"
    assert unpaired["difference"] == pytest.approx(statistics.fmean(s2) - statistics.fmean(s1))
    assert unpaired["ci95"] == pytest.approx(math.hypot(0.05, 0.07))
    paired = rows[2]["change"]
    d = [y - x for x, y in zip(s2, s3)]
    assert paired["kind"] == "paired"
    assert paired["difference"] == pytest.approx(statistics.fmean(d), abs=1e-12)
    assert paired["ci95"] == pytest.approx(1.96 * statistics.stdev(d) / math.sqrt(5), abs=1e-12)
    other = history["eval-transductive-test"]["rows"][1]["change"]
    assert other == {"kind": "other tasks"}  # 5 tasks, then 4: nothing to pair
    assert main(["compare", str(run)]) == 0
    text = capsys.readouterr().out
    assert "        200  52.00% +- 7.00 (5 tasks)  +20.00 +- 8.60 unpaired" in text
    assert "(other tasks: no change measured)" in text


def test_a_history_needs_a_run_directory_with_evaluations(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 1
    assert "holds no saved evaluation (eval-*.json)" in capsys.readouterr().err
    single = tmp_path / "eval-nontransductive-test.json"
    _write(single, _summary([1.0]))
    assert main(["compare", str(single)]) == 1
    assert "give a second evaluation file" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing")]) == 1
    assert f"{tmp_path / 'missing'} not found: give a run directory" in capsys.readouterr().err
