"""SIGINT/SIGTERM stop a run gracefully: the current meta-iteration ends, a checkpoint is written,
and the resumed run ends bit for bit where an uninterrupted one does."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from reptorch.cli import build_parser
from reptorch.cli.train import config_from_args
from reptorch.errors import RunStopped
from reptorch.run.checkpoint import list_checkpoints
from reptorch.run.stop_signals import StopSignals
from reptorch.run.training import Trainer

SINE = ["--dataset", "sine", "--inner-iters", "2", "--eval-interval", "5", "--eval-samples", "0"]
SINE += ["--eval-iters", "2", "--device", "cpu", "--checkpoint-every", "100"]


def _config(*argv: str):
    return config_from_args(build_parser().parse_args(["train", *SINE, *argv]))


def _rows(run) -> list[list[str]]:
    """metrics.csv without its wall-clock column."""
    with (run / "metrics.csv").open() as f:
        return [[v for k, v in row.items() if k != "seconds"] for row in csv.DictReader(f)]


def test_first_signal_is_recorded_second_acts_as_before():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == signal.SIGINT and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    with StopSignals(enabled=False) as stop:
        assert signal.getsignal(signal.SIGTERM) is not stop._record


def test_sigterm_checkpoints_and_the_resumed_run_is_bit_identical(tmp_path):
    config = _config("--meta-iters", "20")
    whole = Trainer(config, tmp_path / "whole")
    whole.train(progress=False, echo=False)

    run = tmp_path / "stopped"
    calls = []

    def signal_after_seven() -> None:
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = Trainer(config, run)
    with pytest.raises(RunStopped, match="SIGTERM after 7 of 20") as caught:
        stopped.train(progress=False, on_iteration=signal_after_seven, echo=False)
    assert caught.value.exit_code == 128 + signal.SIGTERM and len(calls) == 7
    assert list_checkpoints(run) == [7]  # written at 7, not at the periodic 100
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back

    resumed = Trainer(config, run)
    resumed.train(progress=False, echo=False)
    for name, value in whole.learner.phi.items():
        assert torch.equal(resumed.learner.phi[name], value), name
    assert _rows(run) == _rows(tmp_path / "whole")


def test_cli_sigterm_is_one_line_exit_143_and_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "reptorch", "train", *SINE, "--meta-iters", "1000000"]
    argv += ["--checkpoint", str(run), "--no-progress"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.csv").is_file() or len(_rows(run)) < 3:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    line = err.strip()
    assert "\n" not in line and line.startswith("reptorch: stopped by SIGTERM after "), line
    assert "rerun the same command to resume" in line
    done = int(line.split("after ")[1].split(" of")[0].replace(",", ""))
    assert done >= 11 and max(list_checkpoints(run)) == done
