"""How many of this process's cores other processes leave free, measured as the work goes.

The exact chain cuts each inner step's images into S slices (`reptorch.fast.kernel`). S threads
(one slice each, meeting a dozen times a step) are fastest on S idle cores; beside a busy
process, one of them waits at every meeting for a thread that shares a core with it, and one
thread taking the slices in turn is faster (measured 0.57-0.80x vs 1 thread, docs/benchmarks.md).
The slices give the same bits either way, so the thread count may follow the load freely:
`FreeCores.threads(S)` picks S or 1 from what other processes used of this process's cores over
the last stretch (Linux: their busy time in /proc/stat minus this process's own CPU time).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

STAT = Path("/proc/stat")


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # platforms without affinity masks
        return set(range(os.cpu_count() or 1))


def busy_seconds(stat: str, cpus: set[int]) -> float | None:
    """Seconds the given CPUs spent busy (user, nice, system, irq, softirq, steal) since boot,
    from the text of /proc/stat; None if it has no line for them."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy, found = 0, False
    for line in stat.splitlines():
        name, _, fields = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        values = [int(v) for v in fields.split()]
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        busy += sum(values[0:3]) + sum(values[5:8])
        found = True
    return busy / tick if found else None


class FreeCores:
    """Cores of this process's affinity left free by other processes, over the last
    `interval` seconds or more (refreshed on demand, at most once per interval)."""

    def __init__(self, interval: float = 0.25, stat: Path = STAT) -> None:
        self.interval = interval
        self.stat = stat
        self.cpus = _affinity()
        self._lock = threading.Lock()
        self._last: tuple[float, float, float] | None = None  # (wall, busy, own cpu)
        self._free = float(len(self.cpus))

    def _read(self) -> float | None:
        try:
            return busy_seconds(self.stat.read_text(), self.cpus)
        except OSError:
            return None

    def free(self) -> float:
        """The estimate: cores minus the cores other processes kept busy (all, where unknown)."""
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self.interval:
                return self._free
            busy, own = self._read(), time.process_time()
            if busy is None:
                return self._free
            if self._last is not None:
                wall, busy0, own0 = now - self._last[0], busy - self._last[1], own - self._last[2]
                others = max(0.0, (busy0 - own0) / wall)
                self._free = max(0.0, len(self.cpus) - others)
            self._last = (now, busy, own)
            return self._free

    def threads(self, slices: int) -> int:
        """`slices` threads if about that many cores are free, else 1 (no split of the slices
        between fewer threads gives the same bits as both)."""
        return slices if slices > 1 and self.free() >= slices - 0.5 else 1


FREE_CORES = FreeCores()  # one measurement per process
