"""Both evaluation modes from one fine-tuning per task (`reptorch eval --both-modes`): each
mode's results are those of its own evaluation, task for task and bit for bit, and its staged
progress is the same file, so either continues the other's."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from reptorch.cli import main
from reptorch.errors import RunStopped
from reptorch.evaluation import Evaluator
from reptorch.run.training import load_trainer
from tests.helpers import tiny_run

REQUEST = dict(num_tasks=10, chunk=3, progress=False, keep_predictions=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    return tiny_run(tmp_path_factory.mktemp("modes") / "run", shared_data)


@pytest.fixture(scope="module")
def alone(run):
    """Each mode evaluated by itself, as before: {transductive: EvalResult}."""
    trainer = load_trainer(run)
    return {m: trainer.evaluate(transductive=m, **REQUEST)["result"] for m in (False, True)}


def _same(result, reference) -> None:
    assert torch.equal(result.scores, reference.scores)
    assert torch.equal(result.predictions, reference.predictions)


@pytest.mark.parametrize("shots", [1, 2])
def test_each_mode_gets_what_its_own_evaluation_gives(run, shots):
    trainer = load_trainer(run)
    both = trainer.evaluate_modes((False, True), shots=shots, **REQUEST)
    for mode in (False, True):
        own = trainer.evaluate(transductive=mode, shots=shots, **REQUEST)
        _same(both[mode]["result"], own["result"])
        assert both[mode]["transductive"] is mode
        assert both[mode]["modes_together"] == ["non-transductive", "transductive"]
        same = ("accuracy", "ci95", "tasks", "shots", "inner_batch", "model", "kernels")
        assert {k: both[mode][k] for k in same} == {k: own[k] for k in same}
    # the modes predict differently (else this test could not tell them apart)
    assert not torch.equal(both[False]["result"].predictions, both[True]["result"].predictions)


def test_one_fine_tuning_serves_both_modes(run, monkeypatch):
    calls = []
    fine_tune = Evaluator.fine_tune

    def counted(self, *args):
        calls.append(1)
        return fine_tune(self, *args)

    monkeypatch.setattr(Evaluator, "fine_tune", counted)
    load_trainer(run).evaluate_modes((False, True), **REQUEST)
    assert len(calls) == 4  # chunks of 3, 3, 3, 1 tasks: once each, not once per mode


def _stop_after(chunks: int, monkeypatch) -> None:
    """A SIGTERM arrives during the evaluation's chunk number `chunks`."""
    seen = []
    run_chunk = Evaluator.run_chunk_modes

    def stopping(self, *args):
        out = run_chunk(self, *args)
        seen.append(1)
        if len(seen) == chunks:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Evaluator, "run_chunk_modes", stopping)


def test_a_stopped_joint_evaluation_continues_each_modes_progress(
    run, alone, tmp_path, monkeypatch
):
    files = {m: tmp_path / f"eval-{m}.progress.json" for m in (False, True)}
    trainer = load_trainer(run)
    _stop_after(2, monkeypatch)
    with pytest.raises(RunStopped, match="after 6 of 10 tasks"):
        trainer.evaluate_modes((False, True), resume_files=files, **REQUEST)
    assert all(len(json.loads(f.read_text())["scores"]) == 6 for f in files.values())
    monkeypatch.undo()
    both = trainer.evaluate_modes((False, True), resume_files=files, **REQUEST)
    for mode in (False, True):
        _same(both[mode]["result"], alone[mode])
        assert [s["tasks"] for s in both[mode]["stages"]] == [6, 4]


def test_a_joint_evaluation_continues_a_single_modes_progress(run, alone, tmp_path, monkeypatch):
    """One mode's own evaluation stopped at 6 of 10; the joint one starts the other mode from
    the first task and adds to the first only what it lacks."""
    files = {m: tmp_path / f"eval-{m}.progress.json" for m in (False, True)}
    trainer = load_trainer(run)
    _stop_after(2, monkeypatch)
    with pytest.raises(RunStopped):
        trainer.evaluate(transductive=False, resume_file=files[False], **REQUEST)
    monkeypatch.undo()
    both = trainer.evaluate_modes((False, True), resume_files=files, **REQUEST)
    for mode in (False, True):
        _same(both[mode]["result"], alone[mode])
    assert [s["tasks"] for s in both[False]["stages"]] == [6, 4]
    assert "stages" not in both[True]  # one stage: all 10 tasks


def test_a_single_mode_continues_a_joint_evaluations_progress(run, alone, tmp_path, monkeypatch):
    files = {m: tmp_path / f"eval-{m}.progress.json" for m in (False, True)}
    trainer = load_trainer(run)
    _stop_after(2, monkeypatch)
    with pytest.raises(RunStopped):
        trainer.evaluate_modes((False, True), resume_files=files, **REQUEST)
    monkeypatch.undo()
    own = trainer.evaluate(transductive=True, resume_file=files[True], **REQUEST)
    _same(own["result"], alone[True])
    assert [s["tasks"] for s in own["stages"]] == [6, 4]


def test_cli_both_modes_saves_each_modes_file(run, alone, capsys):
    base = ["eval", "--checkpoint", str(run), "--eval-samples", "10", "--no-progress"]
    assert main([*base, "--both-modes", "--chunk", "4", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "non-transductive" in out[0] and ", transductive," in out[1]
    assert all(line.endswith("one fine-tuning for both modes") for line in out[:2])
    printed = json.loads(out[-1])  # one object, last: each mode's summary by name
    assert set(printed) == {"non-transductive", "transductive"}
    for mode, name in ((False, "nontransductive"), (True, "transductive")):
        saved = json.loads((run / f"eval-{name}-test.json").read_text())
        assert saved["transductive"] is mode and saved["tasks"] == 10
        assert saved["accuracy"] == pytest.approx(alone[mode].scores.mean().item(), rel=1e-12)
        assert printed["transductive" if mode else "non-transductive"] == saved
    assert not list(run.glob("*.progress.json"))


def test_cli_both_modes_excludes_a_mode(run, capsys):
    with pytest.raises(SystemExit) as error:
        main(["eval", "--checkpoint", str(run), "--both-modes", "--transductive"])
    assert error.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_regression_run_has_one_mode(tmp_path, capsys):
    run = tmp_path / "sine"
    argv = ["train", "--dataset", "sine", "--meta-iters", "1", "--eval-samples", "0"]
    assert main([*argv, "--checkpoint", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--both-modes", "--eval-samples", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "without --both-modes" in err
    assert not list(run.glob("eval-*"))  # nothing half-written
