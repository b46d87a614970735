"""The README's library example runs as written (on the shared data, for two iterations)."""

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(omniglot_dir, monkeypatch):
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    assert "range(100)" in code
    code = code.replace("range(100)", "range(2)")
    assert code.count("import ") == 2  # torch and reptorch: the public core is one import
    code = code.replace('"~/data"', repr(os.fspath(omniglot_dir.parent)))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["learner"].iteration == 2
    assert namespace["losses"].shape == (5, 5)
