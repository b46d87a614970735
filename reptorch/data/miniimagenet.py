"""Mini-ImageNet (Vinyals et al. 2016, Ravi & Larochelle split): 64/16/20 classes x 600 images.

Expected at `<root>/miniimagenet/` (or `root` itself) in any of the layouts found in the wild:

- `folders`: `train/`, `val/`, `test/` with one folder of `.jpg`/`.JPEG` per wnid (the reference
  code's layout), any image size;
- `csv`: Ravi's `images/` (all files in one folder) plus `train.csv`, `val.csv`, `test.csv`
  (`filename,label`);
- `pickle`: `mini-imagenet-cache-{train,val,test}.pkl` (`image_data` uint8 N x 84 x 84 x 3,
  `class_dict` wnid -> row indices), read with the restricted unpickler;
- `zip`: a `.zip` of the `folders` layout (optionally under one top folder), read in place.

Every layout gives the same result: classes sorted by wnid, images sorted by file name (pickle
rows by index), 84x84 RGB uint8, so pixels are identical across layouts of the same files.
Counts are checked against the Ravi split; `allow_partial=True` accepts an incomplete set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from reptorch.data.cache import cached
from reptorch.data.dataset import ImageClassDataset
from reptorch.data.images import decode_images
from reptorch.data.miniimagenet_layouts import (
    NAME,
    PICKLE_NAME,
    SPLITS,
    Inventory,
    locate_miniimagenet,
    scan_csv,
    scan_folders,
    scan_zip,
)
from reptorch.data.safe_pickle import safe_load
from reptorch.errors import DataError

IMAGES_PER_CLASS = 600
IMAGE_SIZE = (84, 84)
CACHE_VERSION = 1  # bump when decoding changes, so stale caches are rebuilt


def _wnids(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# The Ravi & Larochelle split (its train/val/test.csv), sorted: what a complete set holds.
SPLIT_CLASSES: dict[str, tuple[str, ...]] = {
    "train": _wnids(
        """n01532829 n01558993 n01704323 n01749939 n01770081 n01843383 n01910747 n02074367
        n02089867 n02091831 n02101006 n02105505 n02108089 n02108551 n02108915 n02111277
        n02113712 n02120079 n02165456 n02457408 n02606052 n02687172 n02747177 n02795169
        n02823428 n02966193 n03017168 n03047690 n03062245 n03207743 n03220513 n03337140
        n03347037 n03400231 n03476684 n03527444 n03676483 n03838899 n03854065 n03888605
        n03908618 n03924679 n03998194 n04067472 n04243546 n04251144 n04258138 n04275548
        n04296562 n04389033 n04435653 n04443257 n04509417 n04515003 n04596742 n04604644
        n04612504 n06794110 n07584110 n07697537 n07747607 n09246464 n13054560 n13133613"""
    ),
    "val": _wnids(
        """n01855672 n02091244 n02114548 n02138441 n02174001 n02950826 n02971356 n02981792
        n03075370 n03417042 n03535780 n03584254 n03770439 n03773504 n03980874 n09256479"""
    ),
    "test": _wnids(
        """n01930112 n01981276 n02099601 n02110063 n02110341 n02116738 n02129165 n02219486
        n02443484 n02871525 n03127925 n03146219 n03272010 n03544143 n03775546 n04146614
        n04149813 n04418357 n04522168 n07613480"""
    ),
}


# ---------------------------------------------------------------------------------------------
# Building the datasets


def _build_from_inventory(
    inventory: Inventory, workers: int | None
) -> dict[str, ImageClassDataset]:
    splits: dict[str, ImageClassDataset] = {}
    for split, classes in inventory.items():
        if not classes:
            continue
        names = sorted(classes)
        sources = [s for wnid in names for s in classes[wnid]]
        sizes = [len(classes[wnid]) for wnid in names]
        offsets = torch.tensor([0, *np.cumsum(sizes).tolist()], dtype=torch.int64)
        images = decode_images(sources, IMAGE_SIZE, channels=3, workers=workers)
        splits[split] = ImageClassDataset(images, offsets, tuple(names))
    return splits


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array {value.dtype} {tuple(value.shape)}"
    return type(value).__name__


def _pickle_split(path: Path) -> ImageClassDataset:
    """One split from a `mini-imagenet-cache-*.pkl`, validated before use."""
    data = safe_load(path)
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        raise DataError(
            f"{path} is not a Mini-ImageNet cache: expected a dict with 'image_data' and "
            f"'class_dict', found {_describe(data)}"
        )
    pixels, class_dict = data["image_data"], data["class_dict"]
    if (
        not isinstance(pixels, np.ndarray)
        or pixels.dtype != np.uint8
        or pixels.shape[1:] != (*IMAGE_SIZE, 3)
    ):
        raise DataError(
            f"{path}: 'image_data' must be a uint8 array N x 84 x 84 x 3, found {_describe(pixels)}"
        )
    if not isinstance(class_dict, dict):
        raise DataError(
            f"{path}: 'class_dict' must map wnid -> row indices, found {_describe(class_dict)}"
        )
    names = sorted(str(k) for k in class_dict)
    rows: list[np.ndarray] = []
    by_name = {str(k): v for k, v in class_dict.items()}
    for wnid in names:
        try:
            index = np.sort(np.asarray(by_name[wnid], dtype=np.int64).reshape(-1))
        except (TypeError, ValueError):
            raise DataError(f"{path}: class_dict[{wnid!r}] is not a list of row indices") from None
        if index.size == 0:
            raise DataError(f"{path}: class {wnid} has no images: re-create or re-download it")
        if index[0] < 0 or index[-1] >= len(pixels):
            bad = int(index[0] if index[0] < 0 else index[-1])
            raise DataError(
                f"{path}: class_dict[{wnid!r}] has row {bad} outside image_data's "
                f"{len(pixels)} rows: re-create or re-download it"
            )
        rows.append(index)
    order = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    images = torch.empty((len(order), 3, *IMAGE_SIZE), dtype=torch.uint8)
    target = images.numpy()
    for start in range(0, len(order), 4096):  # chunks: never a second full-size copy
        target[start : start + 4096] = pixels[order[start : start + 4096]].transpose(0, 3, 1, 2)
    offsets = torch.tensor([0, *np.cumsum([len(r) for r in rows]).tolist()], dtype=torch.int64)
    return ImageClassDataset(images, offsets, tuple(names))


def _build_from_pickles(directory: Path) -> dict[str, ImageClassDataset]:
    splits: dict[str, ImageClassDataset] = {}
    for split in SPLITS:
        path = directory / PICKLE_NAME.format(split=split)
        if path.is_file():
            dataset = _pickle_split(path)
            if dataset.num_classes:
                splits[split] = dataset
    return splits


def _sources(layout: str, path: Path) -> list[Path]:
    """The files whose fingerprints key the cache; the first decides where the cache goes."""
    if layout == "csv":
        csvs = [path / f"{s}.csv" for s in SPLITS if (path / f"{s}.csv").is_file()]
        return [*csvs, path / "images"]
    # folders: the dataset folder itself, as a cache file inside train/ would look like a class
    # to other tools; zip: the zip file.
    return [path]


def _builder(
    layout: str, path: Path, workers: int | None
) -> tuple[Callable[[], dict[str, ImageClassDataset]], dict[str, dict[str, int]] | None]:
    """The build function and, where listing is cheap, the image counts per class before it."""
    if layout == "pickle":
        return (lambda: _build_from_pickles(path)), None
    if layout == "zip":
        inventory, reader = scan_zip(path)

        def build() -> dict[str, ImageClassDataset]:
            try:
                return _build_from_inventory(inventory, workers)
            finally:
                reader.close()

    else:
        inventory = scan_folders(path) if layout == "folders" else scan_csv(path)

        def build() -> dict[str, ImageClassDataset]:
            return _build_from_inventory(inventory, workers)

    counts = {s: {w: len(files) for w, files in c.items()} for s, c in inventory.items()}
    return build, counts


# ---------------------------------------------------------------------------------------------
# Integrity


def _sample(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def split_report(split: str, counts: dict[str, int]) -> dict[str, object]:
    """Counts of one split against the Ravi split: what is there, missing, short or unexpected."""
    expected = SPLIT_CLASSES[split]
    missing = [w for w in expected if w not in counts]
    unexpected = sorted(w for w in counts if w not in expected)
    wrong = {w: n for w, n in sorted(counts.items()) if w in expected and n != IMAGES_PER_CLASS}
    problems = []
    if missing:
        problems.append(f"{_count(len(missing), 'class', 'classes')} missing ({_sample(missing)})")
    if len(wrong) == 1:
        ((wnid, n),) = wrong.items()
        problems.append(f"class {wnid} has {n} of {IMAGES_PER_CLASS} images")
    elif wrong:
        listed = [f"{w} has {n}" for w, n in wrong.items()]
        problems.append(
            f"{len(wrong)} classes do not have {IMAGES_PER_CLASS} images ({_sample(listed, 3)})"
        )
    if unexpected:
        problems.append(
            f"{_count(len(unexpected), 'class', 'classes')} not in this split of Ravi's list "
            f"({_sample(unexpected)})"
        )
    return {
        "classes": len(counts),
        "expected_classes": len(expected),
        "images": sum(counts.values()),
        "expected_images": len(expected) * IMAGES_PER_CLASS,
        "missing_classes": missing,
        "wrong_size_classes": wrong,
        "unexpected_classes": unexpected,
        "problems": problems,
    }


def _counts(splits: dict[str, ImageClassDataset]) -> dict[str, dict[str, int]]:
    return {
        split: dict(zip(data.class_names, data.class_sizes.tolist(), strict=True))
        for split, data in splits.items()
    }


def _check_counts(
    counts: dict[str, dict[str, int]], layout: str, path: Path, allow_partial: bool
) -> None:
    if allow_partial:
        return
    problems = []
    for split in SPLITS:
        found = split_report(split, counts.get(split, {}))["problems"]
        if found:
            problems.append(f"{NAME}/{split}: " + ", ".join(found))  # type: ignore[arg-type]
    if problems:
        raise DataError(
            f"Mini-ImageNet at {path} ({layout}) is incomplete: {'; '.join(problems)}; "
            "complete the download, or pass allow_partial=True (--allow-partial) to use it as is"
        )


# ---------------------------------------------------------------------------------------------
# Public API


def load_miniimagenet(
    root: Path,
    allow_partial: bool = False,
    *,
    layout: str | None = None,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    workers: int | None = None,
) -> dict[str, ImageClassDataset]:
    """The "train", "val" and "test" splits as uint8 (N, 3, 84, 84) datasets.

    `root` is the data root (holding `miniimagenet/`), the Mini-ImageNet folder itself, or a
    zip of it. Raises DataError if the set is incomplete (unless `allow_partial`; then splits
    with no class are left out) or a file is corrupt. Decoded JPEGs are cached (see
    `reptorch.data.cache`), so only the first load decodes them; pickles are read directly.
    """
    layout, path = locate_miniimagenet(root, layout)
    build, counts = _builder(layout, path, workers)
    if counts is not None:  # fail before decoding when the listing already shows the gap
        _check_counts(counts, layout, path, allow_partial)
    if use_cache and layout != "pickle":  # pickles already hold decoded arrays: no gain
        params = {"layout": layout, "size": IMAGE_SIZE, "version": CACHE_VERSION}
        splits = cached(NAME, _sources(layout, path), build, cache_dir=cache_dir, params=params)
    else:
        splits = build()
    _check_counts(_counts(splits), layout, path, allow_partial)
    return {split: splits[split] for split in SPLITS if split in splits}


def check_miniimagenet(root: Path, *, cache_dir: Path | None = None) -> dict[str, object]:
    """A summary of the Mini-ImageNet found under `root`, for `reptorch data check`.

    Decodes every image once (then served from the cache) so corrupt files are found. Returns::

        {
          "dataset": "miniimagenet",
          "path": str | None,           # the folder or zip found
          "layout": "folders" | "csv" | "pickle" | "zip" | None,
          "status": "ok" | "partial" | "missing" | "corrupt",
          "splits": {                   # "train", "val", "test"; empty unless decoded
            split: {"classes": int, "expected_classes": int, "images": int,
                    "expected_images": int, "missing_classes": [wnid, ...],
                    "wrong_size_classes": {wnid: images}, "unexpected_classes": [wnid, ...],
                    "problems": [str, ...]},
          },
          "problems": [str, ...],       # one line each; empty when status is "ok"
        }

    "partial" loads with `allow_partial=True`; "missing" and "corrupt" do not load at all.
    """
    summary: dict[str, object] = {
        "dataset": NAME,
        "path": None,
        "layout": None,
        "status": "missing",
        "splits": {},
        "problems": [],
    }
    try:
        layout, path = locate_miniimagenet(root)
    except DataError as err:
        summary["problems"] = [str(err)]
        return summary
    summary.update(path=str(path), layout=layout)
    try:
        splits = load_miniimagenet(root, allow_partial=True, layout=layout, cache_dir=cache_dir)
    except DataError as err:
        summary.update(status="corrupt", problems=[str(err)])
        return summary
    counts = _counts(splits)
    reports = {split: split_report(split, counts.get(split, {})) for split in SPLITS}
    problems = [
        f"{NAME}/{split}: {problem}"
        for split, r in reports.items()
        for problem in r["problems"]  # type: ignore[attr-defined]
    ]
    summary.update(splits=reports, problems=problems, status="partial" if problems else "ok")
    return summary
