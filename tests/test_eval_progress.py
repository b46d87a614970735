"""A long evaluation in stages (`reptorch.run.eval_progress`): stopped between chunks, it
continues from its progress file and gives the results of an uninterrupted evaluation."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from reptorch.cli import main
from reptorch.errors import RunStopped
from reptorch.evaluation import Evaluator
from reptorch.run.eval_progress import EvalProgress, model_digest
from reptorch.run.training import load_trainer
from tests.helpers import tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    return tiny_run(tmp_path_factory.mktemp("staged") / "run", shared_data)


def _evaluate(run, **changes):
    request = dict(num_tasks=10, chunk=3, progress=False, keep_predictions=True) | changes
    return load_trainer(run).evaluate(**request)


def test_a_stopped_evaluation_continues_with_the_same_results(run, tmp_path, monkeypatch, capsys):
    whole = _evaluate(run)["result"]
    resume = tmp_path / "eval.progress.json"
    chunks = []
    run_chunk = Evaluator.run_chunk_modes

    def stopped_after_two(self, *args):
        out = run_chunk(self, *args)
        chunks.append(len(out[0][1]))
        if len(chunks) == 2:  # a SIGTERM arrives during the second chunk
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Evaluator, "run_chunk_modes", stopped_after_two)
    with pytest.raises(RunStopped, match="after 6 of 10 tasks") as stopped:
        _evaluate(run, resume_file=resume)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    saved = json.loads(resume.read_text())
    assert len(saved["scores"]) == 6 and saved["stages"][0]["tasks"] == 6
    monkeypatch.setattr(Evaluator, "run_chunk_modes", run_chunk)

    summary = _evaluate(run, resume_file=resume)
    assert "6 of 10 tasks done" in capsys.readouterr().err
    staged = summary["result"]
    assert torch.equal(staged.scores, whole.scores)  # task for task, bit for bit
    assert torch.equal(staged.predictions, whole.predictions)
    assert staged.predictions.dtype == whole.predictions.dtype
    assert summary["tasks"] == 10 and [s["tasks"] for s in summary["stages"]] == [6, 4]
    assert summary["stages"][1]["first_task"] == 6


def test_progress_for_another_evaluation_or_model_starts_afresh(tmp_path, capsys):
    path, key = tmp_path / "p.json", {"seed": 0, "model": "a", "tasks": 9}
    first = EvalProgress.open(path, key)
    first.add(torch.tensor([1.0, 0.5], dtype=torch.float64), torch.tensor([[0, 1], [2, 2]]))
    assert EvalProgress.open(path, key).done == 2
    assert "continuing the evaluation saved in" in capsys.readouterr().err
    assert EvalProgress.open(path, key | {"model": "b"}).done == 0
    assert "another evaluation or model" in capsys.readouterr().err
    path.write_text("{not json")
    assert EvalProgress.open(path, key).done == 0
    assert "unreadable" in capsys.readouterr().err


def test_the_model_digest_sees_every_tensor_and_step():
    from reptorch.inner_optim import Adam

    phi = {"w": torch.ones(3), "b": torch.zeros(2)}
    state = Adam(1e-3).init(phi)
    base = model_digest(phi, state)
    assert model_digest({k: v.clone() for k, v in phi.items()}, state) == base
    assert model_digest({"w": torch.ones(3), "b": torch.tensor([0.0, 1e-7])}, state) != base
    assert model_digest(phi, state._replace(step=1)) != base
    moved = state._replace(exp_avg_sq={"w": torch.full((3,), 1e-9), "b": torch.zeros(2)})
    assert model_digest(phi, moved) != base


def test_cli_saves_each_setting_apart_and_clears_its_progress(run, capsys):
    base = ["eval", "--checkpoint", str(run), "--eval-samples", "4", "--no-progress", "--json"]
    assert main(base) == 0
    assert main([*base, "--shots", "2"]) == 0
    own = json.loads((run / "eval-nontransductive-test.json").read_text())
    other = json.loads((run / "eval-nontransductive-test-3w2s.json").read_text())
    assert (own["shots"], other["shots"]) == (1, 2)
    assert not list(run.glob("*.progress.json"))  # complete: nothing left to resume


def test_the_k_shot_batch_follows_the_papers_row():
    from reptorch.config import resolve
    from reptorch.run.setup import eval_spec

    mini = resolve("miniimagenet-5w1s")
    assert eval_spec(mini).inner_batch == 5
    assert eval_spec(mini, shots=5).inner_batch == 15  # the reference's 5-shot command
    assert eval_spec(mini, shots=5, inner_batch=5).inner_batch == 5  # given: kept
    assert eval_spec(mini.replace(eval_batch=7), shots=5).inner_batch == 7  # not the paper's
    for preset, batch in (("omniglot-5w1s", 5), ("omniglot-20w1s", 10)):
        assert eval_spec(resolve(preset), shots=5).inner_batch == batch
