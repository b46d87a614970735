"""`--data-dir` naming the dataset's own folder (the commonest slip) is used as such."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reptorch.cli import main
from reptorch.data.registry import load_splits
from reptorch.data.roots import dataset_dir
from reptorch.tabular.data import keel_dir
from tests.test_data_cli import write_fake


def test_dataset_dir_takes_the_root_or_the_datasets_own_folder(tmp_path: Path) -> None:
    write_fake(tmp_path / "root", "zip")
    root = tmp_path / "root"
    assert dataset_dir("omniglot", root) == root / "omniglot"
    assert dataset_dir("omniglot", root / "omniglot") == root / "omniglot"
    (tmp_path / "elsewhere" / "images_background").mkdir(parents=True)  # extracted, any name
    assert dataset_dir("omniglot", tmp_path / "elsewhere") == tmp_path / "elsewhere"
    (tmp_path / "empty" / "omniglot").mkdir(parents=True)  # named after it: download goes there
    assert dataset_dir("omniglot", tmp_path / "empty" / "omniglot") == tmp_path / "empty/omniglot"
    assert dataset_dir("omniglot", tmp_path / "new") == tmp_path / "new" / "omniglot"
    (tmp_path / "mini" / "train").mkdir(parents=True)
    assert dataset_dir("miniimagenet", tmp_path / "mini") == tmp_path / "mini"
    assert keel_dir(tmp_path / "tabular") == tmp_path / "tabular" / "keel"
    assert keel_dir(tmp_path) == tmp_path / "tabular" / "keel"


def test_omniglot_loads_the_same_from_its_own_folder(tmp_path: Path) -> None:
    write_fake(tmp_path, "zip")
    options = {"split": "official", "verify": False, "cache_dir": tmp_path / "cache"}
    by_root = load_splits("omniglot", tmp_path, **options)
    by_folder = load_splits("omniglot", tmp_path / "omniglot", **options)
    for split in by_root:
        assert by_root[split].images.equal(by_folder[split].images)


def test_data_check_on_the_datasets_own_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("REPTORCH_CACHE", str(tmp_path / "cache"))
    folder = write_fake(tmp_path, "folders")
    assert main(["data", "check", "omniglot", "--data-dir", str(folder), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["path"] == str(folder) and summary["layout"] == "folders"
    assert summary["totals"]["characters"] == 5  # found and read; only incomplete


def test_eval_with_the_shared_omniglot_folder(omniglot_dir: Path, capsys) -> None:
    argv = ["eval", "--model", "omniglot-5way", "--eval-samples", "2", "--json", "--no-progress"]
    assert main([*argv, "--data-dir", str(omniglot_dir)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tasks"] == 2


@pytest.mark.parametrize("sub", ["", "miniimagenet"])
def test_miniimagenet_check_on_root_or_own_folder(shared_data: Path, sub: str, capsys) -> None:
    root = shared_data / sub if sub else shared_data
    main(["data", "check", "miniimagenet", "--data-dir", str(root), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["layout"] == "zip"
