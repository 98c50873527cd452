"""The contract between `cpt-prep` and `cpt-train`: what both programs must agree on, and nothing else.

- `manifest`: the manifest + Arrow shard schema (`SCHEMA_VERSION`), reading and writing it, path
  safety, and the file-level verification (size, sha256) both programs run.
- `config`: the one config tree (`training`, `model`, `data`), its validation and the flag parser.
- `tokenizer`: the tokenizer's identity (fingerprint, separator, control tokens), duck-typed.
- `errors`: the one-line error family and the exit codes.

The only package that both `pipeline/` and `trainer/` import; it imports neither of them, and no
model code (pyarrow and the standard library only).
"""

__version__ = "0.1.0"
