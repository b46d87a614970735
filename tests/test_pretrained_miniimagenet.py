"""The shipped Mini-ImageNet model: it loads without data, and with the full set `reptorch eval
--model miniimagenet-5way` reproduces the per-task scores its card recorded.

The full set (60,000 images) is not part of ../shared/data, which holds a 1,500-image sample:
the reproduction tests read the data root named by $REPTORCH_MINIIMAGENET_DATA (holding
`miniimagenet/`, as `reptorch data download miniimagenet` makes it) and skip without it, under
CI too, whose data is the shared folder."""

from __future__ import annotations

import json
import os

import pytest

from reptorch import pretrained
from reptorch.cli import main

from .helpers import assert_both_modes_reproduce_the_card, assert_shipped_model_is_whole

NAME = "miniimagenet-5way"


def test_the_miniimagenet_model_ships_and_loads_without_data():
    assert NAME in pretrained.names()
    model = pretrained.load(NAME)
    c = model.config
    assert (c.dataset, c.classes, c.train_shots, c.inner_batch, c.inner_iters) == (
        "miniimagenet", 5, 15, 10, 8,
    )  # fmt: skip
    assert (c.loss_reduction, c.parallel, c.inner_state, c.meta_iters) == (
        "sum", "loop", "carry", 100_000,
    )  # fmt: skip
    assert model.iteration == c.meta_iters  # the whole schedule
    assert model.phi["classifier.weight"].shape == (5, 1152)  # 32 channels x 6 x 6 at 84x84
    assert_shipped_model_is_whole(model, max_bytes=1_000_000)


def test_the_card_holds_the_four_cells_on_10000_tasks_and_consistent_checks():
    card = pretrained.load(NAME).card
    cells = {(r["shots"], r["transductive"]): r for r in card["results"]}
    assert set(cells) == {(1, False), (5, False), (1, True), (5, True)}
    for (shots, _), row in cells.items():
        assert row["tasks"] == 10_000 and 0.2 < row["accuracy"] < 1
        assert row["inner_batch"] == {1: 5, 5: 15}[shots]  # the reference's commands
        check = row["check"]
        assert len(check["task_scores"]) == check["tasks"] > 0
        assert sum(check["task_scores"]) / check["tasks"] == pytest.approx(check["accuracy"])


@pytest.fixture(scope="module")
def full_set() -> str:
    root = os.environ.get("REPTORCH_MINIIMAGENET_DATA")
    if not root:
        pytest.skip(
            "the full Mini-ImageNet is not in ../shared/data: set $REPTORCH_MINIIMAGENET_DATA"
        )
    return root


@pytest.fixture(scope="module")
def trainer(full_set):
    return pretrained.load(NAME).trainer(full_set)


@pytest.mark.parametrize("shots", [1, 5])
def test_evaluation_reproduces_the_cards_per_task_scores(trainer, shots):
    """Both modes from one fine-tuning per task, as the export measured them."""
    assert_both_modes_reproduce_the_card(pretrained.load(NAME), trainer, shots)


def test_eval_cli_with_model_prints_the_cards_figure(full_set, capsys):
    card = pretrained.load(NAME).card
    (row,) = [r for r in card["results"] if (r["shots"], r["transductive"]) == (1, False)]
    argv = ["eval", "--model", NAME, "--json", "--no-progress", "--data-dir", full_set]
    assert main([*argv, "--eval-samples", str(row["check"]["tasks"])]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["accuracy"] == pytest.approx(row["check"]["accuracy"], abs=1e-12)
    assert summary["iteration"] == card["iterations"]
