"""Kill -9 a real `reptorch train` process, rerun the same command: bit-identical parameters.

The resumed run must restore phi, the carried Adam state, the RNG states and the iteration (hence
the meta-step schedule); anything missed changes the final parameters.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reptorch.run.checkpoint import list_checkpoints, load_checkpoint

ITERS, EVERY, KILL_AFTER = 60, 2, 6


def _command(shared_data: Path, run: Path, parallel: str) -> list[str]:
    exe = shutil.which("reptorch", path=str(Path(sys.executable).parent)) or "reptorch"
    return [
        exe, "train", "--dataset", "omniglot", "--data-dir", str(shared_data),
        "--classes", "3", "--shots", "1", "--train-shots", "4", "--inner-batch", "4",
        "--inner-iters", "3", "--meta-batch", "3", "--meta-iters", str(ITERS),
        "--meta-step", "1.0", "--meta-step-final", "0.0", "--eval-interval", "5",
        "--eval-iters", "2", "--eval-samples", "0", "--checkpoint-every", str(EVERY),
        "--device", "cpu", "--no-progress", "--checkpoint", str(run), "--parallel", parallel,
    ]  # fmt: skip


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("parallel", ["vmap", "loop"])
def test_sigkill_and_resume_is_bit_identical(tmp_path, shared_data, parallel):
    """Both the merged (vmap) and the exact sequential (loop) modes; the latter scores its
    interval evaluations in a background thread, which must log the same rows in order."""
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    reference = subprocess.Popen(
        _command(shared_data, whole, parallel), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    victim = subprocess.Popen(
        _command(shared_data, killed, parallel),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not any(i >= KILL_AFTER for i in list_checkpoints(killed)):
        assert victim.poll() is None, "the run ended before a checkpoint appeared"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    reached = list_checkpoints(killed)[-1]
    assert victim.returncode == -signal.SIGKILL and reached < ITERS, "killed after the end"

    _run(_command(shared_data, killed, parallel))  # the same command: resumes
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()[-2000:]

    a, b = load_checkpoint(killed), load_checkpoint(whole)
    assert a.iteration == b.iteration == ITERS
    for name in b.phi:
        assert torch.equal(a.phi[name], b.phi[name]), name
        assert torch.equal(a.inner_state.exp_avg_sq[name], b.inner_state.exp_avg_sq[name]), name
    assert a.inner_state.step == b.inner_state.step
    assert all(torch.equal(a.rng[k], b.rng[k]) for k in b.rng)
    rows = (killed / "metrics.csv").read_text().splitlines()
    iterations = [int(r.split(",")[0]) for r in rows[1:]]
    assert iterations == list(range(0, ITERS, 5))  # no duplicated rows after the resume
    header = rows[0].split(",")
    timing = header.index("seconds")

    def values(run: Path) -> list[list[str]]:
        lines = (run / "metrics.csv").read_text().splitlines()[1:]
        return [[v for j, v in enumerate(r.split(",")) if j != timing] for r in lines]

    assert values(killed) == values(whole)  # the same interval evaluations, in order
