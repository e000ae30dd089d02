"""``python -m convdb``: the DBA command (see ``convdb.cli``)."""

import sys

from .cli import main

sys.exit(main())
