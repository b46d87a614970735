"""Omniglot (Lake et al. 2015): 1623 characters x 20 drawings, decoded exactly as the reference.

Layouts read, in `<root>/omniglot/`, first match wins:
1. `images_background.zip` + `images_evaluation.zip` (the official archives, any image size);
2. the same extracted: `images_background/<Alphabet>/characterNN/*.png` (+ evaluation);
3. one folder of alphabet folders, `<Alphabet>/characterNN/*.png` (what the reference's
   `fetch_data.sh` leaves; it has no background/evaluation split, only the reference split).

Decoding is the reference's `Image.open(f).resize((28, 28))` on the 1-bit image (Pillow resizes
mode "1" with nearest neighbour), stored as uint8 0/255 so `images / 255` is the reference's 0/1
float with background 1.0. Characters are ordered by (alphabet, character) name and images by
file name, so every layout gives the same pool and a seed gives the same split everywhere.
"""

from __future__ import annotations

import io
import os
import random
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from reptorch.data.cache import cached
from reptorch.data.dataset import ImageClassDataset
from reptorch.data.roots import dataset_dir
from reptorch.errors import ConfigError, DataError

PARTS: dict[str, str] = {"background": "images_background", "evaluation": "images_evaluation"}
# (alphabets, characters, images) of each official part, and of the pool of both.
EXPECTED: dict[str, tuple[int, int, int]] = {
    "background": (30, 964, 19280),
    "evaluation": (20, 659, 13180),
    "all": (50, 1623, 32460),
}
IMAGES_PER_CHARACTER = 20
IMAGE_SIZE = 28
REFERENCE_TRAIN_CLASSES = 1200
SPLITS = ("reference", "official")
DOWNLOAD_HINT = "run `reptorch data download omniglot`"
FORCE_HINT = "run `reptorch data download omniglot --force`"


def fetch_hint(directory: Path) -> str:
    """The command that puts Omniglot into `directory` (a `<root>/omniglot` folder)."""
    return f"run `reptorch data download omniglot --data-dir {directory.parent}`"


_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")


@dataclass(frozen=True)
class OmniglotSources:
    """The files found in one Omniglot folder: part name -> zip file or image folder."""

    directory: Path
    layout: str  # "zip", "folders" or "reference"
    paths: dict[str, Path]  # {"background": ..., "evaluation": ...} or {"all": folder}


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX")


