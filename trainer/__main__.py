"""`python -m trainer ...` = `cpt-train ...` (handy under `accelerate launch -m trainer`)."""

import sys

from trainer.cli import main

sys.exit(main())
