"""Mini-ImageNet's layouts: where the data is, and which images each split holds (no decoding).

`locate_miniimagenet` finds one of the four layouts (`folders`, `csv`, `pickle`, `zip`; see
`reptorch.data.miniimagenet`); `scan_folders`, `scan_csv` and `scan_zip` list every split's
classes and images, sorted by name, as an `Inventory` that `reptorch.data.miniimagenet` decodes.
"""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path

from reptorch.data.images import ImageSource, ZipReader, file_source, is_image_name
from reptorch.errors import DataError

NAME = "miniimagenet"
SPLITS = ("train", "val", "test")
LAYOUTS = ("folders", "csv", "pickle", "zip")
PICKLE_NAME = "mini-imagenet-cache-{split}.pkl"

Inventory = dict[str, dict[str, list[ImageSource]]]  # split -> wnid -> images, sorted by name

# ---------------------------------------------------------------------------------------------
# Finding the data


def _zip_layout(path: Path) -> bool | None:
    """True if the zip holds `[top/]{train,val,test}/<wnid>/<image>`, None if it is unreadable."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(_split_parts(name) is not None for name in archive.namelist())
    except (OSError, ValueError, zipfile.BadZipFile):
        return None


def _split_parts(member: str) -> tuple[str, str, str, str] | None:
    """(prefix, split, wnid, file) for a zip member inside a split folder, else None."""
    parts = member.split("/")
    for i in range(len(parts) - 2):
        if parts[i] in SPLITS and len(parts) == i + 3:
            return "/".join(parts[:i]), parts[i], parts[i + 1], parts[i + 2]
    return None


def _layouts_in(directory: Path, bad_zips: list[Path]) -> list[tuple[str, Path]]:
    """Every layout found in `directory`, in order of preference, with its main path."""
    if not directory.is_dir():
        return []
    found: list[tuple[str, Path]] = []
    if any((directory / split).is_dir() for split in SPLITS):
        found.append(("folders", directory))
    if (directory / "images").is_dir() and any((directory / f"{s}.csv").is_file() for s in SPLITS):
        found.append(("csv", directory))
    if any((directory / PICKLE_NAME.format(split=s)).is_file() for s in SPLITS):
        found.append(("pickle", directory))
    for path in sorted(directory.glob("*.zip")):
        usable = _zip_layout(path)
        if usable:
            found.append(("zip", path))
            break
        if usable is None:
            bad_zips.append(path)
    return found


def locate_miniimagenet(root: Path, layout: str | None = None) -> tuple[str, Path]:
    """(layout, path): the layout found in `<root>/miniimagenet/`, else in `root` itself.

    `root` may also be a zip file. Where several layouts are present the order of preference is
    folders, csv, pickle, zip; with `layout` given only that layout is accepted.
    """
    root = Path(root).expanduser()
    if layout is not None and layout not in LAYOUTS:
        raise DataError(f"unknown Mini-ImageNet layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    bad_zips: list[Path] = []
    if root.is_file() and root.suffix.lower() == ".zip":
        candidates = [root]
        usable = _zip_layout(root)
        if usable is None:
            bad_zips.append(root)
        found = [("zip", root)] if usable else []
    else:
        candidates = [root / NAME, root]
        found = [f for directory in candidates for f in _layouts_in(directory, bad_zips)]
    for item in found:
        if layout is None or item[0] == layout:
            return item
    hint = "".join(f"; {z} is not a readable zip (re-download it)" for z in bad_zips)
    raise DataError(
        f"Mini-ImageNet ({layout or 'any layout'}) not found in "
        f"{' or '.join(str(c) for c in candidates)}: expected train/ val/ test/ class folders, "
        "images/ + train.csv val.csv test.csv, mini-imagenet-cache-{train,val,test}.pkl, or a "
        f".zip of the class folders{hint}; place the data there or pass the folder that holds it"
    )


# ---------------------------------------------------------------------------------------------
# Listing the images of each layout (cheap: no decoding)


def _class_images(class_dir: Path) -> list[ImageSource]:
    names = sorted(n for n in os.listdir(class_dir) if is_image_name(n))
    if not names:
        raise DataError(
            f"{class_dir} is an empty class folder (no .jpg/.jpeg/.png images): "
            "re-download the class or delete the folder"
        )
    return [file_source(class_dir / n) for n in names]


def scan_folders(directory: Path) -> Inventory:
    inventory: Inventory = {}
    for split in SPLITS:
        split_dir = directory / split
        classes: dict[str, list[ImageSource]] = {}
        if split_dir.is_dir():
            for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
                if entry.is_dir() and not entry.name.startswith("."):
                    classes[entry.name] = _class_images(Path(entry.path))
        inventory[split] = classes
    return inventory


def _read_split_csv(path: Path) -> dict[str, list[str]]:
    """wnid -> file names listed in one of Ravi's split files."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} ({err}): re-download it") from None
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise DataError(f"{path} does not start with the header 'filename,label': re-download it")
    classes: dict[str, list[str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[0] or not row[1]:
            raise DataError(f"{path}, line {line}: expected 'filename,label', found {row!r}")
        classes.setdefault(row[1].strip(), []).append(row[0].strip())
    return classes


def scan_csv(directory: Path) -> Inventory:
    images_dir = directory / "images"
    present = set(os.listdir(images_dir))
    inventory: Inventory = {}
    for split in SPLITS:
        path = directory / f"{split}.csv"
        classes: dict[str, list[ImageSource]] = {}
        if path.is_file():
            for wnid, names in sorted(_read_split_csv(path).items()):
                found = sorted(n for n in names if n in present)
                if found:  # absent files are counted as missing by the integrity check
                    classes[wnid] = [file_source(images_dir / n) for n in found]
        inventory[split] = classes
    return inventory


def scan_zip(path: Path) -> tuple[Inventory, ZipReader]:
    reader = ZipReader(path)
    members: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    prefixes: set[str] = set()
    for member in reader.names():
        parts = _split_parts(member)
        if parts is None:
            continue
        prefix, split, wnid, name = parts
        prefixes.add(prefix)
        files = members[split].setdefault(wnid, [])  # a folder entry ("wnid/") lists no file
        if name and is_image_name(name):
            files.append(member)
    if len(prefixes) > 1:
        raise DataError(
            f"{path} holds split folders under several top folders ({', '.join(sorted(prefixes))})"
            ": keep one copy in the zip"
        )
    inventory: Inventory = {}
    for split in SPLITS:
        classes: dict[str, list[ImageSource]] = {}
        for wnid, files in sorted(members[split].items()):
            if not files:
                raise DataError(
                    f"{path}: class folder {split}/{wnid} is empty: re-download the archive"
                )
            classes[wnid] = [reader.source(m) for m in sorted(files, key=base_name)]
        inventory[split] = classes
    return inventory, reader


def base_name(member: str) -> str:
    return member.rsplit("/", 1)[-1]
