"""The certificate: what it proves on real tokenizers, what it refuses and why, and its cache."""

from __future__ import annotations

import json

import pytest

from pipeline.tokenize import certificate as cert_mod
from pipeline.tokenize.certificate import Certificate, certify, compute_certificate, read_certificate
from pipeline.tokenize.load import plain_text_backend_json


def test_rank_bpe_rebuild_check_on_a_tiny_vocabulary():
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"abc": 257, b"bc": 258})
    listed = {(b"a", b"b"), (b"ab", b"c"), (b"b", b"c")}
    assert cert_mod._rank_bpe_rebuilds(b"abc", ranks, listed)
    assert not cert_mod._rank_bpe_rebuilds(b"abc", ranks, {(b"a", b"b"), (b"b", b"c")})  # (ab, c) unlisted: (b) fails
    ranks[b"zz"] = 259
    assert not cert_mod._rank_bpe_rebuilds(b"zzz", {**ranks, b"zzz": 260}, listed | {(b"z", b"z")})  # zz + z is no token: (c) fails


def test_deleted_merges_make_their_tokens_suspect(deleted_merges_tokenizer, qwen_tokenizer):
    """150 merges deleted: the tokens they made (and tokens built through them) can no longer be
    vouched for; everything else still can."""
    spec = json.loads(plain_text_backend_json(deleted_merges_tokenizer))
    cert = certify(plain_text_backend_json(deleted_merges_tokenizer))
    assert cert.certified and cert.num_merges == 151387 - 150
    vocab = spec["model"]["vocab"]
    original = json.loads(plain_text_backend_json(qwen_tokenizer))["model"]["merges"]
    doomed = [vocab["".join(m)] for i, m in enumerate(original) if i in range(1000, 16000, 100)]
    assert set(doomed) <= set(cert.suspect_token_ids)
    assert len(cert.suspect_token_ids) < 20_000  # tokens that never touch a deleted merge stay trusted


def test_merges_out_of_rank_order_are_refused(qwen_backend_json):
    spec = json.loads(qwen_backend_json)
    merges = spec["model"]["merges"]
    merges[500], merges[501] = merges[501], merges[500]
    cert = compute_certificate(json.dumps(spec))
    assert not cert.certified and "rank order is not merge order" in cert.reason and "merge 501" in cert.reason


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda s: s["model"].update(type="WordPiece"), "model type 'WordPiece' is not BPE"),
        (lambda s: s["model"].update(dropout=0.1), "dropout"),
        (lambda s: s.update(normalizer={"type": "NFKC"}), "normalizer 'NFKC'"),
        (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "pre-tokenizer type 'Whitespace'"),
        (lambda s: s["pre_tokenizer"]["pretokenizers"][1].update(add_prefix_space=True), "pre-tokenizer sequence"),
    ],
)
def test_unsupported_structure_is_refused_with_the_reason(qwen_backend_json, change, reason):
    spec = json.loads(qwen_backend_json)
    change(spec)
    cert = compute_certificate(json.dumps(spec))
    assert not cert.certified and reason in cert.reason


def test_cached_certificate_is_reused_and_a_tampered_one_is_not(qwen_backend_json, qwen_certificate, certificate_cache):
    path = cert_mod.cache_dir() / f"{qwen_certificate.key}.json"
    assert str(path).startswith(str(certificate_cache)) and path.is_file()
    assert certify(qwen_backend_json) == qwen_certificate
    assert read_certificate(path, "0" * 64) is None  # another backend's key
    raw = json.loads(path.read_text())
    for bad in ({**raw, "suspect_token_ids": ["__import__('os')"]}, {**raw, "reference_code_points": [0x110000]}, {**raw, "extra": 1}, [raw]):
        path.write_text(json.dumps(bad))
        assert read_certificate(path, qwen_certificate.key) is None
    path.write_text("{not json")
    assert read_certificate(path, qwen_certificate.key) is None
    path.write_text(json.dumps(raw))
    assert isinstance(read_certificate(path, qwen_certificate.key), Certificate)


def test_key_depends_on_the_backend_and_the_engines(qwen_backend_json):
    assert cert_mod.certificate_key(qwen_backend_json) != cert_mod.certificate_key(qwen_backend_json + " ")
    assert "tiktoken" in cert_mod.engine_versions() and "unicodedata" in cert_mod.engine_versions()