def find_sources(directory: Path) -> OmniglotSources:
    """Which layout `directory` holds; a `DataError` naming the paths searched if none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(
            f"Omniglot not found: {directory} does not exist; {fetch_hint(directory)} "
            f"(or put images_background.zip and "
            f"images_evaluation.zip there)"
        )
    zips = {part: directory / f"{stem}.zip" for part, stem in PARTS.items()}
    folders = {part: directory / stem for part, stem in PARTS.items()}
    paths: dict[str, Path] = {}
    for part in PARTS:
        if zips[part].is_file():
            paths[part] = zips[part]
        elif folders[part].is_dir():
            paths[part] = folders[part]
    if len(paths) == len(PARTS):
        layout = "zip" if all(p.suffix == ".zip" for p in paths.values()) else "folders"
        return OmniglotSources(directory, layout, paths)
    if paths:
        missing = next(PARTS[p] for p in PARTS if p not in paths)
        raise DataError(
            f"{directory} has {', '.join(p.name for p in paths.values())} but not {missing}.zip "
            f"(or the extracted {missing}/ folder): {fetch_hint(directory)}"
        )
    alphabets = [p for p in directory.iterdir() if p.is_dir() and not _hidden(p.name)]
    if alphabets:
        return OmniglotSources(directory, "reference", {"all": directory})
    raise DataError(
        f"Omniglot not found in {directory}: expected images_background.zip and "
        f"images_evaluation.zip (or their extracted folders, or <Alphabet>/<character>/*.png); "
        f"{fetch_hint(directory)}"
    )


def _bad_bytes(data: bytes) -> str | None:
    if not data:
        return "is empty (0 bytes)"
    head = data[:512].lstrip().lower()
    if head.startswith(_HTML_MARKERS) or b"<html" in head:
        return "is an HTML page, not a PNG (an error page saved under the image's name)"
    return None


def decode_png(data: bytes, name: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """One Omniglot image as uint8 (size, size), 0 = ink, 255 = background, as the reference."""
    reason = _bad_bytes(data)
    if reason is not None:
        raise DataError(f"{name} {reason}: re-download Omniglot ({FORCE_HINT})")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now, so a truncated file fails here
            if img.mode != "1":
                raise DataError(
                    f"{name} has image mode {img.mode!r}, expected 1-bit ('1') as in the "
                    f"official Omniglot archives: re-download them ({FORCE_HINT})"
                )
            # The reference's exact call: Pillow resizes mode "1" with nearest neighbour.
            pixels = np.asarray(img.resize((size, size)), dtype=bool)
    except UnidentifiedImageError:
        raise DataError(f"{name} is not an image Pillow can read: re-download Omniglot") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{name} is truncated or corrupt ({err}): re-download Omniglot") from None
    return pixels.astype(np.uint8) * 255


def _layout_error(where: str, detail: str) -> DataError:
    return DataError(
        f"{where}: {detail}; expected <Alphabet>/<character>/*.png (optionally under one top "
        f"folder such as images_background/): {DOWNLOAD_HINT}"
    )


def zip_entries(path: Path) -> tuple[zipfile.ZipFile, list[tuple[str, str, str]]]:
    """Open an Omniglot zip and list its images as (alphabet, character, member), sorted."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror}): check its permissions") from None
    reason = _bad_bytes(head)
    if reason is not None and reason.startswith("is an HTML"):
        raise DataError(
            f"{path} is an HTML page, not a zip (a failed download): delete it and {DOWNLOAD_HINT}"
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(
            f"{path} is not a valid zip ({err}; truncated download?): delete it and {DOWNLOAD_HINT}"
        ) from None
    entries: list[tuple[str, str, str]] = []
    empty_dirs: set[tuple[str, ...]] = set()
    depths: set[int] = set()
    for member in archive.namelist():
        parts = [p for p in member.split("/") if p]
        if not parts or any(_hidden(p) for p in parts):
            continue
        if member.endswith("/"):
            empty_dirs.add(tuple(parts))
            continue
        if not parts[-1].lower().endswith(".png"):
            continue
        if len(parts) not in (3, 4):
            archive.close()
            raise _layout_error(f"{path}:{member}", "image at an unexpected depth")
        depths.add(len(parts))
        entries.append((parts[-3], parts[-2], member))
    if not entries:
        archive.close()
        raise _layout_error(str(path), "the zip holds no PNG images")
    if len(depths) > 1 or (4 in depths and len({m.split("/")[0] for *_, m in entries}) > 1):
        archive.close()
        raise _layout_error(str(path), "images under several top folders or at mixed depths")
    characters = {(a, c) for a, c, _ in entries}
    for d in sorted(empty_dirs):
        if len(d) == max(depths) - 1 and (d[-2], d[-1]) not in characters:
            archive.close()
            raise DataError(f"empty class folder {path}:{'/'.join(d)}/: re-download Omniglot")
    return archive, sorted(entries)


def _zip_images(path: Path, size: int) -> tuple[list[str], list[int], np.ndarray]:
    archive, entries = zip_entries(path)
    out = np.empty((len(entries), size, size), dtype=np.uint8)
    with archive:
        for i, (_, _, member) in enumerate(entries):
            name = f"{path}:{member}"
            try:
                data = archive.read(member)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
                raise DataError(
                    f"{name} cannot be read ({err}; truncated or corrupt zip): delete "
                    f"{path} and {DOWNLOAD_HINT}"
                ) from None
            out[i] = decode_png(data, name, size)
    return _group([(a, c) for a, c, _ in entries], out)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name))


def _pngs(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not _hidden(p.name) and p.suffix.lower() == ".png"
    )


