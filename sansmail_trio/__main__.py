"""``python -m sansmail_trio``: the same as the `sansmail-trio` command."""

import sys

from sansmail_trio._cli import main

sys.exit(main())
