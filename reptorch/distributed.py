"""Several processes, one run: `torch.distributed` under `torchrun` (design principle 8).

A wrapper, not a fork: training and evaluation run the same code with one process or many, and
`Group` holds the few points where processes meet.

- `setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
  joins the default process group: NCCL when the process computes on a GPU (cuda:LOCAL_RANK),
  gloo on CPUs. Without torchrun it returns `LOCAL`, a group of one that never communicates.
- A meta-batch: every process draws the same T tasks from the same seeded generator and runs
  `share(T)` of them (contiguous, sizes differing by at most one); `task_mean` adds the
  processes' float64 sums of per-task results and task counts in one flat all-reduce, so
  D = (sum over all tasks of update_i) / T whatever the shares (2 processes, T = 5: 3 and 2
  tasks, weighted by count). The float64 sum of a few float32 values is exact, so the result is
  the one process's `tree.batch_mean` bit for bit, for any number of processes.
- Evaluation: the seeded task list is shared the same way; `gather_rows` collects the results
  in task order.
- `agree` stops every process with a one-line `ConfigError` when one disagrees on a setting;
  `from_main` runs a step on rank 0 alone (reading the run directory) and hands every process
  its result, or its error.
- Every collective runs under the group's timeout: a process that died or hangs turns the wait
  into a one-line `DistributedError` (gloo; NCCL's watchdog aborts the process after the same
  timeout), and torchrun restarts the group under `--max-restarts`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from reptorch import tree
from reptorch.errors import ConfigError, ReptorchError
from reptorch.tree import Params

DEFAULT_TIMEOUT = 600.0  # seconds a process waits for the others (data loading included)
TIMEOUT_VARIABLE = "REPTORCH_DIST_TIMEOUT"
T = TypeVar("T")


class DistributedError(ReptorchError):
    """The other processes did not answer in time, or one of them died."""


@dataclass(frozen=True)
class Group:
    """This process's place among the processes of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no process group
    timeout: float = DEFAULT_TIMEOUT

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and progress."""
        return self.rank == 0

    @property
    def device(self) -> str | None:
        """The GPU this process computes on (from LOCAL_RANK), if NCCL."""
        return f"cuda:{self.local_rank}" if self.backend == "nccl" else None

    def share(self, count: int) -> range:
        """This process's items among `count`: contiguous, the first `count % size` get one more."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def task_mean(self, batched: Params) -> Params:
        """Mean over every process's tasks of a batched tree (T_r tasks here): one all-reduce of
        the float64 sums and the count; equal to `tree.batch_mean` over all T tasks."""
        if self.size == 1:
            return tree.batch_mean(batched)
        first = next(iter(batched.values()))
        count = first.new_full((1,), first.shape[0], dtype=torch.float64)
        sums = [value.double().sum(0) for value in batched.values()]
        *sums, total = self.all_sum([*sums, count], "the meta-batch's task updates")
        return {
            name: s.div(total).to(value.dtype)
            for (name, value), s in zip(batched.items(), sums, strict=True)
        }

    def all_sum(self, tensors: Sequence[torch.Tensor], what: str) -> list[torch.Tensor]:
        """Element-wise sums over the processes, one flat all-reduce per dtype and device."""
        if self.size == 1:
            return list(tensors)
        out: list[torch.Tensor] = list(tensors)
        kinds: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, t in enumerate(tensors):
            kinds.setdefault((t.dtype, t.device), []).append(i)
        for members in kinds.values():
            flat = torch.cat([tensors[i].reshape(-1) for i in members])
            self._call(what, dist.all_reduce, flat)
            for i, piece in zip(members, flat.split([tensors[i].numel() for i in members])):
                out[i] = piece.view(tensors[i].shape)
        return out

    def gather_rows(self, rows: torch.Tensor, what: str) -> torch.Tensor:
        """Every process's rows (its `share` of a list), concatenated in rank order, so in the
        list's order, on every process; exact (pickled tensors), a process may have none."""
        if self.size == 1:
            return rows
        everyone: list[Any] = [None] * self.size
        self._call(what, dist.all_gather_object, everyone, rows.cpu())
        return torch.cat([part for part in everyone if part.shape[0] > 0])

    def agree(self, what: str, values: dict[str, Any]) -> None:
        """Every process holds the same `values`, else a `ConfigError` naming rank and field."""
        if self.size == 1:
            return
        everyone: list[Any] = [None] * self.size
        self._call(what, dist.all_gather_object, everyone, values)
        reference = everyone[0]
        for rank, theirs in enumerate(everyone[1:], start=1):
            for key in sorted(set(reference) | set(theirs)):
                if reference.get(key) != theirs.get(key):
                    raise shared(
                        ConfigError(
                            f"rank {rank} disagrees with rank 0 on the {what}: {key}="
                            f"{theirs.get(key)!r} there, {reference.get(key)!r} on rank 0; start "
                            f"every process with the same flags and version"
                        )
                    )

    def from_main(self, step: Callable[[], T], what: str) -> T:
        """`step()` run on rank 0 alone; every process gets its result or raises its error."""
        if self.size == 1:
            return step()
        box: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("ok", step())
            except ReptorchError as failure:
                error, box[0] = failure, ("error", type(failure), str(failure))
            except Exception as failure:  # rank 0 crashes; the others stop with a line
                error, box[0] = failure, ("error", DistributedError, f"rank 0 failed: {failure}")
        self._call(what, dist.broadcast_object_list, box, 0)
        if error is not None:
            raise error
        if box[0][0] == "error":
            raise shared(box[0][1](box[0][2]))
        return box[0][1]

    def _call(self, what: str, collective: Callable[..., Any], *args: Any) -> Any:
        try:
            return collective(*args)
        except RuntimeError as error:  # gloo: a timeout, or a peer's closed connection
            cause = _first_sentence(str(error)) or type(error).__name__
            if "timed out" in cause.lower():
                happened = (
                    f"no answer from the other processes ({what}) within the {self.timeout:g} s "
                    f"timeout (--dist-timeout): one of them hangs or died"
                )
            else:
                happened = f"lost the other processes ({what}): one of them died"
            raise DistributedError(
                f"rank {self.rank}: {happened}; see its output (torchrun --max-restarts K "
                f"restarts the group from the last checkpoint) [{cause}]"
            ) from None