def _folder_images(folder: Path, size: int) -> tuple[list[str], list[int], np.ndarray]:
    alphabets = _visible_dirs(folder)
    if _pngs(folder) or not alphabets:
        raise _layout_error(str(folder), "no alphabet folders (or images directly inside)")
    keys: list[tuple[str, str]] = []
    files: list[Path] = []
    for alphabet in alphabets:
        characters = _visible_dirs(alphabet)
        if _pngs(alphabet) or not characters:
            raise _layout_error(str(alphabet), "no character folders (or images directly inside)")
        for character in characters:
            pngs = _pngs(character)
            if not pngs:
                raise DataError(
                    f"empty class folder {character}: delete it or re-extract Omniglot "
                    f"({FORCE_HINT})"
                )
            keys.extend((alphabet.name, character.name) for _ in pngs)
            files.extend(pngs)
    out = np.empty((len(files), size, size), dtype=np.uint8)
    for i, file in enumerate(files):
        try:
            data = file.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read {file} ({err.strerror}): fix or delete it") from None
        out[i] = decode_png(data, str(file), size)
    return _group(keys, out)


def _group(
    keys: Sequence[tuple[str, str]], images: np.ndarray
) -> tuple[list[str], list[int], np.ndarray]:
    """Class names and sizes of consecutive runs of equal (alphabet, character) keys."""
    names: list[str] = []
    sizes: list[int] = []
    for key in keys:
        name = f"{key[0]}/{key[1]}"
        if names and names[-1] == name:
            sizes[-1] += 1
        else:
            names.append(name)
            sizes.append(1)
    return names, sizes, images


def read_part(path: Path, size: int = IMAGE_SIZE) -> ImageClassDataset:
    """Decode one zip or folder of `<Alphabet>/<character>/*.png` (class names "Alphabet/char")."""
    path = Path(path)
    if path.is_dir():
        names, sizes, images = _folder_images(path, size)
    elif path.is_file():
        names, sizes, images = _zip_images(path, size)
    else:
        raise DataError(f"{path} does not exist: {DOWNLOAD_HINT}")
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(sizes, dtype=torch.int64).cumsum(0)
    return ImageClassDataset(torch.from_numpy(images).unsqueeze(1), offsets, tuple(names))


def load_parts(
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: Path | None = None,
    size: int = IMAGE_SIZE,
) -> tuple[OmniglotSources, dict[str, ImageClassDataset]]:
    """The decoded parts ("background"/"evaluation", or "all"), from the cache when valid."""
    sources = find_sources(dataset_dir("omniglot", data_dir))
    keys = list(sources.paths)
    parts = cached(
        "omniglot",
        [sources.paths[k] for k in keys],
        build=lambda: {k: read_part(sources.paths[k], size) for k in keys},
        cache_dir=cache_dir,
        params={"layout": sources.layout, "parts": keys, "size": size},
    )
    return sources, parts


def part_counts(data: ImageClassDataset) -> tuple[int, int, int]:
    """(alphabets, characters, images) of one part."""
    alphabets = {name.split("/")[0] for name in data.class_names}
    return len(alphabets), data.num_classes, len(data)


def verify_parts(parts: dict[str, ImageClassDataset]) -> list[str]:
    """Every difference from the official Omniglot counts, one line each (empty: complete)."""
    problems = []
    for part, data in parts.items():
        got = part_counts(data)
        expected = EXPECTED[part]
        label = PARTS.get(part, "omniglot")
        for what, g, e in zip(("alphabets", "characters", "images"), got, expected, strict=True):
            if g != e:
                problems.append(f"{label}: {g} {what}, expected {e}")
        for name, count in zip(data.class_names, data.class_sizes.tolist(), strict=True):
            if count != IMAGES_PER_CHARACTER:
                problems.append(f"{label}/{name}: {count} images, expected {IMAGES_PER_CHARACTER}")
    return problems


def select_classes(data: ImageClassDataset, classes: Iterable[int]) -> ImageClassDataset:
    """A dataset of the given classes of `data`, in the given order."""
    idx = torch.as_tensor(list(classes), dtype=torch.int64)
    starts, sizes = data.class_offsets[idx], data.class_sizes[idx]
    offsets = torch.zeros(len(idx) + 1, dtype=torch.int64)
    offsets[1:] = sizes.cumsum(0)
    within = torch.arange(int(offsets[-1])) - torch.repeat_interleave(offsets[:-1], sizes)
    rows = torch.repeat_interleave(starts, sizes) + within
    names = tuple(data.class_names[i] for i in idx.tolist())
    return ImageClassDataset(data.images[rows], offsets, names)


