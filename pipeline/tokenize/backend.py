"""`--tokenizer_backend auto|hf|fast`: which encoder a build uses, and the encoder itself.

- `hf`: HF `tokenizers` (`pipeline.tokenize.hf`), the reference.
- `fast`: tiktoken (`pipeline.tokenize.fast`); a tokenizer the certificate cannot prove exact is a
  one-line TokenizerError naming the reason.
- `auto` (the default): fast when the certificate holds, else HF with a one-line notice saying why.
Whichever runs, the ids are HF's: the tokenizer's identity in the manifest (its fingerprint) does
not depend on the backend, and only `Manifest.tokenization` records which one ran.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from pipeline.tokenize.certificate import Certificate, certify
from pipeline.tokenize.hf import DocumentEncoder
from schemas.config import TOKENIZER_BACKENDS
from schemas.errors import TokenizerError
from schemas.manifest import TokenizerInfo, token_dtype_for_vocab

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendChoice:
    """The backend a build uses and why."""

    requested: str  # auto | hf | fast
    backend: str  # hf | fast: what encodes
    certificate: Optional[Certificate]  # None when `hf` was requested (nothing to prove)
    notice: str = ""  # one line when `auto` fell back to HF


def choose_backend(backend_json: str, requested: str) -> BackendChoice:
    """Decide the backend for a plain-text backend JSON (computes or loads the certificate)."""
    if requested not in TOKENIZER_BACKENDS:
        raise TokenizerError(f"tokenizer backend {requested!r} is unknown; use one of {', '.join(TOKENIZER_BACKENDS)}")
    if requested == "hf":
        return BackendChoice(requested, "hf", None)
    cert = certify(backend_json)
    if cert.certified:
        return BackendChoice(requested, "fast", cert)
    if requested == "fast":
        raise TokenizerError(f"--tokenizer_backend fast: the fast backend cannot be proven exact for this tokenizer ({cert.reason}); use --tokenizer_backend auto or hf")
    notice = f"tokenizer backend: HF tokenizers, since the fast backend cannot be proven exact for this tokenizer ({cert.reason})"
    return BackendChoice(requested, "hf", cert, notice)


def build_encoder(
    backend_json: Union[str, Path], certificate: Optional[Certificate], *, separator_id: int, control_ids: Sequence[int], dtype: str,
    tokens: Optional[Sequence[bytes]] = None,
) -> Any:
    """The fast encoder when `certificate` certifies this backend, else the HF one; same interface:
    `encode(texts) -> (ids, offsets)`. `backend_json`: the JSON, or the file that holds it (read
    only when HF is needed); `tokens`: the backend's token table (`fast.token_table`), which spares
    the fast encoder parsing the JSON."""
    if certificate is None or not certificate.certified:
        if isinstance(backend_json, Path):
            backend_json = backend_json.read_text(encoding="utf-8")
        return DocumentEncoder(backend_json, separator_id=separator_id, control_ids=control_ids, dtype=dtype)
    import json

    from pipeline.tokenize.fast import FastDocumentEncoder, build_encoding, encoding_from_table

    if tokens is not None:
        encoding = encoding_from_table(tokens, certificate.pattern)
    else:
        if isinstance(backend_json, Path):
            backend_json = backend_json.read_text(encoding="utf-8")
        encoding = build_encoding(json.loads(backend_json), certificate.pattern)
    return FastDocumentEncoder(
        backend_json,
        encoding=encoding,
        reference_table=certificate.reference_table(),
        suspect_ids=certificate.suspect_token_ids,
        separator_id=separator_id,
        control_ids=control_ids,
        dtype=dtype,
    )


def make_encoder(tokenizer: Any, info: TokenizerInfo, *, backend: str = "hf") -> Any:
    """An encoder for `tokenizer` in this process (for in-process use and tests)."""
    from pipeline.tokenize.load import plain_text_backend_json

    backend_json = plain_text_backend_json(tokenizer)
    choice = choose_backend(backend_json, backend)
    if choice.notice:
        logger.info("%s", choice.notice)
    certificate = choice.certificate if choice.backend == "fast" else None
    return build_encoder(backend_json, certificate, separator_id=info.separator_id, control_ids=info.control_token_ids, dtype=token_dtype_for_vocab(info.vocab_size))
