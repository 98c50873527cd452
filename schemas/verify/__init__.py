"""Structural verification of a data set (manifest + shards): the one implementation of every
rule that costs one pass or less over the data, run by `cpt-prep check` (pipeline/check/) and by
`cpt-train` before its first step (trainer/verify.py), so both refuse the same data set with the
same one-line reason.

- `results`: `RuleResult` (one rule applied to one place, with pass/fail/skip) and its collector.
- `rows`: the vectorised per-row inspection of token ids (separator at the end, control tokens
  inside, ids below the vocabulary, lengths) over groups of Arrow record batches.
- `scan`: one pass over every listed file: present, size, sha256, each shard listed once, readable
  with the shard schema and token dtype, the row rules, provenance and per-shard totals.
- `dataset`: `verify_dataset`, the scan plus split totals and the accounting (records in = kept +
  dropped, kept = split documents, the drop log agrees, one outcome per input record).

Part of the contract: imports `schemas/` and numpy/pyarrow only; both `pipeline/` and `trainer/` may
import it. Quality rules (thresholds a user sets) stay in pipeline/check/.
"""
