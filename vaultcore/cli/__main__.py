"""`python -m vaultcore.cli`: the same command as the `vaultproxy` console script."""

import sys

from vaultcore.cli import main

sys.exit(main())
