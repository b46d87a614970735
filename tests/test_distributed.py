"""`torchrun ... -m reptorch train|eval` on gloo, for real: processes, ports, signals.

One tiny Omniglot run (3-way, meta-batch 5, 12 meta-iterations) is trained by one plain process
and by torchrun jobs of 2 and 5 processes (shares 3/2 and 1 each). They end with the same
parameters and inner state bit for bit: a task's update does not depend on the tasks batched
with it, and the means over tasks are exact float64 sums (`Group.task_mean`). Mere closeness
would not be a robust test: a rounding difference that moves one ReLU input across 0 changes a
gradient, and Adam's normalisation carries it to the weights (measured: 1e-7 became 2e-4 within
8 iterations when the processes' means were rounded in float32).
A SIGKILLed worker under --max-restarts must resume to the 2-process run's parameters; a stopped
(hung) worker must stop the job through the timeout; two launchers (--nnodes 2, c10d rendezvous
on 127.0.0.1) must train the same run; a shared evaluation must predict exactly what one process
predicts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reptorch import tree
from reptorch.config import TrainConfig
from reptorch.distributed import Group, timeout_seconds
from reptorch.errors import ConfigError
from reptorch.run.checkpoint import list_checkpoints, load_checkpoint
from reptorch.run.setup import check_group
from reptorch.run.training import load_trainer

ROOT = Path(__file__).resolve().parents[1]
ITERS, EVERY = 12, 2
TINY = [
    "--dataset", "omniglot", "--classes", "3", "--shots", "1", "--train-shots", "2",
    "--inner-batch", "3", "--inner-iters", "2", "--meta-batch", "5", "--meta-step", "1.0",
    "--meta-step-final", "0.0", "--eval-interval", "5", "--eval-iters", "2", "--eval-batch", "3",
    "--eval-samples", "7", "--checkpoint-every", str(EVERY), "--keep", "100", "--device", "cpu",
    "--no-progress", "--json",
]  # fmt: skip
LIMIT = 240  # seconds any one launch may take on a loaded 2-core machine


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
        "OMP_NUM_THREADS": "1",  # one fast-oracle worker per process: the machine has 2 cores
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(data: Path, run: Path, iters: int = ITERS) -> list[str]:
    where = ["--data-dir", str(data), "--checkpoint", str(run)]
    return ["train", *TINY, "--meta-iters", str(iters), *where]


def torchrun(nproc: int, *args: str, nodes: int = 1, port: int | None = None) -> list[str]:
    """A torchrun command, c10d rendezvous on loopback (`nodes` launchers meet at `port`)."""
    port = port or free_port()
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    run += ["--nnodes", str(nodes), "--rdzv-backend", "c10d", "--rdzv-id", f"reptorch-{port}"]
    run += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--local-addr", "127.0.0.1"]
    return [*run, "--monitor-interval", "0.1", *args]


STARTED: list[subprocess.Popen] = []


def start(command: list[str]) -> subprocess.Popen:
    process = subprocess.Popen(
        command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    STARTED.append(process)
    return process


def kill(process: subprocess.Popen) -> None:
    """A launcher and its workers (torchrun starts each in a session of its own)."""
    for pid in workers(process.pid).values():
        os.kill(pid, signal.SIGKILL)
    process.kill()


@pytest.fixture(autouse=True, scope="module")
def _no_strays():
    """Whatever a failed test left running (a launcher and its workers) is killed."""
    yield
    for process in STARTED:
        if process.poll() is None:
            kill(process)
            process.communicate()


def finish(process: subprocess.Popen, ok: bool = True) -> str:
    try:
        output, _ = process.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        kill(process)
        output, _ = process.communicate()
        pytest.fail(f"no end within {LIMIT} s:\n{output[-3000:]}")
    if ok:
        assert process.returncode == 0, output[-3000:]
    return output


def two_nodes(port: int, *args: str) -> list[str]:
    """One of two launchers ("machines") of one process each, meeting at 127.0.0.1:port."""
    return torchrun(1, "-m", "reptorch", *args, nodes=2, port=port)


def workers(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the worker processes a torchrun launcher started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != launcher_pid:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def wait_for_checkpoint(run: Path, process: subprocess.Popen) -> int:
    deadline = time.monotonic() + LIMIT
    while not list_checkpoints(run):
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.01)
    return list_checkpoints(run)[-1]


def assert_same_run(a: Path, b: Path) -> None:
    """Final phi, carried Adam state, step and iteration, bit for bit."""
    x, y = load_checkpoint(a), load_checkpoint(b)
    assert x.iteration == y.iteration and x.inner_state.step == y.inner_state.step
    for name in x.phi:
        pairs = [
            (x.phi[name], y.phi[name]),
            (x.inner_state.exp_avg[name], y.inner_state.exp_avg[name]),
            (x.inner_state.exp_avg_sq[name], y.inner_state.exp_avg_sq[name]),
        ]
        for p, q in pairs:
            assert torch.equal(p, q), (name, (p - q).abs().max())


def metrics(run: Path) -> list[list[str]]:
    """metrics.csv rows without the timing column."""
    rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()]
    timing = rows[0].index("seconds")
    return [[v for j, v in enumerate(r) if j != timing] for r in rows]


def last_json(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    """The same run by one plain process and by torchrun jobs of 2 and 5 processes, at once."""
    base = tmp_path_factory.mktemp("dist")
    dirs = {n: base / f"p{n}" for n in (1, 2, 5)}
    one = [sys.executable, "-m", "reptorch", *train_args(shared_data, dirs[1])]
    one += ["--parallel", "vmap"]
    jobs = {1: start(one)}  # several processes default to the merged mode: one process asks
    for n in (2, 5):
        jobs[n] = start(torchrun(n, "-m", "reptorch", *train_args(shared_data, dirs[n])))
    outputs = {n: finish(job) for n, job in jobs.items()}
    return dirs, outputs


def test_one_two_and_five_processes_train_the_same_run(runs):
    dirs, outputs = runs
    for n in (2, 5):
        assert f"{ITERS} iterations" in outputs[n] and f"{n} processes" in outputs[n]
        # no --parallel: the merged mode, said once (rank 0), recorded in the run's settings
        assert outputs[n].count("from one merged inner state (--parallel vmap)") == 1
        assert json.loads((dirs[n] / "config.json").read_text())["config"]["parallel"] == "vmap"
        assert_same_run(dirs[n], dirs[1])
        assert metrics(dirs[n]) == metrics(dirs[1])  # meta step, inner loss, interval scores
        assert [r[0] for r in metrics(dirs[n])] == ["iteration", "0", "5", "10"]
        summary, single = last_json(outputs[n]), last_json(outputs[1])
        assert summary["tasks"] == single["tasks"] == 7
        assert summary["accuracy"] == single["accuracy"] and summary["ci95"] == single["ci95"]
        # rank 0 alone printed: one evaluation line, one interval line per evaluation
        assert outputs[n].count("accuracy ") == 1 and outputs[n].count("batch 5:") == 1


def test_shared_evaluation_predicts_what_one_process_predicts(runs, shared_data, tmp_path):
    """Every task's predictions (3 processes), and `torchrun -m reptorch eval` (2 processes)."""
    run = runs[0][1]
    out = tmp_path / "shared.pt"
    script = str(ROOT / "tests" / "distributed_eval.py")
    shared = start(torchrun(3, script, str(run), str(shared_data), "10", str(out)))
    argv = ["eval", "--checkpoint", str(run), "--eval-samples", "9", "--seed", "3", "--json"]
    cli = start(torchrun(2, "-m", "reptorch", *argv, "--no-progress"))
    finish(shared)
    output = finish(cli)
    both = finish(start(torchrun(2, "-m", "reptorch", *argv, "--no-progress", "--both-modes")))

    trainer = load_trainer(run, "cpu", str(shared_data), 1)
    saved = torch.load(out)
    assert saved["size"] == 3
    for transductive, (scores, predictions) in saved["results"].items():
        result = trainer.evaluate(
            num_tasks=10, chunk=4, progress=False, transductive=transductive, keep_predictions=True
        )["result"]
        assert predictions.shape == result.predictions.shape == (10, 3)
        assert torch.equal(predictions, result.predictions), transductive
        assert torch.equal(scores, result.scores), transductive
    single = trainer.evaluate(num_tasks=9, seed=3, progress=False)
    for key in ("accuracy", "ci95", "tasks", "seed", "split"):
        assert last_json(output)[key] == single[key], key
    assert output.count('"accuracy"') == 1  # rank 0 alone reports
    for mode, name in ((False, "non-transductive"), (True, "transductive")):  # one fine-tuning
        alone = trainer.evaluate(num_tasks=9, seed=3, progress=False, transductive=mode)
        for key in ("accuracy", "ci95", "tasks", "transductive"):
            assert last_json(both)[name][key] == alone[key], (name, key)