def pool_parts(parts: dict[str, ImageClassDataset]) -> ImageClassDataset:
    """All characters in one dataset, ordered by (alphabet, character) name as the reference."""
    if len(parts) == 1:
        return next(iter(parts.values()))
    images = torch.cat([p.images for p in parts.values()])
    sizes = torch.cat([p.class_sizes for p in parts.values()])
    names = tuple(n for p in parts.values() for n in p.class_names)
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    offsets[1:] = sizes.cumsum(0)
    merged = ImageClassDataset(images, offsets, names)
    order = sorted(range(len(names)), key=names.__getitem__)
    return select_classes(merged, order)


def rotate_classes(
    data: ImageClassDataset, quarters: Sequence[int] = (0, 1, 2, 3)
) -> ImageClassDataset:
    """Each class once per rotation (`torch.rot90` by q quarter turns), as a separate class.

    Classes are ordered character-major (c0 rot0, c0 rot90, ..., c1 rot0, ...) as the
    reference's `augment_dataset`; rotating the 1-bit images by multiples of 90 degrees is exact.
    """
    n, r = data.num_classes, len(quarters)
    sizes = data.class_sizes.repeat_interleave(r)  # (n * r,), class-major
    offsets = torch.zeros(n * r + 1, dtype=torch.int64)
    offsets[1:] = sizes.cumsum(0)
    names = tuple(f"{name}/rot{90 * q:03d}" for name in data.class_names for q in quarters)
    if n and bool((data.class_sizes == data.class_sizes[0]).all()):  # one reshape, no gather
        per_class = data.images.reshape(n, -1, *data.image_shape)
        turns = [torch.rot90(per_class, q, dims=(-2, -1)) for q in quarters]
        images = torch.stack(turns, dim=1).reshape(-1, *data.image_shape)
        return ImageClassDataset(images, offsets, names)
    rotated = torch.stack([torch.rot90(data.images, q, dims=(-2, -1)) for q in quarters])
    which = torch.arange(r).repeat(n).repeat_interleave(sizes)
    starts = data.class_offsets[:-1].repeat_interleave(r).repeat_interleave(sizes)
    within = torch.arange(int(offsets[-1])) - offsets[:-1].repeat_interleave(sizes)
    images = rotated[which, starts + within]
    return ImageClassDataset(images, offsets, names)


def reference_order(num_characters: int, seed: int) -> list[int]:
    """The reference's shuffle of the pooled characters: `random.seed(seed)`, `random.shuffle`.

    supervised-reptile's `split_dataset` shuffles the (alphabet, character)-sorted list with
    Python's global `random` seeded by `--seed` and takes the first 1200 to train. A private
    `random.Random(seed)` draws the same permutation (shuffle depends only on the list's length)
    without touching the caller's global state, so the 423 test characters of seed 0 are the
    paper's (`reference-split-seed0-test.txt` in the shared data).
    """
    order = list(range(num_characters))
    random.Random(seed).shuffle(order)
    return order


