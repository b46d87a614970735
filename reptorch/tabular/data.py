"""Reading the KEEL tables: CSV -> typed columns -> a float matrix.

A table is a CSV with a header `x0,...,x{d-1},class`. A column is numeric when every value parses
as a float, else categorical (strings). `Encoder` turns rows into floats: numeric columns are
standardised, z = (x - mean) / std, categorical ones one-hot encoded. Its statistics come only from
the rows it is fitted on (meta-train classes, or an episode's support set), never from query rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reptorch.data.roots import dataset_dir
from reptorch.errors import DataError

KEEL_SUBDIR = Path("tabular") / "keel"
_MIN_STD = 1e-8


@dataclass(frozen=True)
class Column:
    """One feature column: numeric (float values) or categorical (string values)."""

    name: str
    numeric: bool
    values: np.ndarray  # float64 (numeric) or object (categorical), one per row


@dataclass(frozen=True)
class Table:
    """A classification table: feature columns and integer labels 0..C-1 (sorted class names)."""

    name: str
    columns: tuple[Column, ...]
    labels: np.ndarray  # int64, (rows,)
    class_names: tuple[str, ...]

    @property
    def rows(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_rows(self) -> list[np.ndarray]:
        """Row indices of each class, in class order."""
        return [np.flatnonzero(self.labels == c) for c in range(self.num_classes)]


def _as_float(values: list[str]) -> np.ndarray | None:
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return None


def read_table(path: Path, name: str | None = None) -> Table:
    """Parses one KEEL CSV; raises `DataError` naming the file and line on a malformed row."""
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = [row for row in reader if row]
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror})") from None
    if not header or header[-1] != "class" or len(header) < 2:
        raise DataError(f"{path}: the header must be x0,...,x<d-1>,class, got {header}")
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} values, the header has {len(header)}")
    if not rows:
        raise DataError(f"{path} has no rows")
    cells = list(zip(*rows))
    columns = []
    for col_name, raw in zip(header[:-1], cells[:-1]):
        numbers = _as_float(list(raw))
        if numbers is not None:
            columns.append(Column(col_name, True, numbers))
        else:
            columns.append(Column(col_name, False, np.array(raw, dtype=object)))
    class_names = tuple(sorted(set(cells[-1])))
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([index[c] for c in cells[-1]], dtype=np.int64)
    return Table(name or path.stem, tuple(columns), labels, class_names)


class Encoder:
    """Rows -> floats: numeric columns standardised, categorical ones one-hot.

    Fitted on a set of rows only: means, standard deviations and the category vocabulary come
    from those rows (a category unseen there encodes as all zeros; a constant column as 0).
    """

    def __init__(self, table: Table, rows: np.ndarray) -> None:
        if len(rows) == 0:
            raise ValueError("Encoder needs at least one row to fit on")
        self.table = table
        self.stats: list[tuple[float, float] | list[str]] = []
        for column in table.columns:
            values = column.values[rows]
            if column.numeric:
                mean, std = float(values.mean()), float(values.std())
                self.stats.append((mean, std if std > _MIN_STD else 1.0))
            else:
                self.stats.append(sorted(set(values.tolist())))

    @property
    def dim(self) -> int:
        return sum(1 if isinstance(s, tuple) else len(s) for s in self.stats)

    def transform(self, rows: np.ndarray) -> torch.Tensor:
        """(len(rows), dim) float32 features."""
        parts = []
        for column, stat in zip(self.table.columns, self.stats):
            values = column.values[rows]
            if isinstance(stat, tuple):
                mean, std = stat
                parts.append(((values - mean) / std)[:, None])
            else:
                onehot = np.zeros((len(rows), len(stat)))
                index = {c: i for i, c in enumerate(stat)}
                for r, v in enumerate(values.tolist()):
                    if v in index:
                        onehot[r, index[v]] = 1.0
                parts.append(onehot)
        return torch.from_numpy(np.concatenate(parts, axis=1)).float()


def keel_dir(data_dir: str | Path | None = None) -> Path:
    """`<root>/tabular/keel`, with the usual root rule (`--data-dir`, `$REPTORCH_DATA`, default;
    a root that is the `tabular/` folder itself is used as such)."""
    return dataset_dir(KEEL_SUBDIR.parent.name, data_dir) / KEEL_SUBDIR.name


def read_manifest(directory: Path) -> list[dict]:
    path = directory / "manifest.json"
    if not path.is_file():
        raise DataError(
            f"{path} not found: run `reptorch data download tabular` (or pass --data-dir "
            "pointing at the root that holds tabular/keel/)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from None


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_keel(
    data_dir: str | Path | None = None, names: list[str] | None = None, verify: bool = False
) -> dict[str, Table]:
    """The KEEL tables named in the manifest (or `names`), checked against its row, feature and
    class counts (and sha256 with `verify`)."""
    directory = keel_dir(data_dir)
    manifest = {entry["name"]: entry for entry in read_manifest(directory)}
    wanted = names if names is not None else sorted(manifest)
    tables = {}
    for name in wanted:
        if name not in manifest:
            raise DataError(f"table {name!r} is not in {directory / 'manifest.json'}")
        entry = manifest[name]
        path = directory / entry["file"]
        if not path.is_file():
            raise DataError(f"{path} missing: run `reptorch data download tabular`")
        if verify and sha256_file(path) != entry["sha256"]:
            raise DataError(f"{path} does not match its sha256 in the manifest: download it again")
        table = read_table(path, name)
        found = (table.rows, len(table.columns), table.num_classes)
        expected = (entry["rows"], entry["features"], entry["classes"])
        if found != expected:
            raise DataError(
                f"{path}: {found[0]} rows, {found[1]} features, {found[2]} classes; the manifest "
                f"says {expected[0]}, {expected[1]}, {expected[2]}: download it again"
            )
        tables[name] = table
    return tables
