"""Checkpoints: exact round trip, rotation, and one-line errors for missing or damaged files."""

from __future__ import annotations

import json

import pytest
import torch

from reptorch.cli import main
from reptorch.errors import CheckpointError
from reptorch.inner_optim import AdamState, SGDState
from reptorch.outer import OuterOptimizer
from reptorch.run.checkpoint import (
    Checkpoint,
    list_checkpoints,
    load_checkpoint,
    paths,
    save_checkpoint,
)


def _checkpoint(iteration: int = 7) -> Checkpoint:
    g = torch.Generator().manual_seed(iteration)
    phi = {"a.weight": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g)}
    state = AdamState(
        5,
        {k: torch.randn(v.shape, generator=g) for k, v in phi.items()},
        {k: torch.rand(v.shape, generator=g) for k, v in phi.items()},
    )
    outer = OuterOptimizer("adam", phi, 1.0, 0.0, 10)
    outer.update(phi, {k: torch.ones_like(v) for k, v in phi.items()}, 0)
    sampler = torch.Generator().manual_seed(123)
    torch.rand(3, generator=sampler)
    return Checkpoint(iteration, phi, state, outer.state_dict(), {"train": sampler.get_state()})


def test_round_trip_is_exact(tmp_path):
    ckpt = _checkpoint()
    save_checkpoint(tmp_path, ckpt)
    back = load_checkpoint(tmp_path)
    assert back.iteration == 7
    for name in ckpt.phi:
        assert torch.equal(back.phi[name], ckpt.phi[name])
        assert torch.equal(back.inner_state.exp_avg[name], ckpt.inner_state.exp_avg[name])
        assert torch.equal(back.inner_state.exp_avg_sq[name], ckpt.inner_state.exp_avg_sq[name])
    assert back.inner_state.step == 5
    assert torch.equal(back.rng["train"], ckpt.rng["train"])
    restored = torch.Generator().set_state(back.rng["train"])
    original = torch.Generator().set_state(ckpt.rng["train"])
    assert torch.equal(torch.rand(4, generator=restored), torch.rand(4, generator=original))
    outer = OuterOptimizer("adam", ckpt.phi, 1.0, 0.0, 10)
    outer.load_state_dict(back.outer_state)  # torch accepts it: keys and tensors intact
    saved = ckpt.outer_state["state"][0]
    assert torch.equal(outer.state_dict()["state"][0]["exp_avg_sq"], saved["exp_avg_sq"])
    meta = json.loads(paths(tmp_path, 7)[1].read_text())
    assert len(meta["sha256"]) == 64 and meta["versions"]["torch"] == torch.__version__


def test_sgd_state_and_rotation(tmp_path):
    for it in (1, 2, 3, 4, 5):
        ckpt = _checkpoint(it)
        ckpt.inner_state = SGDState(it)
        save_checkpoint(tmp_path, ckpt, keep=2)
    assert list_checkpoints(tmp_path) == [4, 5]
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert load_checkpoint(tmp_path).inner_state == SGDState(5)
    assert load_checkpoint(tmp_path, 4).iteration == 4


def test_truncated_tensor_file_is_detected(tmp_path):
    save_checkpoint(tmp_path, _checkpoint())
    tensors = paths(tmp_path, 7)[0]
    tensors.write_bytes(tensors.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        load_checkpoint(tmp_path)
    assert "\n" not in str(info.value)


def test_damaged_metadata_and_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, _checkpoint())
    paths(tmp_path, 7)[1].write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path)


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("reptorch: error:") and "\n" not in err, err
    return err


def test_cli_eval_on_a_directory_without_a_run(tmp_path, capsys):
    err = _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "nothing")])
    assert "no config.json" in err


def test_cli_eval_on_a_run_without_checkpoint(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"config": {"dataset": "sine"}}))
    err = _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path)])
    assert "holds no checkpoint" in err


def test_cli_eval_on_a_truncated_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--dataset", "sine", "--meta-iters", "3", "--inner-iters", "2"]
    argv += ["--eval-samples", "0", "--checkpoint", str(run), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    tensors = paths(run, 3)[0]
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    err = _one_line_error(capsys, ["eval", "--checkpoint", str(run), "--no-progress"])
    assert "corrupt or truncated" in err
    err = _one_line_error(capsys, argv)  # resuming from it fails the same way
    assert "corrupt or truncated" in err
