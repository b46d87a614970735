"""Training metrics: a CSV file and TensorBoard event files (`train/`, `test/` or `val/`).

On resume from iteration t, rows and events at iterations >= t (written after the checkpoint by
a run that was then killed) are dropped, so the logs read as one uninterrupted run: the CSV is
rewritten without them and each `SummaryWriter` opens with `purge_step=t`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from reptorch.errors import CheckpointError
from reptorch.run.io import atomic_write_bytes

COLUMNS = ("iteration", "meta_step", "inner_loss", "train", "monitor", "seconds")


def _truncate_csv(path: Path, before: int) -> None:
    """Keeps the header and the rows whose iteration is < `before` (atomically)."""
    if not path.exists():
        return
    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("iteration", "").isdigit()]
    kept = [r for r in rows if int(r["iteration"]) < before]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(kept)
    atomic_write_bytes(path, out.getvalue().encode())


class MetricsLog:
    """`metrics.csv` plus TensorBoard scalars under `<dir>/train` and `<dir>/<monitor>`."""

    def __init__(self, directory: Path, monitor: str = "test", start_iteration: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when logging

        self.path = Path(directory) / "metrics.csv"
        self.monitor = monitor
        _truncate_csv(self.path, start_iteration)
        new = not self.path.exists()
        self._file = self.path.open("a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            self._csv.writeheader()
        purge = start_iteration if start_iteration > 0 else None
        self.writers = {
            name: SummaryWriter(str(Path(directory) / name), purge_step=purge)
            for name in ("train", monitor)
        }

    def log(self, iteration: int, **values: Any) -> None:
        """One CSV row; `train`/`monitor` values also go to their TensorBoard writers."""
        self._csv.writerow({"iteration": iteration, **values})
        self._file.flush()
        tag = "mse" if values.get("metric") == "mse" else "accuracy"
        for column, name in (("train", "train"), ("monitor", self.monitor)):
            if values.get(column) is not None:
                self.writers[name].add_scalar(tag, values[column], iteration)
        if values.get("inner_loss") is not None:
            self.writers["train"].add_scalar("inner_loss", values["inner_loss"], iteration)
        if values.get("meta_step") is not None:
            self.writers["train"].add_scalar("meta_step", values["meta_step"], iteration)

    def flush(self) -> None:
        self._file.flush()
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        self._file.close()
        for writer in self.writers.values():
            writer.close()


def read_metrics(directory: Path) -> dict[str, list[float]]:
    """The columns of a run's `metrics.csv` as float lists (`seconds` and all), in row order.

    A missing or unreadable file is a `CheckpointError` naming it."""
    path = Path(directory) / "metrics.csv"
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: give the run directory of `reptorch train --checkpoint DIR`"
        )
    columns: dict[str, list[float]] = {name: [] for name in COLUMNS}
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                values = [float(row[name]) for name in COLUMNS]
            except (KeyError, TypeError, ValueError) as error:
                raise CheckpointError(f"{path}, line {line}: unreadable ({error})") from None
            for name, value in zip(COLUMNS, values, strict=True):
                columns[name].append(value)
    if not columns["iteration"]:
        raise CheckpointError(f"{path} has no rows yet: train for at least one iteration")
    return columns


def training_seconds(run: Path) -> float:
    """Wall time of the run: the metrics log's `seconds` restart at 0 on every resume, so the
    total is the sum of each segment's last value (plus what ran after the last logged row)."""
    seconds = read_metrics(run)["seconds"]
    total, last = 0.0, 0.0
    for value in seconds:
        if value < last:
            total += last
        last = value
    return total + last
