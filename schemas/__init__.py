"""The contract between `cpt-prep` and `cpt-train`: manifest + shard schema, configs, errors.

The only package that both `pipeline/` and `trainer/` import.
"""

__version__ = "0.1.0"
