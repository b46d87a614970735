"""A run's block passes (`TrainConfig.kernels`, `reptorch.fast.fused`): chosen per
network, recorded by a run, kept on resume unless given, and the same training as ATen's to
float rounding."""

from __future__ import annotations

import json
import os

import pytest
import torch

from reptorch.config import TrainConfig, resolve
from reptorch.errors import ConfigError
from reptorch.fast import fused
from reptorch.models import MiniImageNetNet, OmniglotNet, SineMLP
from reptorch.run.setup import resolve_kernels
from reptorch.run.training import Trainer


@pytest.fixture()
def native_ops():
    if not fused.available():
        if os.environ.get("CI") == "true":
            pytest.fail("the fused native ops did not build")
        pytest.skip("no compiler for the fused native ops")


def test_config_field_defaults_and_old_runs():
    assert TrainConfig().kernels == ""  # chosen when the run starts
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "kernels"}
    assert TrainConfig.from_saved(old).kernels == "aten"  # runs before the field: ATen's
    with pytest.raises(ConfigError, match="kernels='fast': choose one of aten, fused"):
        TrainConfig(kernels="fast")


def test_auto_fuses_the_paper_nets_on_the_cpu_only(native_ops):
    assert resolve_kernels("", MiniImageNetNet(5), "cpu") == "fused"
    assert resolve_kernels("", OmniglotNet(5), "cpu") == "fused"
    assert resolve_kernels("", SineMLP(), "cpu") == "aten"  # no fast kernels
    assert resolve_kernels("", MiniImageNetNet(5), "cuda") == "aten"  # CPU ops
    assert resolve_kernels("aten", MiniImageNetNet(5), "cpu") == "aten"  # asked: given
    with pytest.raises(ConfigError, match="kernels=fused: only the paper's conv nets"):
        resolve_kernels("fused", SineMLP(), "cpu")


def test_without_the_native_ops_auto_is_aten_and_fused_a_one_line_error(monkeypatch):
    monkeypatch.setattr(fused, "available", lambda: False)
    assert resolve_kernels("", MiniImageNetNet(5), "cpu") == "aten"
    with pytest.raises(ConfigError, match="could not be built here.*--kernels aten"):
        resolve_kernels("fused", MiniImageNetNet(5), "cpu")


def _mini(shared_data, **changes) -> TrainConfig:
    tiny = dict(classes=3, shots=1, train_shots=2, inner_batch=6, inner_iters=2, meta_batch=2)
    tiny |= dict(meta_iters=2, eval_interval=1, eval_samples=0, eval_iters=2, eval_batch=3)
    data = dict(dataset="miniimagenet", data_dir=str(shared_data), allow_partial=True)
    return resolve(None, device="cpu", parallel="loop", **{**data, **tiny, **changes})


def test_run_records_its_kernels_and_resumes_with_them(native_ops, shared_data, tmp_path, capsys):
    """Auto picks the fused passes for Mini-ImageNet and config.json says so; they train the
    same phi as ATen's to float rounding; a run saved before the field resumes on ATen's;
    asking for the fused ones switches it, said on stderr and recorded."""
    phis = {}
    for kernels in ("", "aten"):
        run = tmp_path / f"run-{kernels or 'auto'}"
        trainer = Trainer(_mini(shared_data, kernels=kernels), run)
        expected = kernels or "fused"
        assert trainer.config.kernels == expected
        assert trainer.learner.algorithm.batched_loss_and_grad.spec.fused == (expected == "fused")
        assert trainer.evaluator.oracle.spec.fused == (expected == "fused")
        trainer.train(False, echo=False)
        saved = json.loads((run / "config.json").read_text())["config"]
        assert saved["kernels"] == expected
        phis[expected] = trainer.learner.phi
    for name, value in phis["aten"].items():  # float32 Adam: see tests/test_chain_workers.py
        torch.testing.assert_close(phis["fused"][name], value, rtol=1e-3, atol=1e-4)

    run = tmp_path / "run-auto"
    path = run / "config.json"
    old = json.loads(path.read_text())
    del old["config"]["kernels"]  # as written before the field existed
    path.write_text(json.dumps(old))
    same = _mini(shared_data)
    assert Trainer(same, run).config.kernels == "aten"  # the run's own, not auto's
    switched = Trainer(same.replace(kernels="fused"), run)
    assert "switch from the aten to the fused kernels" in capsys.readouterr().err
    switched.train(False, echo=False)
    assert json.loads(path.read_text())["config"]["kernels"] == "fused"
    assert Trainer(same, run).config.kernels == "fused"  # the switch is what is recorded now


def test_a_fused_run_is_evaluated_on_atens_passes_where_its_own_cannot_run(
    native_ops, tmp_path, shared_data, monkeypatch, capsys
):
    """Evaluating never changes a run, so where its fused passes cannot run (no compiler, or
    another device) the evaluation falls back to ATen's, says so once, and its summary names
    them; nothing is recorded."""
    from reptorch.distributed import LOCAL
    from reptorch.run.setup import evaluation_kernels
    from reptorch.run.training import load_trainer
    from tests.helpers import tiny_run

    run = tiny_run(tmp_path / "run", shared_data)
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["kernels"] == "fused"
    capsys.readouterr()
    assert load_trainer(run).config.kernels == "fused"  # where they run: the run's own
    assert capsys.readouterr().err == ""
    fused_run = TrainConfig.from_saved(config)
    assert evaluation_kernels(fused_run, run, "cuda", LOCAL) == "aten"
    assert "CPU code and this evaluation runs on cuda" in capsys.readouterr().err

    monkeypatch.setattr(fused, "available", lambda: False)  # a machine without g++
    trainer = load_trainer(run)
    err = capsys.readouterr().err
    assert "cannot be built here" in err and "evaluating on PyTorch's ops" in err
    assert "switch" not in err  # an evaluation records nothing
    summary = trainer.evaluate(num_tasks=2, progress=False)
    assert summary["kernels"] == "aten"
    assert json.loads((run / "config.json").read_text())["config"] == config
