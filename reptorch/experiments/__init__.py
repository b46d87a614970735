"""The paper's experiments as library functions (the CLI only maps flags to them)."""
