"""Tokenization for `cpt-prep build`: documents -> token ids, each ending with one separator, with the
same ids whichever backend encodes them.

- `load`: loading a transformers tokenizer, its identity for the manifest, its plain-text backend,
  and the cached profile of both (a build with a tokenizer seen before imports no transformers).
- `cache`: the user cache folder of what is computed once per tokenizer (profiles, certificates,
  the fast encoder's token tables); JSON data, checked field by field before use.
- `hf`: the reference encoder, HF `tokenizers` (with the NFC fast path).
- `fast`: tiktoken's BPE built from the same vocabulary (~4x faster), exact where `certificate`
  proves it; documents it cannot vouch for go to `hf`.
- `certificate`: the load-time proof that rank-based BPE equals the tokenizer's merges-based BPE,
  computed once per tokenizer and cached as JSON.
- `crosscheck`: every build re-encodes a seeded sample with `hf` and fails on any difference.
- `backend`: `--tokenizer_backend auto|hf|fast`, the choice and the encoder it gives.

Imported by `pipeline.build` (workers encode, the main process cross-checks), `pipeline.check`
(decoding samples) and `pipeline.shards` users; imports only `schemas`.
"""
