"""Omniglot's files: the official layouts read into one dataset per part, decoded as the reference.

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
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from reptorch.data.cache import cached
from reptorch.data.dataset import ImageClassDataset
from reptorch.data.roots import dataset_dir
from reptorch.errors import DataError

PARTS: dict[str, str] = {"background": "images_background", "evaluation": "images_evaluation"}
# (alphabets, characters, images) of each official part, and of the pool of both.
EXPECTED: dict[str, tuple[int, int, int]] = {
    "background": (30, 964, 19280),
    "evaluation": (20, 659, 13180),
    "all": (50, 1623, 32460),
}
IMAGES_PER_CHARACTER = 20
IMAGE_SIZE = 28
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
