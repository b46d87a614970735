"""`download_omniglot` run for real against a local HTTP server serving the shared archives, and
against servers that cut the transfer off, serve an HTML page, a 404 or the wrong archive."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from reptorch.cli import main
from reptorch.data.download import OMNIGLOT_URL_ENV, download_omniglot
from reptorch.data.omniglot_files import find_sources
from reptorch.errors import DataError
from tests.helpers import LoopbackServer

HTML = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Sign in</body></html>"


class Server(LoopbackServer):
    """A local server; the first path component picks the behaviour:
    /ok/NAME the file, /cut/NAME half of it with the full Content-Length, /html/NAME an HTML page,
    /missing/NAME a 404, /swap/NAME the 105 px evaluation archive whatever NAME is."""

    def __init__(self, files: Path) -> None:
        def respond(mode: str, name: str) -> tuple[bytes, int | None, str] | None:
            if mode == "swap":
                name = "images_evaluation_105px.zip"
            path = files / name
            if mode == "missing" or not path.is_file():
                return None
            body = HTML if mode == "html" else path.read_bytes()
            kind = "text/html" if mode == "html" else "application/zip"
            return (body[: len(body) // 2] if mode == "cut" else body), len(body), kind

        super().__init__(respond)


@pytest.fixture(scope="module")
def server(omniglot_dir: Path) -> Iterator[Server]:
    srv = Server(omniglot_dir)
    yield srv
    srv.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_installs_verified_archives(
    server: Server, omniglot_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "omniglot"
    logs: list[str] = []
    installed = download_omniglot(target, f"{server.url}/ok", progress=False, log=logs.append)
    assert installed == {
        "background": target / "images_background.zip",
        "evaluation": target / "images_evaluation.zip",
    }
    assert sorted(p.name for p in target.iterdir()) == [
        "images_background.zip",
        "images_evaluation.zip",
    ]  # no temporary file left
    for name in ("images_background.zip", "images_evaluation.zip"):
        assert sha256(target / name) == sha256(omniglot_dir / name)
    assert "19280 images verified" in logs[0]
    before = len(server.requests)
    download_omniglot(target, f"{server.url}/ok", progress=False, log=logs.append)
    assert len(server.requests) == before  # present and valid: nothing fetched
    assert "already present" in logs[-1]


def test_download_extract(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "omniglot"
    download_omniglot(target, f"{server.url}/ok", extract=True, progress=False, log=lambda _: None)
    assert sorted(p.name for p in target.iterdir()) == ["images_background", "images_evaluation"]
    assert len(list((target / "images_evaluation").glob("*/*/*.png"))) == 13180
    assert len(list((target / "images_background").glob("*/*/*.png"))) == 19280
    assert find_sources(target).layout == "folders"


def test_env_var_sets_the_address_and_a_corrupt_zip_is_fetched_again(
    server: Server, omniglot_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "omniglot"
    target.mkdir()
    (target / "images_background.zip").write_bytes(b"PK\x03\x04 not really a zip")
    monkeypatch.setenv(OMNIGLOT_URL_ENV, f"{server.url}/ok")
    download_omniglot(target, progress=False, log=lambda _: None)
    assert sha256(target / "images_background.zip") == sha256(
        omniglot_dir / "images_background.zip"
    )


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("cut", "was cut off: .* of .* bytes received"),
        ("html", "is an HTML page, not a zip"),
        ("missing", "answered HTTP 404"),
        ("swap", "does not hold images_background/"),
    ],
)
def test_bad_downloads_leave_nothing_behind(
    server: Server, tmp_path: Path, mode: str, match: str
) -> None:
    target = tmp_path / "omniglot"
    with pytest.raises(DataError, match=match) as info:
        download_omniglot(target, f"{server.url}/{mode}", progress=False, log=lambda _: None)
    assert "\n" not in str(info.value) and f"{server.url}/{mode}/images_background.zip" in str(
        info.value
    )
    assert list(target.iterdir()) == []


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_offline_names_the_folder_for_manual_files(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    code = main(
        ["data", "download", "omniglot", "--data-dir", str(tmp_path), "--url", url, "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("reptorch: error: cannot reach") and "offline?" in err
    assert str((tmp_path / "omniglot").resolve()) in err
    assert list((tmp_path / "omniglot").iterdir()) == []


def test_read_only_target_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "omniglot"
    target.mkdir()
    target.chmod(0o555)
    try:
        with pytest.raises(DataError, match="read-only: choose another --data-dir"):
            download_omniglot(target, "http://127.0.0.1:9", progress=False)
    finally:
        target.chmod(0o755)


def test_cli_download(server: Server, omniglot_dir: Path, tmp_path: Path, capsys) -> None:
    args = ["data", "download", "omniglot", "--data-dir", str(tmp_path), "--quiet"]
    assert main([*args, "--url", f"{server.url}/ok"]) == 0
    assert "verified" in capsys.readouterr().out
    assert sha256(tmp_path / "omniglot" / "images_evaluation.zip") == sha256(
        omniglot_dir / "images_evaluation.zip"
    )
