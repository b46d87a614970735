"""`python -m reptorch`: the command line (what `torchrun ... -m reptorch train ...` starts)."""

import sys

from reptorch.cli import main

sys.exit(main())
