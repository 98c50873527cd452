"""`cpt-train`: continued pre-training from a `cpt-prep` manifest with Accelerate.

Imports `schemas/` only, never `pipeline/`; never reads raw text and never tokenizes."""
