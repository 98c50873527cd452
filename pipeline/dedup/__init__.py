"""Deduplication: which documents are the same or nearly the same (no order of its own).

- `minhash`: word / CJK-character shingles of the normalized text, 64-bit shingle hashes and
  batched MinHash signatures (112 permutations by default), plus the reference shingling the
  tests compare against.
- `lsh`: band hashes of signatures (14 bands x 8 rows by default, threshold ~0.72), the in-memory
  `NearDuplicateIndex` that keeps the first document of every band (~400 bytes per kept
  document; `cpt-prep check` uses it), and the shared `PowerTable` / `fmix64` hashing helpers.
- `collisions`: the build's bounded-memory search: per-chunk sorted hash files (exact keys and
  band hashes) in the staging folder, merged per hash range into the colliding documents only.

Imported by `pipeline.build` (the build's scan, merge and outcomes) and `pipeline.check` (the
near-duplicate re-check and row hashes); imports only `pipeline.normalize` and numpy.
"""