def test_sigkill_of_a_worker_restarts_the_group_from_the_checkpoint(runs, shared_data, tmp_path):
    run = tmp_path / "killed"
    job = start(torchrun(2, "--max-restarts", "1", "-m", "reptorch", *train_args(shared_data, run)))
    reached = wait_for_checkpoint(run, job)
    victim = workers(job.pid)[1]
    os.kill(victim, signal.SIGKILL)
    output = finish(job)
    assert reached < ITERS, "killed after the end"
    resumed = [line for line in output.splitlines() if line.startswith("resuming")]
    assert len(resumed) == 1 and 0 < int(resumed[0].split()[-1]) < ITERS, output[-3000:]
    assert_same_run(run, runs[0][2])  # the uninterrupted 2-process run
    assert metrics(run) == metrics(runs[0][2])


def test_a_hung_worker_stops_the_job_through_the_timeout(shared_data, tmp_path):
    run = tmp_path / "hung"
    args = [*train_args(shared_data, run, iters=100_000), "--dist-timeout", "4"]
    job = start(torchrun(2, "-m", "reptorch", *args))
    wait_for_checkpoint(run, job)
    ranks = workers(job.pid)
    os.kill(ranks[1], signal.SIGSTOP)  # hangs: alive, silent
    stopped = time.monotonic()
    while Path(f"/proc/{ranks[0]}").exists() and time.monotonic() < stopped + 60:
        time.sleep(0.05)
    waited = time.monotonic() - stopped
    os.kill(ranks[1], signal.SIGCONT)  # lets torchrun's SIGTERM end it at once
    output = finish(job, ok=False)
    assert job.returncode != 0
    assert 4 <= waited < 30, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("reptorch: error:")]
    assert len(errors) == 1, output[-3000:]  # rank 0 waited; rank 1 was stopped
    assert errors[0].startswith("reptorch: error: rank 0: no answer from the other processes (")
    assert "within the 4 s timeout (--dist-timeout): one of them hangs or died" in errors[0]
    assert "Timed out" in errors[0]


