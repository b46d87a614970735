"""`import reptorch` gives the public core, without importing torch until a name is used."""

from __future__ import annotations

import subprocess
import sys

import reptorch


def test_every_public_name_resolves_to_its_module() -> None:
    assert sorted(reptorch.__all__) == sorted(
        ["__version__", *reptorch._PUBLIC, *reptorch._SUBMODULES]
    )
    for name, module in reptorch._PUBLIC.items():
        value = getattr(reptorch, name)
        assert value is getattr(sys.modules[module], name)
    assert reptorch.pretrained.names()


def test_import_is_lazy() -> None:
    code = "import sys, reptorch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
