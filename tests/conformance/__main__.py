"""``python -m tests.conformance [suite ...]``: run the frameworks' own tests against the adapters."""

import sys

from tests.conformance.harness import main

sys.exit(main(sys.argv[1:]))
