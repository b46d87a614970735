"""Benchmarks for reptorch (run `python -m bench.run --help`); results go to docs/benchmarks.md."""
