"""`python -m reptorch.pretrained.export`: a run shipped as a package model with its card, the
cells' evaluations kept in (and reused from) the run directory."""

from __future__ import annotations

import json

import pytest

from reptorch.pretrained import export
from reptorch.run.training import Trainer
from tests.helpers import tiny_run


@pytest.fixture()
def run(tmp_path, shared_data):
    return tiny_run(tmp_path / "run", shared_data)


@pytest.fixture()
def calls(monkeypatch) -> list:
    """The task counts of every `Trainer.evaluate` call and the (modes, tasks) of every
    `Trainer.evaluate_modes` call (a shot's cells, or its checks) from now on."""
    seen: list = []
    evaluate, evaluate_modes = Trainer.evaluate, Trainer.evaluate_modes

    def counted(self, **kwargs):
        seen.append(kwargs.get("num_tasks"))
        return evaluate(self, **kwargs)

    def counted_modes(self, modes, **kwargs):
        seen.append((modes, kwargs.get("num_tasks")))
        return evaluate_modes(self, modes, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", counted)
    monkeypatch.setattr(Trainer, "evaluate_modes", counted_modes)
    return seen


def test_export_writes_the_card_and_reuses_the_runs_cells(run, tmp_path, monkeypatch, calls):
    monkeypatch.setattr(export, "MODELS_DIR", tmp_path / "models")
    (tmp_path / "models").mkdir()
    assert export.main([str(run), "--name", "tiny", "--tasks", "4", "--check-tasks", "2"]) == 0
    cells, checks = ((False, True), 4), ((False, True), 2)  # a shot's two modes at once
    assert calls == [cells, checks, cells, checks]  # 1-shot, then 5-shot
    card = json.loads((tmp_path / "models" / "tiny" / "card.json").read_text())
    cells = {(r["shots"], r["transductive"]): r for r in card["results"]}
    assert set(cells) == {(1, False), (5, False), (1, True), (5, True)}
    assert all(r["tasks"] == 4 and len(r["check"]["task_scores"]) == 2 for r in cells.values())
    saved = json.loads((run / "eval-transductive-test-3w5s.json").read_text())
    assert saved["accuracy"] == cells[5, True]["accuracy"] and saved["tasks"] == 4
    readme = (tmp_path / "models" / "tiny" / "README.md").read_text()
    assert "Reptile on Omniglot, 3-way" in readme
    assert "semantics), seed 0, the Omniglot reference split (split seed 0). " in readme

    calls.clear()
    assert export.main([str(run), "--name", "tiny", "--tasks", "4", "--check-tasks", "2"]) == 0
    assert calls == [checks, checks]  # the cells came from the run directory
    again = json.loads((tmp_path / "models" / "tiny" / "card.json").read_text())
    assert again["results"] == card["results"]
    assert not list(run.glob("*.progress.json"))


def test_cells_saved_before_the_kernels_field_count_as_atens(
    tmp_path, shared_data, monkeypatch, calls
):
    """Evaluation files written before summaries named their kernels were all ATen's: an ATen
    run's export reuses them; a fused run's would not."""
    directory = tiny_run(tmp_path / "aten-run", shared_data, "--kernels", "aten")
    monkeypatch.setattr(export, "MODELS_DIR", tmp_path / "models")
    (tmp_path / "models").mkdir()
    command = [str(directory), "--name", "tiny", "--tasks", "4", "--check-tasks", "2"]
    assert export.main(command) == 0
    for path in directory.glob("eval-*.json"):  # as written before the field existed
        summary = json.loads(path.read_text())
        assert summary.pop("kernels") == "aten"
        path.write_text(json.dumps(summary))
    calls.clear()
    assert export.main(command) == 0
    assert calls == [((False, True), 2)] * 2  # the four cells reused, only the checks run


def test_the_card_names_a_split_seed_only_where_the_split_is_drawn_from_one():
    """Omniglot's split comes from `--split-seed`, else `--seed` (the reference's); Ravi &
    Larochelle's Mini-ImageNet split is fixed, whatever the seed."""
    assert export._split_seed({"dataset": "omniglot", "seed": 1, "split_seed": None}) == (
        " (split seed 1)"
    )
    assert export._split_seed({"dataset": "omniglot", "seed": 1, "split_seed": 0}) == (
        " (split seed 0)"
    )
    assert export._split_seed({"dataset": "miniimagenet", "seed": 0, "split_seed": None}) == ""
