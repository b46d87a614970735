"""`reptorch data check`, the data-root rule and the dataset registry, through the CLI."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reptorch.cli import main
from reptorch.data.registry import load_splits
from reptorch.data.roots import dataset_dir, resolve_data_root
from reptorch.errors import ConfigError


def write_fake(root: Path, layout: str) -> Path:
    """A tiny `<root>/omniglot`: 3 background and 2 evaluation characters of 3 random images,
    as two zips (layout "zip") or extracted folders ("folders")."""
    directory = root / "omniglot"
    rng = np.random.default_rng(0)
    parts = {"images_background": {"Alpha": 2, "Beta": 1}, "images_evaluation": {"Gamma": 2}}
    for part, alphabets in parts.items():
        directory.mkdir(parents=True, exist_ok=True)
        archive = zipfile.ZipFile(directory / f"{part}.zip", "w") if layout == "zip" else None
        for alphabet, characters in alphabets.items():
            for c in range(1, characters + 1):
                for i in range(1, 4):
                    buffer = io.BytesIO()
                    pixels = (rng.random((105, 105)) > 0.3).astype(np.uint8) * 255
                    Image.fromarray(pixels, "L").convert("1").save(buffer, format="PNG")
                    name = f"{part}/{alphabet}/character{c:02d}/{c:04d}_{i:02d}.png"
                    if archive is not None:
                        archive.writestr(name, buffer.getvalue())
                    else:
                        (directory / name).parent.mkdir(parents=True, exist_ok=True)
                        (directory / name).write_bytes(buffer.getvalue())
        if archive is not None:
            archive.close()
    return directory


@pytest.fixture
def session_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The decoded-Omniglot cache shared by the session's tests (the shared data is read-only)."""
    cache = tmp_path_factory.getbasetemp() / "omniglot-cache"
    monkeypatch.setenv("REPTORCH_CACHE", str(cache))
    return cache


def test_data_root_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPTORCH_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root() == tmp_path / "home" / ".cache" / "reptorch"
    monkeypatch.setenv("REPTORCH_DATA", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    assert dataset_dir("omniglot") == tmp_path / "env" / "omniglot"


def test_check_omniglot_json(shared_data: Path, session_cache: Path, capsys) -> None:
    assert main(["data", "check", "omniglot", "--data-dir", str(shared_data), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["status"] == "ok" and summary["problems"] == []
    assert summary["totals"] == {"alphabets": 50, "characters": 1623, "images": 32460}
    assert summary["splits"]["background"]["characters"] == 964
    assert summary["splits"]["evaluation"]["images"] == 13180
    text = "\n".join(out)
    assert "background: 30 alphabets, 964 characters, 19280 images" in text
    assert "status: ok" in text


def test_check_uses_the_env_root(
    shared_data: Path, session_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("REPTORCH_DATA", str(shared_data))
    assert main(["data", "check", "omniglot"]) == 0
    assert "1623 characters" in capsys.readouterr().out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("reptorch: error: ") and "Traceback" not in err
    return err


def test_check_missing_root(tmp_path: Path, capsys) -> None:
    assert main(["data", "check", "omniglot", "--data-dir", str(tmp_path / "none")]) == 1
    err = one_error_line(capsys)
    assert "does not exist" in err and "reptorch data download omniglot --data-dir" in err


def test_check_missing_root_json(tmp_path: Path, capsys) -> None:
    assert main(["data", "check", "omniglot", "--data-dir", str(tmp_path), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["status"] == "missing"
    assert captured.err.count("\n") == 1


def test_check_corrupt_and_partial(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("REPTORCH_CACHE", str(tmp_path / "cache"))
    directory = write_fake(tmp_path / "partial", "zip")
    assert main(["data", "check", "omniglot", "--data-dir", str(tmp_path / "partial")]) == 1
    captured = capsys.readouterr()
    assert "status: partial" in captured.out and "expected 964" in captured.out
    path = directory / "images_evaluation.zip"
    path.write_bytes(path.read_bytes()[:100])
    args = ["data", "check", "omniglot", "--data-dir", str(tmp_path / "partial"), "--json"]
    assert main(args) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["status"] == "corrupt" and "images_evaluation.zip" in summary["problems"][0]
    assert captured.err.count("\n") == 1


def test_check_unknown_dataset(capsys) -> None:
    assert main(["data", "check", "imagenet"]) == 1
    assert "unknown dataset" in one_error_line(capsys)


def test_registry(shared_data: Path, session_cache: Path, tmp_path: Path) -> None:
    splits = load_splits("omniglot", shared_data, seed=0)
    assert {k: v.num_classes for k, v in splits.items()} == {"train": 4800, "test": 423}
    splits = load_splits("omniglot", shared_data, seed=0, val_classes=50, rotate=False)
    assert {k: v.num_classes for k, v in splits.items()} == {"train": 1150, "val": 50, "test": 423}
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_splits("cifar", shared_data)
    with pytest.raises(ConfigError, match="Omniglot only"):
        load_splits("miniimagenet", shared_data, val_classes=3)


def test_registry_folder_dataset(tmp_path: Path) -> None:
    source = write_fake(tmp_path / "src", "folders") / "images_background" / "Alpha"
    root = tmp_path / "classes"
    shutil.copytree(source / "character01", root / "train" / "a")
    shutil.copytree(source / "character02", root / "test" / "b")
    splits = load_splits(f"folder:{root}", image_size=(28, 28), channels=1, cache_dir=tmp_path)
    assert {k: (v.num_classes, len(v)) for k, v in splits.items()} == {
        "train": (1, 3),
        "test": (1, 3),
    }
