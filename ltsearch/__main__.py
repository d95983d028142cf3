"""`python -m ltsearch ...` is the same as `ltsearch ...`."""

import sys

from ltsearch.cli import main

sys.exit(main())
