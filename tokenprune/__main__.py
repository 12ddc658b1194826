"""`python -m tokenprune` = the `tokenprune` command."""

import sys

from .cli import main

sys.exit(main())
