"""Behavioural: seeded runs are bit-identical; the sine experiment shows the paper's result."""

import json

import torch

from reptorch.cli import main
from reptorch.experiments.sine import SineConfig, meta_train


def test_seeded_meta_training_is_bit_identical():
    config = SineConfig(meta_iters=30, meta_batch=3)
    for method in ("reptile", "maml"):
        first, second = meta_train(method, config), meta_train(method, config)
        assert all(torch.equal(first[k], second[k]) for k in first)
    other = meta_train("reptile", SineConfig(meta_iters=30, meta_batch=3, seed=1))
    assert not torch.equal(other["net.0.weight"], first["net.0.weight"])


def test_short_sine_run_reptile_beats_joint_training(tmp_path, capsys):
    figure = tmp_path / "sine.png"
    args = "sine --methods reptile,joint --meta-iters 500 --meta-step 1.0 --eval-tasks 100"
    assert main([*args.split(), "--out", str(figure), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    reptile, joint = summary["reptile"], summary["joint"]
    # Before adaptation both predict about the mean sine, f = 0 (MSE = E[a^2] / 2 ~ 4.2).
    assert 3.0 < reptile["mse_before"] < 5.5 and 3.0 < joint["mse_before"] < 5.5
    # After 32 steps Reptile fits the new sine; joint training stays poor.
    assert reptile["mse_after"] < 1.5
    assert reptile["mse_after"] + reptile["ci95"] < joint["mse_after"] - joint["ci95"]
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_unknown_method_is_a_one_line_error(capsys):
    assert main(["sine", "--methods", "reptile,bogus"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("reptorch: error: unknown method(s) ['bogus']") and "\n" not in err
