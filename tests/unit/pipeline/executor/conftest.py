"""The executor tests build with the small real BPE tokenizer of the build tests."""

from tests.unit.pipeline.build.test_run import bpe_dir  # noqa: F401 (a module-scoped fixture)
