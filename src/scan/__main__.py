"""`python -m scan ...` is the `scan` command (and `torchrun -m scan ...` launches it)."""

import sys

from scan.cli.main import main

sys.exit(main())
