"""`python -m pipeline` is `cpt-prep`."""

from pipeline.cli import entry

entry()
