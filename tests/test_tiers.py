"""Every test named in the long tier (`conftest.LONG_TIER`) exists, so none drifts back into the
quick tier by a rename."""

import ast
from pathlib import Path

from tests.conftest import LONG_TIER

HERE = Path(__file__).resolve().parent


def test_every_long_tier_name_exists() -> None:
    for file, names in LONG_TIER.items():
        path = HERE / file
        assert path.is_file(), file
        defined = {
            node.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert set(names or ()) <= defined, (file, set(names or ()) - defined)
