"""The certificate: a load-time proof that the fast encoder (tiktoken, rank = id) gives the same ids
as the tokenizer's HF backend, or the reason it cannot be given.

What it checks, from the plain-text backend (`pipeline.tokenize.load.plain_text_backend_json`):
- structure: a byte-level BPE model (no dropout, no unknown token, no subword prefix or suffix,
  no byte fallback, merges not ignored), normalizer none or NFC, a pre-tokenizer tiktoken
  reproduces (`fast.pre_tokenizer_pattern`), post-processing that adds nothing without special
  tokens, every byte a token, every token in the byte-level alphabet;
- (a) the ids that the merges make rise with the merge index (id 256 + i for merge i in Qwen2), so
  rank order is merge order (and no two merges make the same token);
- (b) for every token, rank-based BPE over its own bytes applies only listed merges, and (c) it
  ends in that very token (every token is reachable; tiktoken also emits a whole pre-token that is
  a token directly, which HF does only when the merges rebuild it).
Why that suffices: in any pre-token, the merges rank-BPE makes inside the span of an output token
are the ones it makes on that token's bytes alone (a merge across the span would have ended the
span), so when no output token is suspect ((b) or (c) fails for it), every merge taken was a listed
one; a listed merge is also HF's lowest-ranked candidate (HF's candidates are a subset, ranked in
the same order by (a)), ties go leftmost in both, and both stop together. Tokens that fail (b) or
(c) are recorded (`suspect_token_ids`): a document whose fast ids hold one goes to HF.

What is left is Unicode: the regex classes (`\\p{L}`, `\\p{N}`, `\\s`) of tiktoken's regex engine
and HF's (Oniguruma) come from different Unicode versions. The probe encodes every assigned,
NFC-inert code point of this Python's Unicode database in short contexts (letters, digits, space,
apostrophe, newline around it) with both encoders; a code point on which they differ joins the
reference table (`reference_code_points`), with the NFC-active and unassigned ones, and documents
holding one go to HF. A difference on an ASCII character means the engines disagree on the regex
itself: no certificate.

Computed once per tokenizer (~15 s for Qwen2's 151,643 tokens, mostly the probe) and cached as JSON
(`pipeline.tokenize.cache`, kind `certificates`), keyed by the sha256 of the backend JSON and the
versions of tiktoken, tokenizers and the Unicode database. A cache file is data, never code: it is
used only when every field has the expected type and its key matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.tokenize import cache, fast
from pipeline.tokenize.hf import nfc_active_table

CERTIFICATE_VERSION = 1  # bump when the checks change: older cache files are then ignored
_PROBE_BATCH = 4096
_UNPROBED_FROM = 0xF0000  # planes 15-16 hold only private-use characters: not probed, always sent to HF


@dataclass
class Certificate:
    """The outcome of the checks for one tokenizer backend (JSON-serializable)."""

    key: str  # sha256 of the backend JSON and the engine versions (the cache key)
    certified: bool  # the fast encoder may be used (with the routing below)
    reason: str  # why not, when not certified ("" when certified)
    engine: str  # e.g. "tiktoken 0.12.0, tokenizers 0.22.1, unicodedata 14.0.0"
    num_tokens: int = 0
    num_merges: int = 0
    pattern: str = ""  # the pre-tokenizer regex the fast encoder uses
    suspect_token_ids: list[int] = field(default_factory=list)  # (b) or (c) fails: documents holding one go to HF
    reference_code_points: list[int] = field(default_factory=list)  # the probe found the engines differ here
    num_probed_code_points: int = 0

    def summary(self) -> dict[str, Any]:
        """What the manifest records (the lists as counts)."""
        return {
            "version": CERTIFICATE_VERSION,
            "certified": self.certified,
            "reason": self.reason,
            "engine": self.engine,
            "key": self.key,
            "num_tokens": self.num_tokens,
            "num_merges": self.num_merges,
            "num_suspect_tokens": len(self.suspect_token_ids),
            "num_probed_code_points": self.num_probed_code_points,
            "num_probe_mismatches": len(self.reference_code_points),
        }

    def reference_table(self) -> np.ndarray:
        """bool per code point: True where a document holding it goes to HF."""
        table = nfc_active_table().copy()
        table[_UNPROBED_FROM:] = True
        if self.reference_code_points:
            table[np.asarray(self.reference_code_points, dtype=np.int64)] = True
        return table


def engine_versions() -> str:
    import tiktoken
    import tokenizers

    return f"tiktoken {tiktoken.__version__}, tokenizers {tokenizers.__version__}, unicodedata {unicodedata.unidata_version}"


def certificate_key(backend_json: str) -> str:
    h = hashlib.sha256()
    h.update(f"cpt-certificate {CERTIFICATE_VERSION}; {engine_versions()}\0".encode())
    h.update(backend_json.encode("utf-8"))
    return h.hexdigest()


def cache_dir() -> Path:
    """Where certificates are cached (`pipeline.tokenize.cache`)."""
    return cache.cache_folder("certificates")


def certify(backend_json: str) -> Certificate:
    """The certificate for this backend: from the cache when present and valid, else computed and
    cached."""
    key = certificate_key(backend_json)
    cached = read_certificate(cache_dir() / f"{key}.json", key)
    if cached is not None:
        return cached
    cert = compute_certificate(backend_json, key=key)
    cache.store("certificates", key, dataclasses.asdict(cert))
    return cert


def write_certificate(cert: Certificate, path: Path) -> None:
    """Write `cert` as JSON to `path` atomically (temporary name + rename)."""
    cache.write_json_atomic(path, dataclasses.asdict(cert))


def read_certificate(path: Path, key: Optional[str] = None) -> Optional[Certificate]:
    """The certificate in `path`, or None when it is missing, malformed or (given `key`) for
    another backend."""
    raw = cache.read_json(path)
    types = {f.name: f.type for f in dataclasses.fields(Certificate)}
    if not isinstance(raw, dict) or set(raw) != set(types) or (key is not None and raw.get("key") != key):
        return None
    expected = {"key": str, "certified": bool, "reason": str, "engine": str, "num_tokens": int, "num_merges": int, "pattern": str, "num_probed_code_points": int}
    if not all(isinstance(raw[name], kind) for name, kind in expected.items()):
        return None
    for name, limit in (("suspect_token_ids", raw["num_tokens"]), ("reference_code_points", 0x110000)):
        values = raw[name]
        if not isinstance(values, list) or not all(type(v) is int and 0 <= v < limit for v in values):
            return None
    return Certificate(**raw)


def compute_certificate(backend_json: str, *, key: Optional[str] = None) -> Certificate:
    """Run every check (see the module docstring); never raises for an unsupported tokenizer."""
    key = key or certificate_key(backend_json)
    engine = engine_versions()
    backend = json.loads(backend_json)

    def refuse(reason: str, **extra: Any) -> Certificate:
        return Certificate(key=key, certified=False, reason=reason, engine=engine, **extra)

    problem = _structure_problem(backend)
    if problem:
        return refuse(problem)
    pattern, why = fast.pre_tokenizer_pattern(backend.get("pre_tokenizer"))
    if pattern is None:
        return refuse(why)
    vocab: dict[str, int] = backend["model"]["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in backend["model"]["merges"]]
    counts = {"num_tokens": len(vocab), "num_merges": len(merges), "pattern": pattern}
    raw: dict[int, bytes] = {}
    for token, token_id in vocab.items():
        b = fast.token_bytes(token)
        if b is None:
            return refuse(f"token {token!r} is not in the byte-level alphabet", **counts)
        raw[int(token_id)] = b
    if sorted(raw) != list(range(len(raw))):
        return refuse("token ids are not 0 .. vocab size - 1", **counts)
    ranks = {b: i for i, b in raw.items()}
    if len(ranks) != len(raw):
        return refuse("two tokens stand for the same bytes", **counts)
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        return refuse(f"byte 0x{missing[0]:02x} is not a token", **counts)
    # (a) the ids that merges make rise with the merge index (256 + i when no merge is missing).
    listed: set[tuple[bytes, bytes]] = set()
    previous = 255
    for i, pair in enumerate(merges):
        if len(pair) != 2 or pair[0] not in vocab or pair[1] not in vocab:
            return refuse(f"merge {i} ({pair!r}) joins tokens outside the vocabulary", **counts)
        left, right = raw[vocab[pair[0]]], raw[vocab[pair[1]]]
        made = ranks.get(left + right)
        if made is None or made <= previous:
            return refuse(f"merge {i} ({pair[0]!r} + {pair[1]!r}) makes id {made}, not above the previous merge's {previous}: rank order is not merge order", **counts)
        previous = made
        listed.add((left, right))
    # (b) + (c) per token.
    suspect = [token_id for token_id, b in raw.items() if len(b) > 1 and not _rank_bpe_rebuilds(b, ranks, listed)]
    try:
        encoding = fast.build_encoding(backend, pattern)
    except ValueError as exc:
        return refuse(str(exc), **counts)
    mismatches, probed = _probe(backend_json, encoding)
    if any(cp < 0x80 for cp in mismatches):
        return refuse(f"tiktoken's regex splits ASCII text differently from HF's (code point {min(mismatches)})", **counts)
    return Certificate(key=key, certified=True, reason="", engine=engine, suspect_token_ids=sorted(suspect), reference_code_points=mismatches, num_probed_code_points=probed, **counts)


def _structure_problem(backend: dict) -> str:
    model = backend.get("model") or {}
    if model.get("type") != "BPE":
        return f"model type {model.get('type')!r} is not BPE"
    if model.get("dropout") not in (None, 0, 0.0):
        return "BPE dropout is on"
    if model.get("unk_token") is not None or model.get("byte_fallback"):
        return "BPE with an unknown token or byte fallback"
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return "BPE with a subword prefix or suffix"
    if model.get("ignore_merges"):
        return "BPE with ignore_merges"
    normalizer = backend.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        return f"normalizer {normalizer.get('type')!r} (only none or NFC is reproduced)"
    post = backend.get("post_processor")
    if post is not None and post.get("type") not in ("ByteLevel", "TemplateProcessing"):
        return f"post-processor {post.get('type')!r}"
    if backend.get("added_tokens"):
        return "added tokens in the plain-text backend"
    return ""


def _rank_bpe_rebuilds(b: bytes, ranks: dict[bytes, int], listed: set[tuple[bytes, bytes]]) -> bool:
    """Rank-based BPE over `b`'s bytes (lowest rank first, leftmost on ties, as tiktoken's
    `byte_pair_merge`) takes only listed merges and ends in the single token `b`."""
    none = len(ranks) + 1  # above every rank: "no token for this pair"
    starts = list(range(len(b) + 1))  # part k is b[starts[k]:starts[k+1]]
    pair_ranks = [ranks.get(b[i : i + 2], none) for i in range(len(b) - 1)]
    while pair_ranks:
        best = min(pair_ranks)
        if best == none:
            return False  # stuck before reaching the token: (c) fails
        k = pair_ranks.index(best)  # the leftmost lowest
        if (b[starts[k] : starts[k + 1]], b[starts[k + 1] : starts[k + 2]]) not in listed:
            return False  # an unlisted merge: (b) fails
        del starts[k + 1]
        del pair_ranks[k]
        if k > 0:
            pair_ranks[k - 1] = ranks.get(b[starts[k - 1] : starts[k + 1]], none)
        if k < len(pair_ranks):
            pair_ranks[k] = ranks.get(b[starts[k] : starts[k + 2]], none)
    return True


def probe_text(ch: str) -> str:
    """A short context that exercises a character's regex class on both sides."""
    return f"x{ch}x {ch}1{ch}'{ch} {ch}{ch}\n"


def _probe(backend_json: str, encoding: Any) -> tuple[list[int], int]:
    """(code points where tiktoken and HF give different ids on `probe_text`, how many probed)."""
    from tokenizers import Tokenizer

    active = nfc_active_table()
    candidates = [cp for cp in range(_UNPROBED_FROM) if not active[cp]]
    hf = Tokenizer.from_str(backend_json)
    hf.normalizer = None  # the probe texts are NFC-inert: NFC leaves them as they are (hf.DocumentEncoder)
    mismatches: list[int] = []
    for lo in range(0, len(candidates), _PROBE_BATCH):
        cps = candidates[lo : lo + _PROBE_BATCH]
        texts = [probe_text(chr(cp)) for cp in cps]
        reference = hf.encode_batch_fast(texts, add_special_tokens=False)
        for cp, text, ref in zip(cps, texts, reference):
            if fast.encode_ids(encoding, text).tolist() != ref.ids:
                mismatches.append(cp)
    return mismatches, len(candidates)
