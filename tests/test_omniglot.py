"""Omniglot: the real shared archives (counts, reference decoding, 105 px originals, splits,
rotations, cache) and small fake layouts written to tmp_path for every kind of bad input."""

from __future__ import annotations

import io
import os
import random
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reptorch.data import cache as cache_mod
from reptorch.data.dataset import ImageClassDataset
from reptorch.data.omniglot import (
    load_omniglot,
    pool_parts,
    rotate_classes,
    select_classes,
    split_omniglot,
)
from reptorch.data.omniglot_files import find_sources, load_parts, read_part, verify_parts
from reptorch.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# Fakes: tiny Omniglot-like trees in tmp_path


def png_bytes(seed: int, size: int = 105, mode: str = "1") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size, size)) > 0.3).astype(np.uint8) * 255
    image = Image.fromarray(pixels, "L")
    if mode != "L":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


FAKE = {
    "images_background": {"Alpha": 2, "Beta": 1},
    "images_evaluation": {"Gamma": 2},
}


def fake_files(images: int = 3) -> dict[str, bytes]:
    """Relative path -> PNG bytes for a fake background + evaluation set."""
    files, seed = {}, 0
    for part, alphabets in FAKE.items():
        for alphabet, characters in alphabets.items():
            for c in range(1, characters + 1):
                for i in range(1, images + 1):
                    seed += 1
                    files[f"{part}/{alphabet}/character{c:02d}/{seed:04d}_{i:02d}.png"] = png_bytes(
                        seed
                    )
    return files


def write_fake(root: Path, layout: str = "zip", images: int = 3) -> Path:
    """A fake `<root>/omniglot` in layout "zip", "folders" or "reference"; returns that folder."""
    directory = root / "omniglot"
    directory.mkdir(parents=True)
    files = fake_files(images)
    if layout == "zip":
        for part in FAKE:
            with zipfile.ZipFile(directory / f"{part}.zip", "w") as archive:
                for name, data in files.items():
                    if name.startswith(part + "/"):
                        archive.writestr(name, data)
    else:
        for name, data in files.items():
            rel = name.split("/", 1)[1] if layout == "reference" else name
            (directory / rel).parent.mkdir(parents=True, exist_ok=True)
            (directory / rel).write_bytes(data)
    return directory


