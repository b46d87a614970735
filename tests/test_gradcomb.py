"""`reptorch gradcomb` (paper Figure 4): the ten curves' settings, their meta-updates computed by
hand, training in turns equal to an uninterrupted run, and the command end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reptorch.cli import main
from reptorch.errors import ConfigError
from reptorch.experiments.gradcomb import (
    CURVES,
    GradCombConfig,
    run_all,
    smooth,
    train_config,
)
from reptorch.run.checkpoint import load_checkpoint
from reptorch.run.training import Trainer

# paper-reference section 7: label -> (k, train shots, meta step, update)
PAPER_TABLE = {
    "g1": (1, 5, 0.25, "joint"),
    "g1+g2": (2, 10, 0.25, "reptile"),
    "(g1+g2)/2": (2, 10, 0.125, "reptile"),
    "g2": (2, 10, 0.25, "fomaml"),
    "g1+g2+g3": (3, 15, 0.25, "reptile"),
    "(g1+g2+g3)/3": (3, 15, 0.08325, "reptile"),
    "g3": (3, 15, 0.25, "fomaml"),
    "g4": (4, 20, 0.25, "fomaml"),
    "g1+g2+g3+g4": (4, 20, 0.25, "reptile"),
    "(g1+g2+g3+g4)/4": (4, 20, 0.0625, "reptile"),
}


def test_curves_follow_the_paper_table():
    assert {c.label for c in CURVES} == set(PAPER_TABLE)
    assert len({c.slug for c in CURVES}) == 10
    for curve in CURVES:
        k, shots, eps, update = PAPER_TABLE[curve.label]
        c = train_config(curve, GradCombConfig())
        assert (c.inner_iters, c.train_shots, c.algorithm) == (k, shots, update)
        assert c.meta_step == c.meta_step_final == eps  # constant meta step
        assert (c.classes, c.shots, c.inner_batch, c.meta_batch) == (5, 5, 25, 1)
        assert (c.inner_optimizer, c.learning_rate, c.loss_reduction) == ("sgd", 0.003, "sum")
        assert (c.eval_batch, c.eval_iters, c.seed, c.meta_iters) == (25, 5, 0, 40_000)
        assert c.foml_tail is None and not c.transductive
        assert c.train_shots * c.classes == c.inner_batch * c.inner_iters  # disjoint batches


def test_unknown_curve_is_a_config_error():
    with pytest.raises(ConfigError, match="sum9"):
        GradCombConfig(curves=("sum2", "sum9"))


@pytest.mark.parametrize("slug", ["g1", "sum2", "mean2", "last2", "last3"])
def test_one_meta_step_equals_the_hand_computed_gradient_combination(omniglot_dir, slug):
    """phi' = phi - eps * alpha * (sum of the chosen g_i), each g_i the gradient of the SUMMED
    cross-entropy of mini-batch i at the SGD iterate before it (autograd on the nn.Module)."""
    curve = next(c for c in CURVES if c.slug == slug)
    config = train_config(curve, GradCombConfig(data_dir=str(omniglot_dir.parent)))
    trainer = Trainer(config.replace(parallel="loop"))
    phi = {k: v.clone() for k, v in trainer.learner.phi.items()}
    generator = torch.Generator().set_state(trainer.train_gen.get_state())
    tasks = trainer.sources["train"].sample_train(
        1, config.train_shots, 25, curve.k, generator=generator
    )
    module = trainer.module
    params = dict(module.named_parameters())
    theta = {k: v.clone().double() for k, v in phi.items()}
    module.double()
    grads = []
    for x, y in zip(tasks.xs[0], tasks.ys[0], strict=True):
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(theta[name])
        loss = F.cross_entropy(module(x.double()), y, reduction="sum")
        g = torch.autograd.grad(loss, list(params.values()))
        grads.append(dict(zip(params, g, strict=True)))
        theta = {k: theta[k] - 0.003 * grads[-1][k] for k in theta}
    module.float()
    chosen = grads[-1:] if curve.algorithm == "fomaml" else grads
    expected = {
        k: phi[k].double() - curve.meta_step * 0.003 * sum(g[k] for g in chosen) for k in phi
    }
    trainer.learner.step(tasks.xs, tasks.ys)
    for name, value in trainer.learner.phi.items():
        torch.testing.assert_close(value.double(), expected[name], rtol=1e-4, atol=2e-6)


def test_training_in_turns_equals_an_uninterrupted_run(omniglot_dir, tmp_path):
    settings = dict(
        meta_iters=4,
        eval_interval=2,
        eval_iters=1,
        checkpoint_every=2,
        data_dir=str(omniglot_dir.parent),
        curves=("sum2", "last2"),
    )
    turns = GradCombConfig(chunk=1, **settings)
    assert run_all(turns, tmp_path / "turns", workers=1, stop_at=2) == {"sum2": 2, "last2": 2}
    run_all(turns, tmp_path / "turns", workers=1)  # resumed from the stop
    run_all(GradCombConfig(chunk=4, **settings), tmp_path / "once", workers=1)
    for slug in ("sum2", "last2"):
        a, b = load_checkpoint(tmp_path / "turns" / slug), load_checkpoint(tmp_path / "once" / slug)
        assert a.iteration == b.iteration == 4
        for name in a.phi:
            assert torch.equal(a.phi[name], b.phi[name]), (slug, name)
        turns, once = (_rows(tmp_path / d / slug / "metrics.csv") for d in ("turns", "once"))
        assert turns == once and [r["iteration"] for r in turns] == ["0", "2"]


def _rows(path: Path) -> list[dict]:
    """metrics.csv rows without the wall-clock column."""
    with path.open() as handle:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(handle)]


def test_gradcomb_command_writes_curves_and_figure_and_resumes(omniglot_dir, tmp_path, capsys):
    run_dir = tmp_path / "gc"
    args = [
        "gradcomb",
        "--run-dir",
        str(run_dir),
        "--data-dir",
        str(omniglot_dir.parent),
        "--meta-iters",
        "4",
        "--eval-interval",
        "2",
        "--eval-iters",
        "1",
        "--checkpoint-every",
        "2",
        "--chunk",
        "2",
        "--curves",
        "g1,last2",
        "--no-progress",
        "--json",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    final = json.loads(out.strip().splitlines()[-1])
    assert set(final) == {"g1", "g2"}
    assert all(0.0 <= v <= 1.0 for v in final.values())
    assert Path(run_dir / "gradcomb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = json.loads((run_dir / "curves.json").read_text())["curves"]
    assert curves["g2"]["iteration"] == [0, 2] and curves["g2"]["algorithm"] == "fomaml"
    with (run_dir / "curves.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["curve"], r["iteration"]) for r in rows] == [
        ("g1", "0"),
        ("g1", "2"),
        ("g2", "0"),
        ("g2", "2"),
    ]
    assert load_checkpoint(run_dir / "last2").iteration == 4
    # a longer schedule in the same directory is another run: refused in one line, not resumed
    assert main([*args[:6], "6", *args[7:]]) == 1
    assert "other settings" in capsys.readouterr().err
    # rerunning the same command resumes (nothing left to train) and redraws
    assert main(args) == 0
    assert "test accuracy at iteration 4," in capsys.readouterr().out


def test_smooth_is_a_centred_moving_average():
    values = list(np.random.default_rng(0).random(50))
    got = smooth(values, 5)
    for i in range(2, 48):
        assert got[i] == pytest.approx(np.mean(values[i - 2 : i + 3]))
    assert got[0] == pytest.approx(np.mean(values[:3]))
    assert got[-1] == pytest.approx(np.mean(values[-3:]))
    assert smooth([], 5) == []


def test_findings_are_paired_differences_on_common_iterations():
    from reptorch.experiments.gradcomb import findings, paired_difference, truncate

    rng = np.random.default_rng(1)
    task_effect = rng.random(40)  # the same test task at each evaluation for every curve

    def curve(offset, n=40):
        test = list(np.clip(task_effect[:n] + offset, 0, 1))
        its = list(range(0, 10 * n, 10))
        return {"iteration": its, "train": test, "test": test, "test_smoothed": test, "k": 2}

    curves = {"g1": curve(0.0), "g1+g2": curve(0.1), "g2": curve(0.05, n=30)}
    common = truncate(curves, 300)
    assert [len(c["test"]) for c in common.values()] == [30, 30, 30]
    mean, se, n = paired_difference(common["g1+g2"], common["g2"], 10)
    expected = np.array(common["g1+g2"]["test"][-10:]) - np.array(common["g2"]["test"][-10:])
    assert (mean, n) == (pytest.approx(expected.mean()), 10)
    assert se == pytest.approx(expected.std(ddof=1) / np.sqrt(10))
    # pairs by iteration: a curve with evaluations missing is compared on the others' tasks
    gappy = {
        k: [v for i, v in enumerate(c) if not 5 <= i < 9]
        for k, c in curves["g2"].items()
        if isinstance(c, list)
    }
    mean, _, n = paired_difference(curves["g1+g2"], gappy)
    by_iteration = dict(zip(curves["g1+g2"]["iteration"], curves["g1+g2"]["test"]))
    hand = [by_iteration[i] - v for i, v in zip(gappy["iteration"], gappy["test"])]
    assert n == 26 and mean == pytest.approx(np.mean(hand))
    checks = {(f["difference"], f["window"]): f for f in findings(common, 10)}
    assert set(checks) == {  # only pairs whose curves are present
        ("g1 - g1", "last 10 - first 10"),
        ("g1+g2 - g2", "whole run"),
        ("g1+g2 - g2", "last 10"),
    }
    first, last = np.array(common["g1"]["test"][:10]), np.array(common["g1"]["test"][-10:])
    assert checks["g1 - g1", "last 10 - first 10"]["mean"] == pytest.approx(
        last.mean() - first.mean()
    )
    whole = np.array(common["g1+g2"]["test"]) - np.array(common["g2"]["test"])
    assert checks["g1+g2 - g2", "whole run"]["mean"] == pytest.approx(whole.mean())
    assert checks["g1+g2 - g2", "whole run"]["n"] == 30
