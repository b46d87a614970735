"""The exact chain's workers (`reptorch.chain_threads`): chosen per network, recorded by a run,
kept on resume unless given, and the same computation as one worker to float rounding."""

from __future__ import annotations

import json

import pytest
import torch

from reptorch import chain_threads
from reptorch.chain_threads import resolve_chain_workers
from reptorch.config import TrainConfig, resolve
from reptorch.errors import ConfigError
from reptorch.models import MiniImageNetNet, OmniglotNet, SineMLP
from reptorch.run.training import Trainer


@pytest.fixture()
def two_cores(monkeypatch):
    monkeypatch.setattr(chain_threads, "free_cores", lambda: 2)


def test_auto_gives_the_cores_to_the_long_steps_only(two_cores):
    assert resolve_chain_workers(0, MiniImageNetNet(5), sequential=True) == 2
    assert resolve_chain_workers(0, OmniglotNet(5), sequential=True, images=10) == 1
    assert resolve_chain_workers(0, OmniglotNet(20), sequential=True, images=20) == 2
    assert resolve_chain_workers(0, SineMLP(), sequential=True) == 1
    assert resolve_chain_workers(0, MiniImageNetNet(5), sequential=False) == 1
    assert resolve_chain_workers(0, MiniImageNetNet(5), True, chain_threads=2) == 1
    assert resolve_chain_workers(3, OmniglotNet(5), sequential=True) == 3  # asked: given


@pytest.mark.parametrize(
    ("module", "sequential", "threads", "message"),
    [
        (MiniImageNetNet(5), False, 1, "--parallel loop"),
        (SineMLP(), True, 1, "conv nets"),
        (OmniglotNet(5), True, 2, "chain_threads=2"),
    ],
)
def test_mistakes_are_one_line_errors(module, sequential, threads, message):
    with pytest.raises(ConfigError, match=message):
        resolve_chain_workers(2, module, sequential, threads)


def test_config_field_defaults_and_old_runs():
    assert TrainConfig().chain_workers == 0  # chosen when the run starts
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "chain_workers"}
    assert TrainConfig.from_saved(old).chain_workers == 1  # runs before the field: one worker
    with pytest.raises(ConfigError, match="chain_workers=-1"):
        TrainConfig(chain_workers=-1)


def _mini(shared_data, **changes) -> TrainConfig:
    tiny = dict(classes=3, shots=1, train_shots=2, inner_batch=6, inner_iters=2, meta_batch=2)
    tiny |= dict(meta_iters=2, eval_interval=1, eval_samples=0, eval_iters=2, eval_batch=3)
    data = dict(dataset="miniimagenet", data_dir=str(shared_data), allow_partial=True)
    return resolve(None, device="cpu", **{**data, **tiny, **changes})


def test_run_records_its_workers_and_resumes_with_them(shared_data, two_cores, tmp_path, capsys):
    """Auto picks 2 for Mini-ImageNet and config.json says so; a run saved before the field
    resumes with 1; giving a number switches the run, said on stderr and recorded; 2 workers
    train the same phi as 1 to float rounding."""
    phis = {}
    for workers in (0, 1):
        run = tmp_path / f"run{workers}"
        trainer = Trainer(_mini(shared_data, chain_workers=workers), run)
        expected = 2 if workers == 0 else 1
        assert trainer.chain_workers == expected and (trainer.background is None) == (expected > 1)
        trainer.train(False, echo=False)
        saved = json.loads((run / "config.json").read_text())["config"]
        assert saved["chain_workers"] == expected
        phis[expected] = trainer.learner.phi
    # float32: Adam's normalised step (beta1 = 0, small second moments early on) turns
    # rounding-level gradient differences into up to ~1% of a step (lr 1e-3); the float64
    # equality of the split is tests/test_fast.py's
    for name, value in phis[1].items():
        torch.testing.assert_close(phis[2][name], value, rtol=1e-3, atol=1e-4)

    run = tmp_path / "run0"
    path = run / "config.json"
    old = json.loads(path.read_text())
    del old["config"]["chain_workers"]  # as written before the field existed
    path.write_text(json.dumps(old))
    same = _mini(shared_data)
    assert Trainer(same, run).chain_workers == 1  # the run's own policy, not auto's 2
    switched = Trainer(same.replace(chain_workers=2), run)
    assert switched.chain_workers == 2
    assert "switches from 1 to 2 worker(s)" in capsys.readouterr().err
    switched.train(False, echo=False)
    assert json.loads(path.read_text())["config"]["chain_workers"] == 2
    assert Trainer(same, run).chain_workers == 2  # the switch is what is recorded now
