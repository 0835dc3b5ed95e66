"""``python -m raysim ...`` is the ``raysim`` command (useful in `ray job submit --working-dir .`)."""

import sys

from raysim.cli import main

sys.exit(main())
