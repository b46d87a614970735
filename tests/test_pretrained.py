"""The shipped models: they load without the dataset, and `reptorch eval --model` reproduces the
per-task results their model card recorded (same seed, same task count)."""

from __future__ import annotations

import json

import pytest

from reptorch import pretrained
from reptorch.cli import main
from reptorch.errors import ConfigError

from .helpers import assert_both_modes_reproduce_the_card, assert_shipped_model_is_whole

NAME = "omniglot-5way"


def test_the_5way_model_ships_and_loads_without_data():
    assert NAME in pretrained.names()
    model = pretrained.load(NAME)
    c = model.config
    assert (c.dataset, c.classes, c.train_shots, c.inner_batch, c.inner_iters) == (
        "omniglot", 5, 10, 10, 5,
    )  # fmt: skip
    assert (c.loss_reduction, c.parallel, c.inner_state) == ("sum", "loop", "carry")
    assert model.phi["classifier.weight"].shape == (5, 256)
    assert_shipped_model_is_whole(model, max_bytes=2_000_000)


def test_unknown_model_lists_the_shipped_ones(capsys):
    with pytest.raises(ConfigError, match=NAME):
        pretrained.load("omniglot-7way")
    assert main(["eval", "--model", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no shipped model 'nope'" in err and NAME in err and len(err.splitlines()) == 1


def test_a_shipped_model_reads_the_users_data_root_not_the_training_machines(
    shared_data, tmp_path, monkeypatch, capsys
):
    """Without --data-dir, `--model` looks in $REPTORCH_DATA (then ~/.cache/reptorch), as every
    command does; the config's data_dir ("../shared/data", relative) is the training machine's."""
    monkeypatch.chdir(tmp_path)  # where the config's relative path holds nothing
    monkeypatch.setenv("REPTORCH_DATA", str(shared_data))
    argv = ["eval", "--model", NAME, "--eval-samples", "2", "--no-progress", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tasks"] == 2
    assert pretrained.load(NAME).trainer().config.data_dir == str(shared_data)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(shared_data)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # where the config's ../shared/data holds the data
    monkeypatch.setenv("REPTORCH_DATA", str(tmp_path / "elsewhere"))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "elsewhere") in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def trainer(shared_data):
    return pretrained.load(NAME).trainer(str(shared_data))


@pytest.mark.parametrize("shots, transductive", [(1, False), (5, False), (1, True), (5, True)])
def test_evaluation_reproduces_the_cards_per_task_scores(trainer, shots, transductive):
    card = pretrained.load(NAME).card
    (row,) = [
        r for r in card["results"] if (r["shots"], r["transductive"]) == (shots, transductive)
    ]
    check = row["check"]
    summary = trainer.evaluate(
        num_tasks=check["tasks"],
        seed=check["seed"],
        shots=shots,
        transductive=transductive,
        keep_scores=True,
        progress=False,
    )
    assert summary["task_scores"] == check["task_scores"]
    assert summary["accuracy"] == pytest.approx(check["accuracy"], abs=1e-12)


@pytest.mark.parametrize("shots", [1, 5])
def test_both_modes_at_once_reproduce_the_cards_per_task_scores(trainer, shots):
    """The card's checks were measured one mode at a time; one fine-tuning per task for both
    gives the same scores, task for task."""
    assert_both_modes_reproduce_the_card(pretrained.load(NAME), trainer, shots)


def test_eval_cli_with_model_prints_the_cards_figure(shared_data, capsys):
    card = pretrained.load(NAME).card
    (row,) = [r for r in card["results"] if (r["shots"], r["transductive"]) == (5, True)]
    argv = ["eval", "--model", NAME, "--shots", "5", "--transductive", "--json"]
    argv += ["--eval-samples", str(row["check"]["tasks"]), "--data-dir", str(shared_data)]
    assert main([*argv, "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["accuracy"] == pytest.approx(row["check"]["accuracy"], abs=1e-12)
    assert summary["iteration"] == card["iterations"]
