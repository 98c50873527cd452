"""`cpt-prep`: read, filter, deduplicate and tokenize a corpus into Arrow token shards + manifest.

Imports `schemas/` only, never `trainer/`, and no torch model code."""
