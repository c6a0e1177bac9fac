"""`python -m proxy`: the same as the `pkproxy` command."""

import sys

from proxy.cli import main

sys.exit(main())
