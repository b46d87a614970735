"""Class-folder datasets on tiny PNG/JPEG folders built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reptorch.data.dataset import ImageClassDataset
from reptorch.data.folder import folder_path, load_folder, require_images_per_class
from reptorch.errors import ConfigError, DataError


def _write(path: Path, value: int, size: tuple[int, int] = (10, 12), mode: str = "RGB") -> None:
    """An image of constant colour `value`; `size` is (W, H) as Pillow takes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode in ("L", "1", "P") else (value, value // 2, 255 - value)
    Image.new(mode, size, colour).save(path)


def _classes(root: Path, counts: dict[str, int], ext: str = ".png") -> None:
    for c, (name, count) in enumerate(counts.items()):
        for i in range(count):
            _write(root / name / f"{i:03d}{ext}", 10 * c + i)


def test_split_folders_png(tmp_path: Path) -> None:
    for split, names in {"train": ["a", "b"], "val": ["c"], "test": ["d", "e"]}.items():
        _classes(tmp_path / split, dict.fromkeys(names, 3))
    splits = load_folder(tmp_path, image_size=(8, 6), channels=3, cache_dir=tmp_path / "cache")
    assert list(splits) == ["train", "val", "test"]
    assert splits["train"].class_names == ("a", "b") and splits["test"].class_names == ("d", "e")
    assert splits["train"].images.shape == (6, 3, 8, 6)
    assert splits["train"].class_offsets.tolist() == [0, 3, 6]
    # Constant-colour images stay exact through the resize; class b's first image is 10.
    assert splits["train"].images[3, :, 0, 0].tolist() == [10, 5, 245]


def test_grayscale_and_jpeg_and_other_modes(tmp_path: Path) -> None:
    _write(tmp_path / "x" / "0.jpg", 200, mode="RGB")
    _write(tmp_path / "x" / "1.png", 0, mode="1")
    _write(tmp_path / "x" / "2.png", 255, mode="1")
    _write(tmp_path / "y" / "0.png", 100, mode="L")
    _write(tmp_path / "y" / "1.png", 100, mode="RGBA")
    _write(tmp_path / "y" / "2.PNG", 7, mode="P")
    splits = load_folder(
        tmp_path, image_size=(5, 5), channels=1, fractions=(1, 0, 0), use_cache=False
    )
    data = splits["train"]
    assert list(splits) == ["train"] and data.images.shape == (6, 1, 5, 5)
    assert data.images.dtype == torch.uint8
    assert data.images[1].unique().tolist() == [0] and data.images[2].unique().tolist() == [255]
    assert data.images[3].unique().tolist() == [100]


def test_split_by_class_is_seeded_and_disjoint(tmp_path: Path) -> None:
    names = [f"c{i:02d}" for i in range(10)]
    _classes(tmp_path / "data", dict.fromkeys(names, 2))
    cache = tmp_path / "cache"
    a = load_folder(tmp_path / "data", image_size=(4, 4), seed=1, cache_dir=cache)
    b = load_folder(tmp_path / "data", image_size=(4, 4), seed=1, cache_dir=cache)
    c = load_folder(tmp_path / "data", image_size=(4, 4), seed=2, cache_dir=cache)
    sizes = {k: v.num_classes for k, v in a.items()}
    assert sizes == {"train": 6, "val": 2, "test": 2}
    assert {k: v.class_names for k, v in a.items()} == {k: v.class_names for k, v in b.items()}
    assert {k: v.class_names for k, v in a.items()} != {k: v.class_names for k, v in c.items()}
    seen = [n for v in a.values() for n in v.class_names]
    assert sorted(seen) == names
    for split in a.values():  # images follow their class through the split
        for i, name in enumerate(split.class_names):
            first = split.images[split.class_offsets[i], 0, 0, 0].item()
            assert first == 10 * names.index(name)


def test_cache_is_reused_and_respects_options(tmp_path: Path) -> None:
    _classes(tmp_path / "data", {"a": 2, "b": 2, "c": 2})
    cache = tmp_path / "cache"
    first = load_folder(tmp_path / "data", image_size=(4, 4), cache_dir=cache)
    assert len(list(cache.iterdir())) == 1
    again = load_folder(tmp_path / "data", image_size=(4, 4), cache_dir=cache)
    assert torch.equal(first["train"].images, again["train"].images)
    other = load_folder(tmp_path / "data", image_size=(3, 5), channels=1, cache_dir=cache)
    assert other["train"].image_shape == (1, 3, 5)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: (p / "a").mkdir(parents=True), "empty class folder"),
        (lambda p: _write(p / "a" / "sub" / "0.png", 1), "not in subfolders"),
        (lambda p: (p / "a").mkdir(parents=True) or (p / "a" / "0.png").write_bytes(b""), "empty"),
        (
            lambda p: (
                (p / "a").mkdir(parents=True)
                or (p / "a" / "0.jpg").write_bytes(b"<html><body>404 Not Found</body></html>")
            ),
            "HTML",
        ),
        (
            lambda p: (
                (p / "a").mkdir(parents=True)
                or (p / "a" / "0.png").write_bytes(b"\x00\x01 not an image at all")
            ),
            "not an image",
        ),
    ],
)
def test_bad_folders_name_the_file(tmp_path: Path, make, expected: str) -> None:
    root = tmp_path / "data"
    _classes(root, {"good1": 1, "good2": 1})
    make(root)
    with pytest.raises(DataError, match=expected) as info:
        load_folder(root, image_size=(4, 4), fractions=(1, 0, 0), use_cache=False)
    assert str(root / "a") in str(info.value) and "\n" not in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "a" / "0.jpg")
    blob = (root / "a" / "0.jpg").read_bytes()
    (root / "a" / "0.jpg").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated") as info:
        load_folder(root, image_size=(4, 4), fractions=(1, 0, 0), use_cache=False)
    assert str(root / "a" / "0.jpg") in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "expected"),
    [
        ({"channels": 2}, ConfigError, "channels"),
        ({"image_size": (0, 4)}, ConfigError, "image_size"),
        ({"split": "random"}, ConfigError, "split"),
        ({"fractions": (0.5, 0.6, 0.0)}, ConfigError, "summing to 1"),
        ({"fractions": (0.34, 0.33, 0.33)}, DataError, "2 classes, too few"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict, error: type, expected: str) -> None:
    _classes(tmp_path / "data", {"a": 1, "b": 1})
    with pytest.raises(error, match=expected):
        load_folder(tmp_path / "data", use_cache=False, **kwargs)


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_folder(tmp_path / "missing")
    _classes(tmp_path / "split" / "val", {"a": 1})
    with pytest.raises(DataError, match="train not found"):
        load_folder(tmp_path / "split", use_cache=False)
    with pytest.raises(DataError, match="use split='folders'"):
        load_folder(tmp_path / "split", split="classes", use_cache=False)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_folder(tmp_path / "none", use_cache=False)


def test_folder_spec() -> None:
    assert folder_path("folder:/data/birds") == Path("/data/birds")
    with pytest.raises(ConfigError):
        folder_path("folder:")


def _dataset(sizes: dict[str, int]) -> ImageClassDataset:
    offsets = torch.tensor([0, *np.cumsum(list(sizes.values())).tolist()])
    images = torch.zeros((int(offsets[-1]), 1, 2, 2), dtype=torch.uint8)
    return ImageClassDataset(images, offsets, tuple(sizes))


def test_require_images_per_class() -> None:
    require_images_per_class(_dataset({"cat": 6, "dog": 7}), 6, "5-shot tasks with 1 query")
    with pytest.raises(DataError) as info:
        require_images_per_class(_dataset({"cat": 3, "dog": 7}), 6, "5-shot tasks with 1 query")
    assert str(info.value).startswith("class 'cat' has 3 images; 5-shot tasks with 1 query need 6")
    with pytest.raises(DataError, match=r"2 classes have fewer than 6 images \('cat' has 3, 'e"):
        require_images_per_class(_dataset({"cat": 3, "dog": 7, "emu": 5}), 6, "tasks")
