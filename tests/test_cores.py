"""`reptorch.fast.cores`: the cores other processes leave free, from /proc/stat and this
process's own CPU time, and the thread count it gives the exact chain's slices."""

from __future__ import annotations

import os

import pytest

from reptorch.fast import cores
from reptorch.fast.cores import FreeCores, busy_seconds

TICK = os.sysconf("SC_CLK_TCK")


def _stat(busy: dict[int, int]) -> str:
    """/proc/stat text whose cpuN lines hold `busy[N]` ticks (split over user, system, irq,
    softirq, steal) and some idle/iowait ticks that must not count."""
    lines = ["cpu  999 0 999 999 999 0 0 0 0 0"]  # the aggregate line: ignored
    for cpu, ticks in busy.items():
        user, system, irq, softirq, steal = ticks - 40, 10, 10, 10, 10
        lines.append(f"cpu{cpu} {user} 0 {system} 5000 700 {irq} {softirq} {steal} 3 0")
    lines += ["intr 12345 0 0", "ctxt 99", "procs_running 3"]
    return "\n".join(lines) + "\n"


def test_busy_seconds_sums_the_busy_fields_of_the_given_cpus():
    text = _stat({0: 300, 1: 500, 2: 700})
    assert busy_seconds(text, {0, 1}) == pytest.approx(800 / TICK)
    assert busy_seconds(text, {2}) == pytest.approx(700 / TICK)
    assert busy_seconds(text, {7}) is None


class Clock:
    def __init__(self) -> None:
        self.wall = 100.0
        self.own = 10.0


@pytest.fixture()
def machine(tmp_path, monkeypatch):
    """A 2-core process with a fake /proc/stat and fake wall and CPU clocks."""
    clock = Clock()
    monkeypatch.setattr(cores.time, "monotonic", lambda: clock.wall)
    monkeypatch.setattr(cores.time, "process_time", lambda: clock.own)
    monkeypatch.setattr(cores, "_affinity", lambda: {0, 1})
    stat = tmp_path / "stat"
    busy = {0: 1000, 1: 1000}

    def advance(seconds: float, own_cores: float, other_cores: float) -> None:
        """`seconds` pass: this process keeps `own_cores` busy, other processes `other_cores`."""
        clock.wall += seconds
        clock.own += own_cores * seconds
        ticks = round((own_cores + other_cores) * seconds * TICK)
        busy[0] += ticks // 2
        busy[1] += ticks - ticks // 2
        stat.write_text(_stat(busy))

    stat.write_text(_stat(busy))
    return stat, advance


def test_the_threads_follow_what_other_processes_use(machine):
    stat, advance = machine
    free = FreeCores(interval=0.25, stat=stat)
    assert free.threads(2) == 2  # no measurement yet: every core
    advance(1.0, own_cores=2.0, other_cores=0.0)
    assert free.free() == pytest.approx(2.0, abs=0.05) and free.threads(2) == 2
    advance(1.0, own_cores=1.0, other_cores=1.0)  # a busy neighbour holds a core
    assert free.free() == pytest.approx(1.0, abs=0.05) and free.threads(2) == 1
    advance(0.1, own_cores=1.0, other_cores=0.0)
    assert free.threads(2) == 1  # within the interval: the last estimate holds
    advance(1.0, own_cores=1.0, other_cores=0.0)  # the neighbour left
    assert free.threads(2) == 2
    assert free.threads(1) == 1


def test_without_proc_stat_every_core_is_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(cores, "_affinity", lambda: {0, 1})
    free = FreeCores(stat=tmp_path / "missing")
    assert free.free() == 2 and free.threads(2) == 2


@pytest.mark.skipif(not cores.STAT.exists(), reason="Linux only: /proc/stat")
def test_the_real_measurement_is_within_the_cores():
    free = FreeCores(interval=0.0)
    free.free()
    sum(i * i for i in range(200_000))
    assert 0.0 <= free.free() <= len(free.cpus)
