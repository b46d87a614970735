"""Evaluating a kept checkpoint other than the newest (`reptorch eval --iteration N`), and the
rule that keeps every checkpoint's evaluation: the plain `eval-...json` holds the latest
checkpoint evaluated, an earlier one's is kept as `eval-...-at<N>.json`, nothing is overwritten
by another checkpoint's results."""

from __future__ import annotations

import json

import pytest

from reptorch.cli import main
from reptorch.run.directory import earlier_eval_file, eval_target, save_evaluation
from reptorch.run.eval_progress import model_digest
from reptorch.run.training import load_trainer
from tests.helpers import tiny_run

PLAIN = "eval-nontransductive-test.json"


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    """A tiny run with checkpoints at 1, 2 and 3 iterations."""
    directory = tmp_path_factory.mktemp("iteration") / "run"
    return tiny_run(directory, shared_data, "--meta-iters", "3", "--checkpoint-every", "1")


def _eval(run, *flags: str) -> int:
    base = ["eval", "--checkpoint", str(run), "--eval-samples", "6", "--no-progress"]
    return main([*base, "--no-transductive", *flags])


def test_iteration_loads_that_checkpoint(run):
    digests = {i: load_trainer(run, iteration=i).learner for i in (1, 2, 3)}
    assert {i: learner.iteration for i, learner in digests.items()} == {1: 1, 2: 2, 3: 3}
    models = {model_digest(x.phi, x.inner_state) for x in digests.values()}
    assert len(models) == 3  # three different models, so the files below can tell them apart
    assert load_trainer(run).learner.iteration == 3  # the newest by default


def test_each_checkpoints_evaluation_is_kept(run, capsys):
    for stale in run.glob("eval-*.json"):
        stale.unlink()
    expected = {
        i: load_trainer(run, iteration=i).evaluate(num_tasks=6, progress=False)["accuracy"]
        for i in (1, 2, 3)
    }
    assert _eval(run, "--iteration", "2") == 0  # nothing there yet: the plain name
    first = (run / PLAIN).read_bytes()
    assert json.loads(first)["iteration"] == 2
    assert _eval(run) == 0  # the newest: the plain name, the earlier one moved beside it
    assert "kept the evaluation of iteration 2 as" in capsys.readouterr().err
    assert (run / "eval-nontransductive-test-at2.json").read_bytes() == first
    latest = (run / PLAIN).read_bytes()
    assert json.loads(latest)["iteration"] == 3
    assert _eval(run, "--iteration", "1") == 0  # older than the plain one's: its own name
    assert (run / PLAIN).read_bytes() == latest
    saved = {
        i: json.loads((run / f"eval-nontransductive-test-at{i}.json").read_text()) for i in (1, 2)
    }
    saved[3] = json.loads(latest)
    for i in (1, 2, 3):
        assert saved[i]["iteration"] == i
        assert saved[i]["accuracy"] == pytest.approx(expected[i], rel=1e-12)
    # two checkpoints' evaluations of the same tasks pair
    capsys.readouterr()
    assert main(["compare", str(run / "eval-nontransductive-test-at1.json"), str(run / PLAIN)]) == 0
    assert "differs: iteration 1 (A) vs 3 (B)" in capsys.readouterr().out


def test_a_checkpoint_not_kept_is_a_one_line_error(run, capsys):
    assert _eval(run, "--iteration", "7") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "no checkpoint at iteration 7 (kept: 1, 2, 3)" in err


def test_iteration_is_refused_with_a_shipped_model(capsys):
    assert main(["eval", "--model", "omniglot-5way", "--iteration", "1"]) == 1
    assert "--iteration is for --checkpoint DIR" in capsys.readouterr().err


def _summary(iteration: int, accuracy: float) -> dict:
    return {"iteration": iteration, "accuracy": accuracy, "task_scores": [accuracy]}


def test_the_naming_rule(tmp_path, capsys):
    plain = tmp_path / "eval-transductive-val-5w5s.json"
    assert eval_target(plain, 4) == plain  # nothing there
    assert save_evaluation(plain, _summary(4, 0.4)) == plain
    assert eval_target(plain, 4) == plain  # the same checkpoint again: replaced
    assert eval_target(plain, 9) == plain  # a later one: the plain name (the old one moves)
    assert eval_target(plain, 2) == tmp_path / "eval-transductive-val-5w5s-at2.json"
    assert earlier_eval_file(tmp_path / "eval-x-test-at2.json", 5).name == "eval-x-test-at5.json"
    assert save_evaluation(plain, _summary(9, 0.9)) == plain
    assert "kept the evaluation of iteration 4" in capsys.readouterr().err
    assert json.loads((tmp_path / "eval-transductive-val-5w5s-at4.json").read_text())[
        "accuracy"
    ] == pytest.approx(0.4)
    assert save_evaluation(plain, _summary(2, 0.2)).name == "eval-transductive-val-5w5s-at2.json"
    assert json.loads(plain.read_text())["iteration"] == 9
    plain.write_text("not json")  # a damaged file is replaced, as before
    assert save_evaluation(plain, _summary(3, 0.3)) == plain
    assert json.loads(plain.read_text())["iteration"] == 3
