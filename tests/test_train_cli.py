"""`reptorch train` / `reptorch eval`: flags, presets, outputs, and a one-line error per mistake."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from reptorch.cli import build_parser, main
from reptorch.cli.train import config_from_args
from reptorch.config import PRESETS, TrainConfig, resolve
from reptorch.errors import ConfigError
from reptorch.functional import FunctionalModel
from reptorch.losses import cross_entropy_mean, cross_entropy_sum, mse_sum
from reptorch.models import OmniglotNet, SineMLP
from reptorch.run.training import Trainer

TINY = ["--classes", "3", "--shots", "1", "--train-shots", "3", "--inner-batch", "3"]
TINY += ["--inner-iters", "2", "--meta-batch", "2", "--eval-iters", "3", "--device", "cpu"]
SINE = ["--dataset", "sine", "--inner-iters", "2", "--meta-iters", "4", "--eval-interval", "2"]
SINE += ["--eval-samples", "5", "--eval-iters", "2", "--no-progress", "--device", "cpu"]


def _config(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_reference_defaults_without_preset():
    c = _config("--device", "cpu")
    assert (c.classes, c.shots, c.train_shots, c.inner_batch, c.inner_iters) == (5, 5, 0, 5, 20)
    assert (c.learning_rate, c.meta_step, c.meta_step_final, c.meta_batch) == (1e-3, 0.1, 0.1, 1)
    assert (c.meta_iters, c.eval_batch, c.eval_iters, c.eval_samples) == (400000, 5, 50, 10000)
    assert (c.eval_interval, c.weight_decay, c.seed, c.checkpoint_every) == (10, 1.0, 0, 100)
    assert (c.algorithm, c.inner_optimizer, c.inner_state, c.parallel) == (
        "reptile",
        "adam",
        "carry",
        "loop",  # the reference's: tasks in sequence, one inner state threaded through them
    )


def test_presets_are_the_paper_rows():
    rows = {  # ways, shots, train shots, inner batch, inner iters, lr, meta iters, eval batch
        "omniglot-5w1s": (5, 1, 10, 10, 5, 1e-3, 100_000, 5),
        "omniglot-5w5s": (5, 5, 10, 10, 5, 1e-3, 100_000, 5),
        "omniglot-20w1s": (20, 1, 10, 20, 10, 5e-4, 200_000, 10),
        "omniglot-20w5s": (20, 5, 10, 20, 10, 5e-4, 200_000, 10),
        "miniimagenet-5w1s": (5, 1, 15, 10, 8, 1e-3, 100_000, 5),
        "miniimagenet-5w5s": (5, 5, 15, 10, 8, 1e-3, 100_000, 15),
    }
    assert set(rows) == set(PRESETS)
    for name, row in rows.items():
        c = resolve(name)
        got = (c.classes, c.shots, c.train_shots, c.inner_batch, c.inner_iters)
        got += (c.learning_rate, c.meta_iters, c.eval_batch)
        assert got == row, name
        assert (c.meta_step, c.meta_step_final, c.meta_batch, c.eval_iters) == (1.0, 0.0, 5, 50)
        assert c.dataset == name.split("-")[0] and not c.transductive


def test_explicit_flags_override_the_preset():
    c = _config("--preset", "omniglot-20w5s", "--inner-iters", "3", "--foml", "--transductive")
    assert (c.classes, c.shots, c.inner_iters, c.algorithm) == (20, 5, 3, "fomaml")
    assert c.transductive and c.learning_rate == 5e-4
    assert _config("--sgd", "--device", "cpu").inner_optimizer == "sgd"


def test_help_shows_defaults():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for shown in ("(default: 20)", "(default: 400000)", "(default: carry)", "omniglot-5w1s"):
        assert shown in text


def test_validation_names_field_value_and_rule():
    with pytest.raises(ConfigError, match=r"inner_batch=0: must be a positive integer"):
        resolve(inner_batch=0)
    with pytest.raises(ConfigError, match=r"weight_decay=1.5"):
        resolve(weight_decay=1.5)
    with pytest.raises(ConfigError, match=r"foml_tail=2: applies to --algorithm fomaml"):
        resolve(foml_tail=2)


def _one_line_error(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("reptorch: error:") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_user_mistakes_give_one_line_errors(tmp_path, capsys):
    run = ["--checkpoint", str(tmp_path / "run"), "--device", "cpu"]
    _one_line_error(capsys, ["train", "--preset", "omniglot-1w1s", *run], "unknown preset")
    _one_line_error(capsys, ["train", "--foml", "--algorithm", "reptile", *run], "--foml conflicts")
    _one_line_error(capsys, ["train", "--classes", "0", *run], "classes=0")
    _one_line_error(capsys, ["train", "--dataset", "cifar", *run], "dataset='cifar'")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(
        capsys, ["train", "--data-dir", str(empty), *run], "Omniglot not found", "download"
    )


def test_sine_run_resume_and_config_mismatch(tmp_path, capsys):
    run = tmp_path / "sine"
    assert main(["train", *SINE, "--checkpoint", str(run), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("batch 0: train=") and "test=" in out[0]
    summary = json.loads(out[-1])
    assert summary["mse"] >= 0 and summary["tasks"] == 5 and "accuracy" not in summary
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.csv", "train", "test"} <= names
    assert "eval-nontransductive-test.json" in names
    assert list((run / "train").glob("events.out.tfevents.*"))
    # The same command again: already complete, it only evaluates (no new training lines).
    assert main(["train", *SINE, "--checkpoint", str(run)]) == 0
    assert "batch 0:" not in capsys.readouterr().out
    _one_line_error(
        capsys,
        ["train", *SINE, "--inner-iters", "3", "--checkpoint", str(run)],
        "inner_iters saved 2, now 3",
    )


def test_parallel_default_is_loop_and_a_run_resumes_with_its_own(tmp_path, capsys):
    """Without --parallel a new run records 'loop'; a run begun in 'vmap' (the default before)
    resumes as 'vmap' instead of stopping on a settings mismatch; an explicit flag still must
    agree with the run."""
    fresh, old = tmp_path / "fresh", tmp_path / "old"
    assert main(["train", *SINE, "--eval-samples", "0", "--checkpoint", str(fresh)]) == 0
    saved = json.loads((fresh / "config.json").read_text())["config"]
    assert saved["parallel"] == "loop"
    assert main(["train", *SINE, "--parallel", "vmap", "--checkpoint", str(old)]) == 0
    assert main(["train", *SINE, "--checkpoint", str(old)]) == 0  # the same run, no mismatch
    assert json.loads((old / "config.json").read_text())["config"]["parallel"] == "vmap"
    capsys.readouterr()
    _one_line_error(
        capsys,
        ["train", *SINE, "--parallel", "loop", "--checkpoint", str(old)],
        "parallel saved 'vmap', now 'loop'",
    )


@pytest.fixture(scope="module")
def omniglot_run(tmp_path_factory, shared_data):
    run = tmp_path_factory.mktemp("omni") / "run"
    argv = ["train", *TINY, "--meta-iters", "3", "--eval-interval", "2", "--checkpoint-every", "2"]
    argv += ["--eval-samples", "6", "--data-dir", str(shared_data), "--checkpoint", str(run)]
    assert main([*argv, "--no-progress"]) == 0
    return run


def test_omniglot_train_writes_everything(omniglot_run):
    names = {p.name for p in omniglot_run.iterdir()}
    assert {"config.json", "metrics.csv", "train", "test", "ckpt-00000003.json"} <= names
    assert "ckpt-00000003.safetensors" in names and "eval-nontransductive-test.json" in names
    rows = (omniglot_run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,meta_step") and [r.split(",")[0] for r in rows[1:]] == [
        "0",
        "2",
    ]
    config = json.loads((omniglot_run / "config.json").read_text())["config"]
    assert config["classes"] == 3 and config["inner_iters"] == 2


@pytest.mark.parametrize("mode", ["--no-transductive", "--transductive"])
def test_eval_rebuilds_from_the_directory(omniglot_run, capsys, mode):
    argv = ["eval", "--checkpoint", str(omniglot_run), mode, "--eval-samples", "8", "--json"]
    assert main([*argv, "--seed", "4", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert 0 <= result["accuracy"] <= 1 and result["ci95"] >= 0
    assert (result["tasks"], result["ways"], result["shots"], result["seed"]) == (8, 3, 1, 4)
    assert result["transductive"] is (mode == "--transductive") and result["split"] == "test"
    assert result["inner_steps"] == 3 and "seconds" in result and result["queries"] == 1
    assert "over 8 tasks" in lines[-2]


def test_pretrained_and_eval_mistakes(omniglot_run, capsys):
    argv = ["train", "--pretrained", "--checkpoint", str(omniglot_run), "--eval-samples", "4"]
    assert main([*argv, "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tasks"] == 4
    base = ["eval", "--checkpoint", str(omniglot_run), "--no-progress"]
    _one_line_error(capsys, [*base, "--classes", "5"], "classes=5", "3 outputs")
    _one_line_error(capsys, [*base, "--split", "val"], "split='val'")


def test_fast_path_is_the_conv_nets_with_a_cross_entropy():
    assert FunctionalModel(OmniglotNet(5), cross_entropy_sum).has_fast_path()
    assert FunctionalModel(OmniglotNet(5), cross_entropy_mean).has_fast_path()
    assert not FunctionalModel(OmniglotNet(5), mse_sum).has_fast_path()
    assert not FunctionalModel(SineMLP(), mse_sum).has_fast_path()


def test_interval_evaluations_overlap_training_only_on_the_fast_kernels(shared_data):
    """torch.func transforms in two threads at once corrupt each other (a functorch internal
    assert: a sine run failed so in CI). So the sequential mode scores its interval evaluations
    in a background thread only when training and scoring both run on `reptorch.fast`."""
    assert Trainer(_config(*SINE, "--parallel", "loop")).background is None
    omniglot = _config(*TINY, "--parallel", "loop", "--data-dir", str(shared_data))
    assert Trainer(omniglot).background is not None
    assert Trainer(omniglot.replace(parallel="vmap")).background is None


def test_chain_threads_run_the_sequential_chain_then_are_put_back(shared_data):
    """--chain-threads N: the exact chain trains with N intra-op threads (the interval
    evaluations then in turn with it), the same computation to float rounding; 1 by default."""
    config = _config(*TINY, "--parallel", "loop", "--data-dir", str(shared_data))
    config = config.replace(meta_iters=2, eval_interval=1, eval_samples=0)
    before = torch.get_num_threads()
    phis = {}
    for threads in (2, 1):
        trainer = Trainer(config, chain_threads=threads)
        assert (trainer.background is None) == (threads > 1)
        seen: list[int] = []
        count = partial(lambda out: out.append(torch.get_num_threads()), seen)
        trainer.train(False, on_iteration=count, echo=False)
        assert seen == [threads, threads] and torch.get_num_threads() == before
        phis[threads] = trainer.learner.phi
    for name, value in phis[1].items():
        torch.testing.assert_close(phis[2][name], value, rtol=1e-4, atol=1e-5)


def test_chain_threads_mistakes_are_one_line_errors(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", *SINE, "--checkpoint", str(run)]
    _one_line_error(capsys, [*argv, "--chain-threads", "0"], "chain_threads=0")
    _one_line_error(
        capsys, [*argv, "--parallel", "vmap", "--chain-threads", "2"], "--parallel loop"
    )
    assert not run.exists()