def listing(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# ---------------------------------------------------------------------------------------------
# The real shared data


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache per test session, shared with test_tasks/test_data_cli: decode once."""
    return tmp_path_factory.getbasetemp() / "omniglot-cache"


@pytest.fixture(scope="session")
def parts(shared_data: Path, omniglot_dir: Path, omniglot_cache: Path):
    return load_parts(shared_data, omniglot_cache)[1]


def test_counts_match_the_official_set(parts: dict[str, ImageClassDataset]) -> None:
    assert verify_parts(parts) == []
    assert parts["background"].num_classes == 964 and len(parts["background"]) == 19280
    assert parts["evaluation"].num_classes == 659 and len(parts["evaluation"]) == 13180
    pool = pool_parts(parts)
    assert pool.num_classes == 1623 and len(pool) == 32460
    assert (pool.class_sizes == 20).all()
    assert list(pool.class_names) == sorted(pool.class_names)  # sorted alphabet, then character


def test_pixels_are_the_reference_values(
    parts: dict[str, ImageClassDataset], omniglot_dir: Path
) -> None:
    data = parts["background"]
    assert data.images.dtype == torch.uint8 and data.image_shape == (1, 28, 28)
    assert set(data.images.unique().tolist()) == {0, 255}
    assert data.images.float().mean() / 255 > 0.8  # background (1.0) dominates
    # images sorted by file name inside each character; compare with the reference's own call
    with zipfile.ZipFile(omniglot_dir / "images_background.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        for row in (0, 1, 777, 19279):
            with Image.open(io.BytesIO(archive.read(names[row]))) as img:
                expected = np.array(img.resize((28, 28))).astype(np.float32)
            got = data.images[row, 0].numpy().astype(np.float32) / 255
            np.testing.assert_array_equal(got, expected)
    name = names[0].split("/")
    assert data.class_names[0] == f"{name[1]}/{name[2]}"


def test_105px_originals_reproduce_the_28px_archive_exactly(
    parts: dict[str, ImageClassDataset], omniglot_dir: Path
) -> None:
    originals = read_part(omniglot_dir / "images_evaluation_105px.zip")
    assert len(originals) == 13180
    assert originals.class_names == parts["evaluation"].class_names
    assert torch.equal(originals.class_offsets, parts["evaluation"].class_offsets)
    assert torch.equal(originals.images, parts["evaluation"].images)


def test_reference_split_sizes_and_rotations(parts: dict[str, ImageClassDataset]) -> None:
    splits = split_omniglot(parts, "reference", seed=0)
    assert list(splits) == ["train", "test"]
    assert splits["train"].num_classes == 4800 and len(splits["train"]) == 96000
    assert splits["test"].num_classes == 423 and len(splits["test"]) == 8460
    base = {n.rsplit("/", 1)[0] for n in splits["train"].class_names}
    assert len(base) == 1200 and not base & set(splits["test"].class_names)
    train = splits["train"]
    for c in (0, 1, 2, 3, 4797):
        block = train.images[train.class_offsets[c] : train.class_offsets[c + 1]]
        first = train.images[train.class_offsets[c - c % 4] : train.class_offsets[c - c % 4 + 1]]
        assert torch.equal(block, torch.rot90(first, c % 4, dims=(-2, -1)))
        assert train.class_names[c].endswith(f"/rot{90 * (c % 4):03d}")
    unrotated = split_omniglot(parts, "reference", seed=0, rotate=False)["train"]
    assert unrotated.num_classes == 1200


def test_reference_split_is_the_reference_codes_for_seed_0(
    parts: dict[str, ImageClassDataset], omniglot_dir: Path
) -> None:
    """The 423 test characters of seed 0 are those the reference's own code picks (listed in the
    shared data), in the reference's order: Python's `random.shuffle` of the sorted characters."""
    expected = (omniglot_dir / "reference-split-seed0-test.txt").read_text().split()
    splits = split_omniglot(parts, "reference", seed=0, rotate=False)
    assert sorted(splits["test"].class_names) == expected
    # order too: random.seed(0); random.shuffle(sorted names) as supervised-reptile does
    names = sorted(n for p in parts.values() for n in p.class_names)
    random.seed(0)
    random.shuffle(names)
    assert list(splits["train"].class_names) == names[:1200]
    assert list(splits["test"].class_names) == names[1200:]


def test_reference_split_depends_on_the_seed_only(parts: dict[str, ImageClassDataset]) -> None:
    a = split_omniglot(parts, seed=1, rotate=False)
    b = split_omniglot(parts, seed=1, rotate=False)
    c = split_omniglot(parts, seed=2, rotate=False)
    assert a["test"].class_names == b["test"].class_names
    assert set(a["test"].class_names) != set(c["test"].class_names)


def test_validation_and_official_splits(parts: dict[str, ImageClassDataset]) -> None:
    ref = split_omniglot(parts, seed=0, val_classes=100)
    assert [ref[k].num_classes for k in ("train", "val", "test")] == [4400, 100, 423]
    train_chars = {n.rsplit("/", 1)[0] for n in ref["train"].class_names}
    assert not train_chars & set(ref["val"].class_names)
    official = split_omniglot(parts, "official", seed=0, val_classes=64)
    assert [official[k].num_classes for k in ("train", "val", "test")] == [3600, 64, 659]
    assert official["test"].class_names == parts["evaluation"].class_names
    with pytest.raises(ConfigError, match="val_classes"):
        split_omniglot(parts, val_classes=1200)
    with pytest.raises(ConfigError, match="split"):
        split_omniglot(parts, "random")


def test_cached_load_is_fast_and_identical(
    shared_data: Path, parts: dict[str, ImageClassDataset], omniglot_cache: Path
) -> None:
    start = time.perf_counter()
    splits = load_omniglot(shared_data, cache_dir=omniglot_cache)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.5, f"cached load + split took {elapsed:.2f}s"
    again = load_parts(shared_data, omniglot_cache)[1]
    assert torch.equal(again["evaluation"].images, parts["evaluation"].images)
    assert splits["train"].num_classes == 4800
    assert not any(p.name.endswith(".tmp") for p in omniglot_cache.iterdir())


def test_read_only_data_folder_gets_no_cache(
    shared_data: Path, parts: dict[str, ImageClassDataset], tmp_path: Path, monkeypatch
) -> None:
    """The shared data has no write bits: the cache must go to $REPTORCH_CACHE, not beside it."""
    omniglot = shared_data / "omniglot"
    if cache_mod.is_writable_dir(omniglot):
        pytest.skip("the shared data folder is writable here")
    before = listing(omniglot)
    monkeypatch.setenv("REPTORCH_CACHE", str(tmp_path / "cache"))
    cache_mod.cached(
        "omniglot-ro-probe", [omniglot / "README.md"], lambda: {"all": parts["evaluation"]}
    )
    assert listing(omniglot) == before
    assert len(list((tmp_path / "cache").iterdir())) == 1


# ---------------------------------------------------------------------------------------------
# Layouts and the cache, on fakes


@pytest.mark.parametrize("layout", ["zip", "folders", "reference"])
def test_every_layout_gives_the_same_pool(tmp_path: Path, layout: str) -> None:
    write_fake(tmp_path / "base", "zip")
    directory = write_fake(tmp_path / layout, layout)
    expected = pool_parts(load_parts(tmp_path / "base", tmp_path / "c0")[1])
    sources, got = load_parts(tmp_path / layout, tmp_path / f"c-{layout}")
    assert sources.layout == layout and sources.directory == directory
    pool = pool_parts(got)
    assert (
        pool.class_names
        == expected.class_names
        == (
            "Alpha/character01",
            "Alpha/character02",
            "Beta/character01",
            "Gamma/character01",
            "Gamma/character02",
        )
    )
    assert torch.equal(pool.images, expected.images)
    splits = load_omniglot(tmp_path / layout, verify=False, train_classes=3, cache_dir=tmp_path)
    assert splits["train"].num_classes == 12 and splits["test"].num_classes == 2


def test_official_split_needs_the_two_parts(tmp_path: Path) -> None:
    write_fake(tmp_path, "reference")
    with pytest.raises(DataError, match="official split"):
        load_omniglot(tmp_path, split="official", verify=False, cache_dir=tmp_path / "c")


def test_cache_rebuilds_when_a_source_changes(tmp_path: Path) -> None:
    directory = write_fake(tmp_path / "data", "zip")
    cache_dir = tmp_path / "cache"
    first = load_parts(tmp_path / "data", cache_dir)[1]
    files = list(cache_dir.iterdir())
    assert len(files) == 1 and files[0].name.endswith(".reptorch-cache.npz")
    with zipfile.ZipFile(directory / "images_evaluation.zip", "w") as archive:
        archive.writestr("images_evaluation/Gamma/character01/9999_01.png", png_bytes(1234))
    second = load_parts(tmp_path / "data", cache_dir)[1]
    assert len(second["evaluation"]) == 1 and len(first["evaluation"]) == 6
    assert [p.name for p in cache_dir.iterdir()] == [files[0].name]  # replaced in place


def test_cache_beside_writable_data_and_corrupt_cache_rebuilt(tmp_path: Path) -> None:
    directory = write_fake(tmp_path, "zip")
    calls = []
    sources = [directory / "images_background.zip"]

    def build() -> dict[str, ImageClassDataset]:
        calls.append(1)
        return {"background": read_part(sources[0])}

    cache_mod.cached("fake", sources, build)
    (cache_file,) = directory.glob("*.reptorch-cache.npz")
    cache_mod.cached("fake", sources, build)
    assert len(calls) == 1
    cache_file.write_bytes(cache_file.read_bytes()[:1000])  # a truncated cache is only a miss
    again = cache_mod.cached("fake", sources, build)
    assert len(calls) == 2 and again["background"].num_classes == 3


# ---------------------------------------------------------------------------------------------
# Bad input: one DataError line naming the file and the fix; nothing written


def expect_error(root: Path, match: str, cache_dir: Path) -> str:
    before = listing(root) if root.exists() else set()
    with pytest.raises(DataError, match=match) as info:
        load_omniglot(root, verify=False, train_classes=3, cache_dir=cache_dir)
    message = str(info.value)
    assert "\n" not in message
    assert (listing(root) if root.exists() else set()) == before
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
    return message


def test_missing_root(tmp_path: Path) -> None:
    message = expect_error(tmp_path / "nowhere", "does not exist", tmp_path / "c")
    assert "reptorch data download omniglot" in message


def test_missing_part(tmp_path: Path) -> None:
    directory = write_fake(tmp_path, "zip")
    (directory / "images_evaluation.zip").unlink()
    expect_error(tmp_path, "images_evaluation", tmp_path / "c")


def test_empty_omniglot_folder(tmp_path: Path) -> None:
    (tmp_path / "omniglot").mkdir()
    expect_error(tmp_path, "Omniglot not found", tmp_path / "c")


def test_wrong_folder_layout(tmp_path: Path) -> None:
    directory = write_fake(tmp_path, "folders")
    (directory / "images_background" / "Beta" / "stray.png").write_bytes(png_bytes(1))
    expect_error(tmp_path, "Beta.*expected <Alphabet>/<character>/", tmp_path / "c")


def test_wrong_zip_layout(tmp_path: Path) -> None:
    directory = write_fake(tmp_path, "zip")
    with zipfile.ZipFile(directory / "images_background.zip", "w") as archive:
        archive.writestr("a/b/c/d/e.png", png_bytes(1))
    expect_error(tmp_path, "images_background.zip.*unexpected depth", tmp_path / "c")


def test_truncated_zip(tmp_path: Path) -> None:
    directory = write_fake(tmp_path, "zip")
    path = directory / "images_background.zip"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_error(tmp_path, "images_background.zip is not a valid zip", tmp_path / "c")


def test_html_page_saved_as_zip(tmp_path: Path) -> None:
    directory = write_fake(tmp_path, "zip")
    (directory / "images_evaluation.zip").write_text("<!DOCTYPE html><html>Not Found</html>")
    expect_error(tmp_path, "images_evaluation.zip is an HTML page", tmp_path / "c")


def test_empty_class_folder(tmp_path: Path) -> None:
    directory = write_fake(tmp_path, "folders")
    (directory / "images_evaluation" / "Gamma" / "character03").mkdir()
    expect_error(tmp_path, "empty class folder .*Gamma/character03", tmp_path / "c")


def test_unreadable_image(tmp_path: Path) -> None:
    directory = write_fake(tmp_path, "folders")
    bad = directory / "images_background" / "Alpha" / "character01" / "0001_01.png"
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG
    expect_error(tmp_path, "0001_01.png is truncated or corrupt", tmp_path / "c")
    bad.write_bytes(b"GIF89a nonsense")
    expect_error(tmp_path, "0001_01.png is not an image", tmp_path / "c")


def test_wrong_image_mode(tmp_path: Path) -> None:
    directory = write_fake(tmp_path, "folders")
    bad = directory / "images_background" / "Beta" / "character01" / "0007_01.png"
    bad.write_bytes(png_bytes(7, mode="L"))
    expect_error(tmp_path, "0007_01.png has image mode 'L', expected 1-bit", tmp_path / "c")


def test_any_image_size_is_resized(tmp_path: Path) -> None:
    directory = write_fake(tmp_path, "folders")
    odd = directory / "images_background" / "Beta" / "character01" / "0007_01.png"
    odd.write_bytes(png_bytes(7, size=40))
    data = read_part(directory / "images_background")
    assert data.image_shape == (1, 28, 28)
    with Image.open(odd) as img:
        expected = np.array(img.resize((28, 28))).astype(np.uint8) * 255
    row = data.class_names.index("Beta/character01")
    np.testing.assert_array_equal(data.images[data.class_offsets[row], 0].numpy(), expected)


def test_incomplete_set_fails_verification(tmp_path: Path) -> None:
    write_fake(tmp_path, "zip")
    with pytest.raises(DataError, match="incomplete Omniglot.*expected 30"):
        load_omniglot(tmp_path, cache_dir=tmp_path / "c")


def test_select_and_rotate_with_uneven_classes() -> None:
    images = torch.arange(7 * 4, dtype=torch.uint8).view(7, 1, 2, 2)
    data = ImageClassDataset(images, torch.tensor([0, 2, 7]), ("a", "b"))
    picked = select_classes(data, [1, 0])
    assert picked.class_names == ("b", "a") and picked.class_sizes.tolist() == [5, 2]
    assert torch.equal(picked.images[:5], images[2:])
    rotated = rotate_classes(data)
    assert rotated.class_sizes.tolist() == [2, 2, 2, 2, 5, 5, 5, 5]
    assert torch.equal(rotated.images[2:4], torch.rot90(images[:2], 1, dims=(-2, -1)))
    assert torch.equal(rotated.images[8 + 15 : 8 + 20], torch.rot90(images[2:], 3, dims=(-2, -1)))


def test_find_sources_prefers_zips(tmp_path: Path) -> None:
    directory = write_fake(tmp_path, "folders")
    for part in FAKE:
        with zipfile.ZipFile(directory / f"{part}.zip", "w") as archive:
            archive.writestr(f"{part}/X/character01/0001_01.png", png_bytes(1))
    assert find_sources(directory).layout == "zip"
    assert os.path.basename(find_sources(directory).paths["background"]) == "images_background.zip"