def split_omniglot(
    parts: dict[str, ImageClassDataset],
    split: str = "reference",
    seed: int = 0,
    val_classes: int = 0,
    train_classes: int = REFERENCE_TRAIN_CLASSES,
    rotate: bool = True,
) -> dict[str, ImageClassDataset]:
    """{"train", ["val",] "test"} class splits; rotations (x4 classes) on "train" only.

    reference: all characters shuffled with `seed`, the first `train_classes` (1200) train, the
    rest (423) test. official: background trains, evaluation tests. `val_classes` characters
    are carved from the training characters (before rotation) and kept unrotated.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown Omniglot split {split!r}: use one of {', '.join(SPLITS)}")
    generator = torch.Generator().manual_seed(seed)
    if split == "reference":
        pool = pool_parts(parts)
        if not 0 < train_classes < pool.num_classes:
            raise ConfigError(
                f"train_classes={train_classes} must be between 1 and {pool.num_classes - 1} "
                f"(the number of characters found minus one)"
            )
        order = reference_order(pool.num_classes, seed)
        train_idx, test = order[:train_classes], select_classes(pool, order[train_classes:])
        train_pool = pool
    else:
        if "background" not in parts:
            raise DataError(
                "the official split needs images_background and images_evaluation (zips or "
                "folders); this Omniglot folder has one pool of alphabets: use split='reference'"
            )
        train_pool, test = parts["background"], parts["evaluation"]
        train_idx = list(range(train_pool.num_classes))
    if not 0 <= val_classes < len(train_idx):
        raise ConfigError(
            f"val_classes={val_classes} must be between 0 and {len(train_idx) - 1} "
            f"(the {len(train_idx)} training characters)"
        )
    out: dict[str, ImageClassDataset] = {}
    if val_classes:
        if split == "official":  # carve a random subset; the reference order is random already
            perm = torch.randperm(len(train_idx), generator=generator).tolist()
            held = set(perm[len(train_idx) - val_classes :])
            val_idx = [i for i in train_idx if i in held]
            train_idx = [i for i in train_idx if i not in held]
        else:
            train_idx, val_idx = train_idx[:-val_classes], train_idx[-val_classes:]
        out["val"] = select_classes(train_pool, val_idx)
    train = select_classes(train_pool, train_idx)
    out["train"] = rotate_classes(train) if rotate else train
    out["test"] = test
    return {k: out[k] for k in ("train", "val", "test") if k in out}


def load_omniglot(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: str = "reference",
    seed: int = 0,
    val_classes: int = 0,
    train_classes: int = REFERENCE_TRAIN_CLASSES,
    rotate: bool = True,
    verify: bool = True,
    cache_dir: Path | None = None,
) -> dict[str, ImageClassDataset]:
    """Omniglot from `<root>/omniglot` split into {"train", ["val",] "test"}.

    With `verify` (default) anything but the complete official set (1623 x 20) is a `DataError`
    naming the first difference, so a half-extracted download never trains silently.
    """
    sources, parts = load_parts(data_dir, cache_dir)
    if verify:
        problems = verify_parts(parts)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DataError(
                f"incomplete Omniglot in {sources.directory}: {problems[0]}{more}; "
                f"{FORCE_HINT}, or see `reptorch data check omniglot`"
            )
    return split_omniglot(parts, split, seed, val_classes, train_classes, rotate)


def check_omniglot(
    data_dir: str | os.PathLike[str] | None = None, cache_dir: Path | None = None
) -> dict[str, object]:
    """A summary of the Omniglot found under the data root, for `reptorch data check`.

    Decodes every image once (later served from the cache), so corrupt files are found::

        {"dataset": "omniglot", "path": str, "layout": "zip" | "folders" | "reference" | None,
         "status": "ok" | "partial" | "missing" | "corrupt",
         "splits": {part: {"alphabets", "characters", "images", "expected_alphabets",
                           "expected_characters", "expected_images"}},
         "totals": {"alphabets", "characters", "images"}, "problems": [str, ...]}
    """
    directory = dataset_dir("omniglot", data_dir)
    summary: dict[str, object] = {
        "dataset": "omniglot",
        "path": str(directory),
        "layout": None,
        "status": "missing",
        "splits": {},
        "totals": {"alphabets": 0, "characters": 0, "images": 0},
        "problems": [],
    }
    try:
        sources = find_sources(directory)
    except DataError as err:
        summary["problems"] = [str(err)]
        return summary
    summary["layout"] = sources.layout
    try:
        _, parts = load_parts(data_dir, cache_dir)
    except DataError as err:
        summary.update(status="corrupt", problems=[str(err)])
        return summary
    splits = {}
    for part, data in parts.items():
        got, expected = part_counts(data), EXPECTED[part]
        splits[part] = {
            **dict(zip(("alphabets", "characters", "images"), got, strict=True)),
            **{
                f"expected_{k}": v
                for k, v in zip(("alphabets", "characters", "images"), expected, strict=True)
            },
        }
    totals = [sum(s[k] for s in splits.values()) for k in ("alphabets", "characters", "images")]
    problems = verify_parts(parts)
    summary.update(
        splits=splits,
        totals=dict(zip(("alphabets", "characters", "images"), totals, strict=True)),
        problems=problems,
        status="partial" if problems else "ok",
    )
    return summary
