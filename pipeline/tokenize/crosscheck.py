"""Every build with the fast backend re-encodes a seeded sample of its documents with HF
`tokenizers` and fails on any difference: the certificate is a proof, this is the evidence.

The reference is HF `tokenizers` as it runs, its normalizer applied to every document (not the NFC
fast path of `pipeline.tokenize.hf`). The sample: the first `SAMPLE_MIN` (100) documents of the
build, plus each later document with probability `SAMPLE_FRACTION` (0.5%), decided by a seeded
hash of its provenance (input index, line), so it is the same whatever the worker count or chunk
size. A difference is a one-line TokenizerError naming the record and the first differing token,
with the way out (`--tokenizer_backend hf`); the build then writes no manifest.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import xxhash

from pipeline.tokenize.hf import DocumentEncoder
from schemas.errors import TokenizerError

SAMPLE_FRACTION = 0.005
SAMPLE_MIN = 100
SAMPLE_SEED = 0x11C0FFEE  # fixed: the sample is part of what a manifest's cross-check means


class CrossCheck:
    """Compares the build's ids with HF's on the sample; counts what it checked."""

    def __init__(self, backend: Any, *, separator_id: int, control_ids: Sequence[int], dtype: str, fraction: float = SAMPLE_FRACTION, minimum: int = SAMPLE_MIN) -> None:
        self._backend = backend  # the plain-text backend, as JSON or as the Tokenizer (hf.DocumentEncoder)
        self._encoder_args = {"separator_id": separator_id, "control_ids": list(control_ids), "dtype": dtype}
        self._hf: Optional[DocumentEncoder] = None
        self._limit = int(fraction * 2**64)
        self._minimum = minimum
        self.num_seen = 0
        self.num_checked = 0

    def pick(self, provenance: Sequence[tuple[int, int]]) -> list[int]:
        """Positions of the sampled documents among the next ones, `(input index, line)` each."""
        picked = []
        for k, (source, line) in enumerate(provenance):
            first = self.num_seen + k < self._minimum
            if first or xxhash.xxh64_intdigest(f"{source}:{line}".encode(), seed=SAMPLE_SEED) < self._limit:
                picked.append(k)
        self.num_seen += len(provenance)
        return picked

    def check(self, provenance: Sequence[tuple[int, int]], texts_of: Callable[[list[int]], list[str]], ids: np.ndarray, offsets: np.ndarray, *, source_names: Sequence[str] = ()) -> None:
        """Check the sampled documents among the next ones (document k is `ids[offsets[k]:offsets[k+1]]`;
        `texts_of(positions)` gives their texts)."""
        picked = self.pick(provenance)
        if not picked:
            return
        if self._hf is None:
            self._hf = DocumentEncoder(self._backend, **self._encoder_args, nfc_fast_path=False)  # HF exactly as it runs: NFC on every document
        ref_ids, ref_offsets = self._hf.encode(texts_of(picked))
        for j, k in enumerate(picked):
            ours, theirs = ids[offsets[k] : offsets[k + 1]], ref_ids[ref_offsets[j] : ref_offsets[j + 1]]
            if len(ours) != len(theirs) or not np.array_equal(ours, theirs):
                source, line = provenance[k]
                n = min(len(ours), len(theirs))
                at = int(np.argmax(ours[:n] != theirs[:n])) if n and (ours[:n] != theirs[:n]).any() else n
                name = source_names[source] if source < len(source_names) else f"input {source}"
                raise TokenizerError(
                    f"tokenizer cross-check failed: the fast backend's ids differ from HF tokenizers' for {name} line {line} "
                    f"(first difference at token {at}: {ours[at] if at < len(ours) else 'end'} vs {theirs[at] if at < len(theirs) else 'end'}); "
                    "rerun with --tokenizer_backend hf and report the tokenizer"
                )
        self.num_checked += len(picked)
