"""`reptorch demo --export DIR`: the static site's files, its one-line refusals and the CLI's
summary, without a browser (the page in Chromium: tests/test_demo_static.py)."""

from __future__ import annotations

import json

import pytest

from reptorch.demo.export import FORMAT, export_site
from reptorch.errors import ConfigError


def test_export_writes_a_complete_site_and_refuses_foreign_directories(
    trained_demo_model, tmp_path
):
    target = tmp_path / "site"
    summary = export_site(trained_demo_model, target)
    meta = json.loads((target / "model.json").read_text())
    assert meta["format"] == FORMAT and meta["classes"] == trained_demo_model.ways
    parameters = sum(p["size"] for p in meta["parameters"])
    assert (target / "weights.bin").stat().st_size == 3 * 4 * parameters  # phi, m, v in float32
    page = (target / "index.html").read_text()
    assert 'content="browser"' in page and 'content="server"' not in page
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert len(meta["indices"]["3x1"]) == meta["inner_steps"] == 50
    assert summary.total_bytes == sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    # an earlier export is replaced whole; anything else is left alone with a one-line error
    (target / "stale.txt").write_text("from an earlier export")
    export_site(trained_demo_model, target)
    assert not (target / "stale.txt").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and not an earlier export"):
        export_site(trained_demo_model, foreign)
    with pytest.raises(ConfigError, match="a file is in the way"):
        export_site(trained_demo_model, foreign / "notes.txt")
    assert (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "site"]  # no leftovers


def test_cli_export_prints_the_size_and_how_to_publish(tmp_path, capsys, trained_demo_model):
    from reptorch.cli import main

    assert main(["demo", "--export", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "MiB" in out and "copy" in out and "http.server" in out
    assert (tmp_path / "out" / "index.html").exists()
    assert main(["demo", "--export", str(tmp_path / "x"), "--model", "no-such-model"]) == 1
    assert "no shipped model" in capsys.readouterr().err
