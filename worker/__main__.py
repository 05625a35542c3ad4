"""`python -m worker ...` is the `embedstream` console script."""

import sys

from worker.cli import main

sys.exit(main())
