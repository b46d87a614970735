"""Loading the native ops (`reptorch.fast.native`): the compile notice and the fallback."""

from __future__ import annotations

import os
import time
import warnings

import pytest
import torch.utils.cpp_extension as cpp_extension

from reptorch.fast import native


def test_a_compile_is_announced_once_and_a_cached_build_is_silent(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    native._say_if_compiling("reptorch_demo")  # nothing built yet
    err = capsys.readouterr().err
    assert "compiling the native kernels reptorch_demo" in err and str(tmp_path) in err
    built = tmp_path / "reptorch_demo.so"
    built.write_bytes(b"")
    future = time.time() + 60  # newer than every source
    os.utime(built, (future, future))
    native._say_if_compiling("reptorch_demo")
    assert capsys.readouterr().err == ""


def test_disabled_ops_fall_back_without_building(monkeypatch):
    monkeypatch.setenv("REPTORCH_NO_DEMO", "1")
    monkeypatch.setattr(native, "_LOADED", {})

    def no_build(*args, **kwargs):
        pytest.fail("built although disabled")

    monkeypatch.setattr(cpp_extension, "load", no_build)
    assert native.load("reptorch_demo", "op", "REPTORCH_NO_DEMO") is False


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(native, "_LOADED", {})

    def broken(*args, **kwargs):
        raise RuntimeError("g++: not found\nmore")

    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setattr(native, "_say_if_compiling", lambda name: None)
    reason = "native ops reptorch_demo unavailable .*g\\+\\+: not found"
    with pytest.warns(UserWarning, match=reason):
        assert native.load("reptorch_demo", "op", "REPTORCH_NO_DEMO_UNSET") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the second call neither builds nor warns
        assert native.load("reptorch_demo", "op", "REPTORCH_NO_DEMO_UNSET") is False
