"""`python -m harness.cli`: the same as `lvol-storm`."""

import sys

from harness.cli import main

sys.exit(main())