def test_two_launchers_as_two_machines(runs, shared_data, tmp_path):
    port = free_port()
    dirs = [tmp_path / "node-a", tmp_path / "node-b"]
    jobs = [start(two_nodes(port, *train_args(shared_data, d))) for d in dirs]
    outputs = [finish(job) for job in jobs]
    written = [d for d in dirs if d.exists()]
    assert len(written) == 1, "rank 0 alone writes"  # rank 1 never touched its directory
    assert_same_run(written[0], runs[0][1])
    assert sum(f"{ITERS} iterations" in o for o in outputs) == 1


def test_processes_that_disagree_stop_with_one_line(shared_data, tmp_path):
    port = free_port()
    jobs = [
        start(two_nodes(port, *train_args(shared_data, tmp_path / "run", iters=n)))
        for n in (ITERS, ITERS + 1)
    ]
    output = "".join(finish(job, ok=False) for job in jobs)
    assert all(job.returncode != 0 for job in jobs)
    errors = [line for line in output.splitlines() if line.startswith("reptorch: error:")]
    assert len(errors) == 1, output[-3000:]  # rank 0 prints it; the other stops silently
    assert "rank 1 disagrees with rank 0 on the configuration: meta_iters=" in errors[0]
    assert not (tmp_path / "run").exists()


def test_shares_cover_every_task_once_weighted_by_count():
    for count, size in [(5, 2), (5, 5), (7, 3), (10, 3), (2, 5)]:
        parts = [Group(rank, size).share(count) for rank in range(size)]
        assert [i for p in parts for i in p] == list(range(count))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [len(Group(r, 2).share(5)) for r in (0, 1)] == [3, 2]


def test_exact_sequential_mode_and_too_many_processes_are_refused(monkeypatch):
    monkeypatch.setattr(Group, "agree", lambda self, what, values: None)
    with pytest.raises(ConfigError, match=r"parallel='loop' .* not 2: use --parallel vmap"):
        check_group(TrainConfig(parallel="loop", meta_batch=5), Group(0, 2))
    with pytest.raises(ConfigError, match=r"meta_batch=5 tasks .* among 6 processes"):
        check_group(TrainConfig(meta_batch=5, parallel="vmap"), Group(0, 6))
    check_group(TrainConfig(parallel="loop"), Group())  # one process: the exact mode runs


def test_timeout_setting(monkeypatch):
    monkeypatch.delenv("REPTORCH_DIST_TIMEOUT", raising=False)
    assert timeout_seconds() == 600 and timeout_seconds(7) == 7
    monkeypatch.setenv("REPTORCH_DIST_TIMEOUT", "30")
    assert timeout_seconds() == 30
    monkeypatch.setenv("REPTORCH_DIST_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="REPTORCH_DIST_TIMEOUT"):
        timeout_seconds()


def test_task_mean_over_shares_equals_one_process_mean(monkeypatch):
    """Rank 0 of 2 with tasks 0..2, its all-reduce adding what rank 1 sends for tasks 3..4:
    the result is `tree.batch_mean` over all 5 tasks bit for bit, though the values span six
    orders of magnitude (a float32 mean of means would not be)."""
    g = torch.Generator().manual_seed(0)
    scales = 10.0 ** torch.arange(-3, 2).float().view(5, 1, 1)
    batched = {"w": torch.randn(5, 4, 3, generator=g) * scales, "b": torch.randn(5, 7)}
    rank1 = [batched[k][3:].double().sum(0) for k in batched] + [torch.tensor([2.0]).double()]

    def all_sum(self, tensors, what):
        return [t + other for t, other in zip(tensors, rank1, strict=True)]

    monkeypatch.setattr(Group, "all_sum", all_sum)
    mine = {k: v[:3] for k, v in batched.items()}
    merged = Group(0, 2).task_mean(mine)
    for name, value in tree.batch_mean(batched).items():
        assert merged[name].dtype == torch.float32
        assert torch.equal(merged[name], value), name
    weighted = {k: (v.mean(0) * 3 + batched[k][3:].mean(0) * 2) / 5 for k, v in mine.items()}
    assert not all(torch.equal(weighted[k], merged[k]) for k in merged)  # float32 differs