LOCAL = Group()


def _first_sentence(message: str) -> str:
    """gloo's message without its source location: '[.../pair.cc:537] Read error ...'."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", message.strip().splitlines()[0] if message else "")
    return text.split(". ")[0]


def shared(error: ReptorchError) -> ReptorchError:
    """Marks an error every process raises alike: rank 0 alone prints it (`reptorch.cli`)."""
    error.shared = True  # type: ignore[attr-defined]
    return error


def timeout_seconds(flag: float | None = None) -> float:
    """--dist-timeout, else $REPTORCH_DIST_TIMEOUT, else `DEFAULT_TIMEOUT`."""
    value: Any = flag if flag is not None else os.environ.get(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(
            f"distributed timeout {value!r} (--dist-timeout or ${TIMEOUT_VARIABLE}): give a "
            f"positive number of seconds"
        )
    return seconds


def launched() -> bool:
    """True in a process started by torchrun (or any launcher setting RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str | None = None, timeout: float | None = None) -> Group:
    """Joins torchrun's process group (NCCL on a GPU, gloo on CPUs); `LOCAL` without torchrun.

    device: the requested torch device; a CUDA device (or None on a machine with GPUs) becomes
    cuda:LOCAL_RANK, one GPU per process.
    """
    seconds = timeout_seconds(timeout)
    if not launched():
        return Group(timeout=seconds)
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ConfigError(
            f"RANK={os.environ['RANK']!r}, WORLD_SIZE={os.environ['WORLD_SIZE']!r}, LOCAL_RANK="
            f"{os.environ.get('LOCAL_RANK')!r}: integers expected; start with torchrun"
        ) from None
    wants_gpu = device.startswith("cuda") if device else torch.cuda.is_available()
    backend = "nccl" if wants_gpu and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank}: this machine has {torch.cuda.device_count()} GPU(s); "
                f"start at most that many processes per node (--nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        wait = timedelta(seconds=seconds)
        store = _attempt_store(wait)
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=wait)
    return Group(rank, size, local_rank, backend, seconds)


def _attempt_store(timeout: timedelta) -> dist.Store:
    """torchrun's key-value store (env://), under a prefix of this restart of the group.

    torchrun keeps one store across the restarts of a group (--max-restarts), and the process
    group's keys carry no attempt number: a restarted gloo group read its dead predecessor's
    addresses and failed ('connectFullMesh failed ... Connection refused').
    """
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"reptorch/attempt-{attempt}", store)


def device_for(group: Group, requested: str) -> str:
    """The device a process computes on: cuda:LOCAL_RANK for a CUDA request under NCCL."""
    if group.device is not None and requested.startswith("cuda"):
        return group.device
    return requested


def close() -> None:
    """Leaves the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
