"""`python -m realrun.cli ...`: the `ltd` command without its console script."""

import sys

from realrun.cli import main

sys.exit(main())
