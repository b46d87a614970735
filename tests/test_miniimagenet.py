"""Mini-ImageNet on the shared sample (100 classes x 15 images) in every layout, and bad inputs.

The sample is extracted once per session into tmp dirs; the CSV and pickle variants are built
from it there (the pickle with the reference code's own decoding), never in the repository.
"""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reptorch.data.miniimagenet as mini
from reptorch.data.dataset import ImageClassDataset
from reptorch.data.miniimagenet import check_miniimagenet, load_miniimagenet
from reptorch.errors import DataError

SPLIT_SIZES = {"train": 64, "val": 16, "test": 20}


@pytest.fixture(scope="session")
def sample_zip(miniimagenet_dir: Path) -> Path:
    return miniimagenet_dir / "miniimagenet_sample.zip"


@pytest.fixture(scope="session")
def folders_root(sample_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding `miniimagenet/{train,val,test}/<wnid>/*.jpg`."""
    root = tmp_path_factory.mktemp("folders")
    with zipfile.ZipFile(sample_zip) as archive:
        archive.extractall(root)
    return root


def _link_tree(src: Path, dst: Path) -> None:
    """A copy of `src` made of hard links: cheap, and the test may delete or add files."""
    shutil.copytree(src, dst, copy_function=os.link)


@pytest.fixture(scope="session")
def csv_root(folders_root: Path, miniimagenet_dir: Path, tmp_path_factory) -> Path:
    """Ravi's layout: all images in `images/` plus the shared (complete, 600-row) CSVs."""
    root = tmp_path_factory.mktemp("csv") / "miniimagenet"
    (root / "images").mkdir(parents=True)
    for path in (folders_root / "miniimagenet").glob("*/*/*.jpg"):
        os.link(path, root / "images" / path.name)
    for split in mini.SPLITS:
        shutil.copy(miniimagenet_dir / f"{split}.csv", root / f"{split}.csv")
    return root


def _reference_pixels(path: Path) -> np.ndarray:
    """What supervised-reptile's loader computes (before its / 0xff)."""
    with open(path, "rb") as handle:
        return np.array(Image.open(handle).resize((84, 84)).convert("RGB"))


@pytest.fixture(scope="session")
def pickle_root(folders_root: Path, tmp_path_factory) -> Path:
    """`mini-imagenet-cache-*.pkl` decoded the reference way, classes stored in reverse order."""
    root = tmp_path_factory.mktemp("pickle") / "miniimagenet"
    root.mkdir()
    for split in mini.SPLITS:
        files = sorted(
            (folders_root / "miniimagenet" / split).glob("*/*.jpg"),
            key=lambda p: (-int(p.parent.name[1:]), p.name),
        )
        class_dict: dict[str, list[int]] = {}
        for row, path in enumerate(files):
            class_dict.setdefault(path.parent.name, []).append(row)
        image_data = np.stack([_reference_pixels(p) for p in files])
        blob = {"image_data": image_data, "class_dict": class_dict}
        with open(root / mini.PICKLE_NAME.format(split=split), "wb") as handle:
            pickle.dump(blob, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return root


@pytest.fixture(scope="session")
def layout_roots(sample_zip, folders_root, csv_root, pickle_root) -> dict[str, Path]:
    return {"zip": sample_zip, "folders": folders_root, "csv": csv_root, "pickle": pickle_root}


@pytest.fixture(scope="session")
def loaded(layout_roots, tmp_path_factory) -> dict[str, dict[str, ImageClassDataset]]:
    cache = tmp_path_factory.mktemp("cache")
    return {
        layout: load_miniimagenet(root, allow_partial=True, layout=layout, cache_dir=cache)
        for layout, root in layout_roots.items()
    }


def test_sample_shapes(loaded) -> None:
    splits = loaded["zip"]
    assert list(splits) == ["train", "val", "test"]
    for split, data in splits.items():
        assert data.num_classes == SPLIT_SIZES[split]
        assert data.class_sizes.tolist() == [15] * SPLIT_SIZES[split]
        assert data.images.shape == (15 * SPLIT_SIZES[split], 3, 84, 84)
        assert data.images.dtype == torch.uint8
        assert data.class_names == mini.SPLIT_CLASSES[split]


@pytest.mark.parametrize("layout", ["folders", "csv", "pickle"])
def test_layouts_give_identical_pixels(loaded, layout: str) -> None:
    for split, expected in loaded["zip"].items():
        got = loaded[layout][split]
        assert got.class_names == expected.class_names
        assert torch.equal(got.class_offsets, expected.class_offsets)
        assert torch.equal(got.images, expected.images)


def test_pixels_match_the_reference_decoding(loaded, folders_root: Path) -> None:
    data = loaded["folders"]["val"]
    files = sorted((folders_root / "miniimagenet" / "val" / data.class_names[3]).glob("*.jpg"))
    start = int(data.class_offsets[3])
    for i in (0, 14):
        expected = _reference_pixels(files[i]).transpose(2, 0, 1)
        np.testing.assert_array_equal(data.images[start + i].numpy(), expected)


def test_root_may_be_data_root_dataset_folder_or_zip(folders_root, miniimagenet_dir) -> None:
    assert mini.locate_miniimagenet(folders_root) == ("folders", folders_root / "miniimagenet")
    assert mini.locate_miniimagenet(folders_root / "miniimagenet")[0] == "folders"
    assert mini.locate_miniimagenet(miniimagenet_dir)[0] == "zip"
    assert mini.locate_miniimagenet(miniimagenet_dir.parent)[0] == "zip"


@pytest.mark.parametrize("layout", ["zip", "folders", "csv", "pickle"])
def test_partial_set_rejected_without_option(layout_roots, layout: str, tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_miniimagenet(layout_roots[layout], layout=layout, cache_dir=tmp_path)
    message = str(info.value)
    assert "miniimagenet/train: 64 classes do not have 600 images (n01532829 has 15" in message
    assert "miniimagenet/test: 20 classes" in message
    assert "--allow-partial" in message and "\n" not in message


def test_partial_cache_never_passes_a_strict_load(layout_roots, tmp_path: Path) -> None:
    load_miniimagenet(layout_roots["zip"], allow_partial=True, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.reptorch-cache.npz"))) == 1
    with pytest.raises(DataError, match="incomplete"):
        load_miniimagenet(layout_roots["zip"], cache_dir=tmp_path)


def test_cached_load_is_identical(layout_roots, tmp_path: Path) -> None:
    first = load_miniimagenet(layout_roots["zip"], allow_partial=True, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.reptorch-cache.npz"))) == 1
    again = load_miniimagenet(layout_roots["zip"], allow_partial=True, cache_dir=tmp_path)
    assert torch.equal(first["test"].images, again["test"].images)


def test_complete_set_passes_strict_load(layout_roots, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(mini, "IMAGES_PER_CLASS", 15)  # the sample is then "complete"
    splits = load_miniimagenet(layout_roots["folders"], cache_dir=tmp_path)
    assert [d.num_classes for d in splits.values()] == [64, 16, 20]
    assert check_miniimagenet(layout_roots["folders"], cache_dir=tmp_path)["status"] == "ok"


def test_missing_classes_are_named(folders_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "miniimagenet"
    _link_tree(folders_root / "miniimagenet", root)
    gone = ["n01532829", "n01558993", "n01704323"]
    for wnid in gone:
        shutil.rmtree(root / "train" / wnid)
    shutil.rmtree(root / "val")
    with pytest.raises(DataError) as info:
        load_miniimagenet(tmp_path, use_cache=False)
    message = str(info.value)
    assert f"miniimagenet/train: 3 classes missing ({', '.join(gone)})" in message
    assert "miniimagenet/val: 16 classes missing (n01855672, " in message


def test_one_short_class_message() -> None:
    counts = dict.fromkeys(mini.SPLIT_CLASSES["train"], 600)
    counts["n01532829"] = 15
    counts["n99999999"] = 600
    problems = mini.split_report("train", counts)["problems"]
    assert problems == [
        "class n01532829 has 15 of 600 images",
        "1 class not in this split of Ravi's list (n99999999)",
    ]


def test_allow_partial_leaves_out_empty_splits(folders_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "miniimagenet"
    (root / "train").mkdir(parents=True)
    for wnid in mini.SPLIT_CLASSES["train"][:2]:
        _link_tree(folders_root / "miniimagenet" / "train" / wnid, root / "train" / wnid)
    splits = load_miniimagenet(root, allow_partial=True, use_cache=False)
    assert list(splits) == ["train"] and splits["train"].num_classes == 2


# ---------------------------------------------------------------------------------------------
# Bad inputs: each a one-line DataError naming the file


@pytest.fixture()
def small_copy(folders_root: Path, tmp_path: Path) -> Path:
    """`miniimagenet/train/` with two real classes, for damaging in a test."""
    root = tmp_path / "miniimagenet"
    (root / "train").mkdir(parents=True)
    for wnid in mini.SPLIT_CLASSES["train"][:2]:
        _link_tree(folders_root / "miniimagenet" / "train" / wnid, root / "train" / wnid)
    return root


def _first_image(root: Path) -> Path:
    path = sorted((root / "train").glob("*/*.jpg"))[0]
    path.unlink()  # a hard link: replace it, never write through to the extracted sample
    return path


def _load_error(root: Path) -> str:
    with pytest.raises(DataError) as info:
        load_miniimagenet(root, allow_partial=True, use_cache=False, workers=1)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_empty_class_folder(small_copy: Path) -> None:
    (small_copy / "train" / "n01749939").mkdir()
    message = _load_error(small_copy)
    assert "n01749939 is an empty class folder" in message


def test_truncated_jpeg(small_copy: Path, folders_root: Path) -> None:
    path = _first_image(small_copy)
    original = folders_root / "miniimagenet" / "train" / path.parent.name / path.name
    path.write_bytes(original.read_bytes()[:1500])
    message = _load_error(small_copy)
    assert str(path) in message and "truncated" in message


def test_html_saved_as_jpeg(small_copy: Path) -> None:
    path = _first_image(small_copy)
    path.write_text("<!DOCTYPE html>\n<html><head><title>Google Drive - Quota exceeded</title>")
    assert f"{path} is an HTML/XML page" in _load_error(small_copy)


def test_empty_file(small_copy: Path) -> None:
    path = _first_image(small_copy)
    path.write_bytes(b"")
    assert f"{path} is empty" in _load_error(small_copy)


def test_unreadable_image(small_copy: Path, monkeypatch) -> None:
    path = _first_image(small_copy)
    path.write_bytes(b"\xff\xd8")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: simulate the refusal
        real = Path.read_bytes

        def read_bytes(self: Path) -> bytes:
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert f"cannot read {path}: permission denied" in _load_error(small_copy)


def test_other_sizes_and_modes_become_84x84_rgb(small_copy: Path) -> None:
    wnid = mini.SPLIT_CLASSES["train"][0]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (100, 130, 4), dtype=np.uint8)
    made = {
        "z_gray.JPEG": Image.fromarray(pixels[..., 0], "L"),
        "z_cmyk.jpg": Image.fromarray(pixels, "CMYK"),
        "z_big.jpeg": Image.fromarray(pixels[..., :3], "RGB"),
    }
    for name, image in made.items():
        image.save(small_copy / "train" / wnid / name)
    data = load_miniimagenet(small_copy, allow_partial=True, use_cache=False)["train"]
    assert data.class_sizes.tolist() == [18, 15]
    for i, name in enumerate(sorted(made)):  # images sorted by file name
        got = data.images[15 + i].numpy()
        expected = _reference_pixels(small_copy / "train" / wnid / name).transpose(2, 0, 1)
        np.testing.assert_array_equal(got, expected)


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    root = tmp_path / "miniimagenet"
    root.mkdir()
    path = root / mini.PICKLE_NAME.format(split="train")
    path.write_bytes(pickle.dumps({"image_data": Payload(), "class_dict": {}}))
    with pytest.raises(DataError) as info:
        load_miniimagenet(tmp_path, allow_partial=True, cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value) and "system" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([1, 2, 3], "not a Mini-ImageNet cache"),
        ({"image_data": np.zeros((2, 84, 84), np.uint8), "class_dict": {}}, "uint8 array N x 84"),
        (
            {"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"n1": [0, 5]}},
            "row 5 outside image_data's 2 rows",
        ),
        ({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"n1": []}}, "no images"),
    ],
)
def test_malformed_pickle(tmp_path: Path, content: object, expected: str) -> None:
    path = tmp_path / mini.PICKLE_NAME.format(split="val")
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match=expected) as info:
        load_miniimagenet(tmp_path, allow_partial=True, use_cache=False)
    assert str(path) in str(info.value)


def test_bad_csv_header(csv_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "miniimagenet"
    (root / "images").mkdir(parents=True)
    (root / "train.csv").write_text("name;class\nx.jpg;n1\n")
    with pytest.raises(DataError, match="header 'filename,label'"):
        load_miniimagenet(root, allow_partial=True, use_cache=False)


def test_csv_with_missing_images_names_them(csv_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "miniimagenet"
    _link_tree(csv_root, root)
    for path in sorted((root / "images").glob("n01532829*.jpg"))[:5]:
        path.unlink()
    splits = load_miniimagenet(root, allow_partial=True, use_cache=False, workers=1)
    assert splits["train"].class_sizes.tolist()[:2] == [10, 15]


def test_not_found_and_bad_zip(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found in .*miniimagenet or "):
        load_miniimagenet(tmp_path)
    (tmp_path / "miniimagenet").mkdir()
    (tmp_path / "miniimagenet" / "mini.zip").write_text("<html>quota exceeded</html>")
    with pytest.raises(DataError, match="mini.zip is not a readable zip"):
        load_miniimagenet(tmp_path)
    with pytest.raises(DataError, match="unknown Mini-ImageNet layout"):
        load_miniimagenet(tmp_path, layout="tfrecord")


def test_check_summary(layout_roots, tmp_path: Path) -> None:
    summary = check_miniimagenet(layout_roots["zip"].parent, cache_dir=tmp_path)
    assert summary["status"] == "partial" and summary["layout"] == "zip"
    train = summary["splits"]["train"]
    assert (train["classes"], train["images"], train["expected_images"]) == (64, 960, 38400)
    assert train["wrong_size_classes"]["n01532829"] == 15
    assert summary["problems"][0].startswith("miniimagenet/train: 64 classes do not have 600")
    missing = check_miniimagenet(tmp_path / "nowhere")
    assert missing["status"] == "missing" and "not found" in missing["problems"][0]


def test_check_reports_corrupt(small_copy: Path) -> None:
    path = _first_image(small_copy)
    path.write_text("<html></html>")
    summary = check_miniimagenet(small_copy, cache_dir=small_copy.parent / "cache")
    assert summary["status"] == "corrupt" and str(path) in summary["problems"][0]
