"""A decoded dataset cached as one uncompressed array file, keyed by its sources' fingerprints.

Decoding tens of thousands of PNG/JPEG files takes seconds to minutes; loading the decoded uint8
arrays back takes milliseconds. Every loader goes through `cached(...)`:

    splits = cached("omniglot", [bg_zip, eval_zip], build=lambda: decode(...))

- The key hashes the loader name, a format version, the loader's parameters and a fingerprint of
  each source (size, mtime and sha256 of a file's content; size and mtime of every file under a
  folder), so editing, replacing or adding a source rebuilds the cache automatically.
- The file is written atomically (temporary file in the same folder + `os.replace`): a crash or a
  concurrent writer never leaves a half-written cache that a later load would trust.
- Where: `cache_dir` if given; else beside the (first) source when that folder is writable; else
  `$REPTORCH_CACHE`; else `~/.cache/reptorch/cache`. A data folder may be read-only (CI mounts the
  shared data without write bits), so the cache must never be required to live beside it.
- A missing, stale or unreadable cache is rebuilt, never an error: the cache is only a speed-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from reptorch.data.dataset import ImageClassDataset
from reptorch.errors import DataError

CACHE_FORMAT = 1  # bump when the file layout below changes
_FULL_HASH_LIMIT = 256 * 2**20  # files above this are hashed on samples (start, middle, end)
_SAMPLE = 4 * 2**20


def default_cache_dirs(sources: Sequence[Path]) -> list[Path]:
    """Candidate cache folders, best first: beside the data, `$REPTORCH_CACHE`, the user cache."""
    dirs: list[Path] = []
    if sources:
        first = Path(sources[0])
        dirs.append(first if first.is_dir() else first.parent)
    env = os.environ.get("REPTORCH_CACHE")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path.home() / ".cache" / "reptorch" / "cache")
    return dirs


def writable_target(directory: Path) -> None:
    """Creates `directory` (a download's destination) if needed; a `DataError` naming it when it
    cannot be created or is read-only."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"cannot create {directory} ({err.strerror}): choose another --data-dir"
        ) from None
    if not is_writable_dir(directory):
        raise DataError(f"{directory} is read-only: choose another --data-dir")


def is_writable_dir(directory: Path) -> bool:
    """True if `directory` exists, is writable and has a write bit set.

    The write bits are checked as well as `os.access`: root may write anywhere, but a folder
    whose owner removed every write bit (a shared, read-only data copy) is meant to stay as is.
    """
    try:
        mode = os.stat(directory).st_mode
    except OSError:
        return False
    bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    return stat.S_ISDIR(mode) and bool(mode & bits) and os.access(directory, os.W_OK)


def _file_digest(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
        else:
            for start in (0, size // 2, size - _SAMPLE):
                handle.seek(start)
                digest.update(handle.read(_SAMPLE))
    return digest.hexdigest()


def fingerprint(path: Path) -> dict[str, object]:
    """What identifies a source's content: a file's size, mtime and hash; a folder's listing."""
    path = Path(path)
    if path.is_dir():
        entries = []
        for root, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                if ".reptorch-cache.npz" in name:  # our own cache and its temp files
                    continue
                stat = os.stat(os.path.join(root, name))
                rel = os.path.relpath(os.path.join(root, name), path)
                entries.append((rel, stat.st_size, stat.st_mtime_ns))
        listing = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
        return {"path": str(path.resolve()), "kind": "dir", "listing": listing}
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "kind": "file",
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": _file_digest(path, stat.st_size),
    }


def cache_key(name: str, sources: Sequence[Path], params: Mapping[str, object] | None) -> str:
    """A hex digest of everything the decoded arrays depend on."""
    blob = {
        "format": CACHE_FORMAT,
        "name": name,
        "params": dict(params or {}),
        "sources": [fingerprint(Path(s)) for s in sources],
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(name: str, sources: Sequence[Path], cache_dir: Path) -> Path:
    """One file per (loader name, source locations); the content key is checked inside it."""
    where = hashlib.sha256("\n".join(str(Path(s).resolve()) for s in sources).encode())
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    return Path(cache_dir) / f".{safe}-{where.hexdigest()[:12]}.reptorch-cache.npz"


def save_splits(path: Path, key: str, splits: Mapping[str, ImageClassDataset]) -> None:
    """Write `splits` to `path` atomically (temp file + rename); raises OSError if not writable."""
    meta = {"key": key, "format": CACHE_FORMAT, "splits": {}}
    arrays: dict[str, np.ndarray] = {}
    for i, (split, data) in enumerate(splits.items()):
        meta["splits"][split] = {"index": i, "class_names": list(data.class_names)}
        arrays[f"images_{i}"] = data.images.numpy()
        arrays[f"offsets_{i}"] = data.class_offsets.numpy()
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the cache from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_splits_file(path: Path, key: str) -> dict[str, ImageClassDataset] | None:
    """The cached splits if `path` holds a complete cache for `key`, else None."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes().decode())
            if meta.get("key") != key or meta.get("format") != CACHE_FORMAT:
                return None
            splits = {}
            for split, info in meta["splits"].items():
                i = info["index"]
                splits[split] = ImageClassDataset(
                    images=torch.from_numpy(archive[f"images_{i}"]),
                    class_offsets=torch.from_numpy(archive[f"offsets_{i}"]),
                    class_names=tuple(info["class_names"]),
                )
            return splits
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
        return None


def cached(
    name: str,
    sources: Sequence[Path],
    build: Callable[[], dict[str, ImageClassDataset]],
    cache_dir: Path | None = None,
    params: Mapping[str, object] | None = None,
) -> dict[str, ImageClassDataset]:
    """`build()`'s splits, from the cache when it matches the sources, else built and cached.

    `params` are the loader options the decoded arrays depend on (image size, ...); they enter
    the key. With `cache_dir` given only that folder is used; otherwise the first writable of
    `default_cache_dirs(sources)`. If no folder is writable the splits are returned uncached.
    """
    key = cache_key(name, sources, params)
    dirs = [Path(cache_dir)] if cache_dir is not None else default_cache_dirs(sources)
    for directory in dirs:
        hit = load_splits_file(cache_path(name, sources, directory), key)
        if hit is not None:
            return hit
    splits = build()
    for directory in dirs:
        if directory.exists() and not is_writable_dir(directory):
            continue  # a read-only data folder: never write beside the data there
        try:
            save_splits(cache_path(name, sources, directory), key, splits)
            break
        except OSError:
            continue
    return splits
