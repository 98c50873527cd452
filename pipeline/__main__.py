"""`python -m pipeline` is `cpt-prep`."""

import sys

from pipeline.cli import main

sys.exit(main())
