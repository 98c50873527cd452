"""The fast encoder against HF `tokenizers`, differentially: the same ids on the bundled sample (real
English and Chinese) and on adversarial Unicode, control-token strings as plain text, and the
routing to HF of what the certificate does not cover."""

from __future__ import annotations

import random
import unicodedata

import numpy as np
import pytest

from pipeline.tokenize.backend import build_encoder
from pipeline.tokenize.fast import FastDocumentEncoder, build_encoding, byte_decoder, encode_ids, token_bytes
from pipeline.tokenize.hf import DocumentEncoder
from schemas.tokenizer import control_token_ids
from tests.conftest import DATA_DIR

ENDOFTEXT_ID = 151643

# Decomposed accents, combining marks (stacked, reordered), Hangul jamo and syllables, emoji
# sequences (ZWJ, flags, skin tones, keycaps), digits of several scripts, whitespace runs, CRLF,
# and text that spells control tokens.
ADVERSARIAL = [
    "cafe\u0301 na\u0308ive e\u0301\u0323 e\u0323\u0301 A\u030a \u212b",
    "Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o\u0358 \u0300\u0301 leading marks",
    "\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af \ud55c\uad6d\uc5b4 \u3131\u314f",
    "\U0001f469\u200d\U0001f4bb \U0001f1e9\U0001f1ea \U0001f44d\U0001f3fd 1\ufe0f\u20e3 \u2764\ufe0f\U0001fae8",
    "0123456789 \u0660\u0661\u0662 \u0966\u0967 \uff11\uff12\uff13 \u2460\u2461 12,345.67 1e-9",
    "tabs\t\tand  spaces   \u3000\u3000ideographic\u00a0nbsp \u2003em \u200bzwsp",
    "line one\r\nline two\r\n\r\n\rlone cr\n\n\nthree newlines   \n  trailing   ",
    "<|endoftext|> <|im_start|>user\nhi<|im_end|> <tool_call>{}</tool_call> <|fim_prefix|>x<|fim_suffix|>",
    "It's we'll they've I'D YOU'RE don\u2019t 'S 'LL",
    "\u4e2d\u6587\u53e5\u5b50\uff0c\u6ca1\u6709\u7a7a\u683c\u3002\u6df7\u5408 English \u548c\u4e2d\u6587\u3002\U00020000\U0002a6d6",
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "\ufb01 \u01c4 \u2126 \u00b5 \u1e9e\u00df \u0130\u0131 \u03a3\u03c3\u03c2",
    "",
    " ",
    "\n",
    "\x00\x01\x7f control \x1b[0m bytes",
]


def random_unicode(rng: random.Random, n: int) -> list[str]:
    """Random strings over assigned code points of every plane in use, with ASCII glue."""
    glue = list(" \n\r\t'.,0123456789abcXYZ")
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.4:
                chars.append(rng.choice(glue))
            else:
                cp = rng.choice((rng.randint(0x80, 0x2FFF), rng.randint(0x3000, 0xFFFF), rng.randint(0x10000, 0x3FFFF)))
                if not 0xD800 <= cp < 0xE000 and unicodedata.category(chr(cp)) != "Cn":
                    chars.append(chr(cp))
        out.append("".join(chars))
    return out


@pytest.fixture(scope="module")
def encoders(qwen_tokenizer, qwen_backend_json, qwen_certificate):
    controls = control_token_ids(qwen_tokenizer)
    hf = DocumentEncoder(qwen_backend_json, separator_id=ENDOFTEXT_ID, control_ids=controls)
    fast = build_encoder(qwen_backend_json, qwen_certificate, separator_id=ENDOFTEXT_ID, control_ids=controls, dtype="uint32")
    assert isinstance(fast, FastDocumentEncoder)
    return hf, fast


def assert_same_ids(hf, fast, texts):
    ids, offsets = fast.encode(texts)
    ref_ids, ref_offsets = hf.encode(texts)
    assert np.array_equal(offsets, ref_offsets)
    assert ids.dtype == ref_ids.dtype and np.array_equal(ids, ref_ids)
    return ids, offsets


def test_qwen2_is_certified_with_nothing_left_to_hf(qwen_certificate):
    assert qwen_certificate.certified, qwen_certificate.reason
    assert qwen_certificate.num_tokens == 151643 and qwen_certificate.num_merges == 151387
    assert qwen_certificate.suspect_token_ids == [] and qwen_certificate.reference_code_points == []
    assert qwen_certificate.num_probed_code_points > 100_000


def test_same_ids_on_the_bundled_sample(encoders):
    hf, fast = encoders
    texts = []
    for name in ("train.txt", "eval.txt"):
        texts += (DATA_DIR / "sample" / name).read_text(encoding="utf-8").splitlines()
    assert len(texts) > 2000 and any("\u4e00" <= ch <= "\u9fff" for ch in texts[0] + texts[-1] + "".join(texts[:50]))
    before = fast.num_reference_documents
    assert_same_ids(hf, fast, texts)
    assert fast.num_reference_documents - before < len(texts) * 0.01  # nearly all of it went the fast way


def test_same_ids_on_adversarial_unicode(encoders, qwen_tokenizer):
    hf, fast = encoders
    ids, offsets = assert_same_ids(hf, fast, ADVERSARIAL)
    for k, text in enumerate(ADVERSARIAL):  # and the transformers tokenizer's own ids, where it has no added-token table to apply
        if "<|" not in text and "<tool_call>" not in text:
            assert ids[offsets[k] : offsets[k + 1] - 1].tolist() == qwen_tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_same_ids_on_random_unicode(encoders):
    hf, fast = encoders
    texts = random_unicode(random.Random(11), 3000)
    before = fast.num_reference_documents
    assert_same_ids(hf, fast, texts)
    routed = fast.num_reference_documents - before
    assert 0 < routed < len(texts)  # NFC-active text went to HF, the rest did not


def test_fast_path_itself_agrees_on_nfc_inert_text(encoders, qwen_backend_json, qwen_certificate):
    """The tiktoken encoding alone (no routing) on text it is trusted with: the differential core."""
    hf, _ = encoders
    encoding = build_encoding(__import__("json").loads(qwen_backend_json), qwen_certificate.pattern)
    table = qwen_certificate.reference_table()
    texts = [t for t in ADVERSARIAL + random_unicode(random.Random(5), 2000) if not table[[ord(c) for c in t]].any()]
    assert len(texts) > 500
    ref_ids, ref_offsets = hf.encode(texts)
    for k, text in enumerate(texts):
        ours = encode_ids(encoding, text)
        assert ours.dtype == np.uint32 and ours.tolist() == encoding.encode_ordinary(text) == ref_ids[ref_offsets[k] : ref_offsets[k + 1] - 1].tolist(), text


def test_control_token_strings_stay_plain_text(encoders, qwen_tokenizer):
    _, fast = encoders
    controls = set(control_token_ids(qwen_tokenizer))
    strings = [tok.content for tok in qwen_tokenizer.added_tokens_decoder.values()]
    texts = [f"before {s} after" for s in strings] + ["".join(strings)]
    ids, offsets = fast.encode(texts)
    for k, text in enumerate(texts):
        doc = ids[offsets[k] : offsets[k + 1]].tolist()
        assert doc[-1] == ENDOFTEXT_ID and not set(doc[:-1]) & controls
        assert qwen_tokenizer.decode(doc[:-1]) == text


def test_byte_map_covers_every_byte_once():
    decoder = byte_decoder()
    assert sorted(decoder.values()) == list(range(256)) and len(decoder) == 256
    assert token_bytes("\u0120hello") == b" hello" and token_bytes("\u010a") == b"\n"
    assert token_bytes("\u4e2d") is None  # not a byte-level character


def test_suspect_tokens_send_their_documents_to_hf(deleted_merges_tokenizer):
    """With merges deleted, the fast ids of some documents hold tokens the merges no longer make;
    those documents are encoded by HF, and every id equals HF's."""
    from pipeline.tokenize.certificate import certify
    from pipeline.tokenize.load import plain_text_backend_json

    backend_json = plain_text_backend_json(deleted_merges_tokenizer)
    cert = certify(backend_json)
    assert cert.certified and len(cert.suspect_token_ids) >= 150
    controls = control_token_ids(deleted_merges_tokenizer)
    hf = DocumentEncoder(backend_json, separator_id=ENDOFTEXT_ID, control_ids=controls)
    fast = build_encoder(backend_json, cert, separator_id=ENDOFTEXT_ID, control_ids=controls, dtype="uint32")
    texts = (DATA_DIR / "sample" / "train.txt").read_text(encoding="utf-8").splitlines()
    assert_same_ids(hf, fast, texts)
    assert 0.05 * len(texts) < fast.num_reference_documents < len(texts)


def test_token_table_gives_the_same_encoding_and_a_bad_one_is_refused(qwen_backend_json, qwen_certificate, tmp_path, monkeypatch):
    """The workers' token table (cached, then handed over as a file) builds the very Encoding that
    parsing the backend JSON builds; a table for another key, size or with a repeated token is refused."""
    import json

    from pipeline.tokenize.cache import write_json_atomic
    from pipeline.tokenize.fast import encoding_from_table, read_token_table, token_table, token_table_entry

    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "cache"))
    key = qwen_certificate.key
    tokens = token_table(qwen_backend_json, key)
    assert token_table(qwen_backend_json, key) == tokens and list((tmp_path / "cache" / "fast-vocab").glob("*.json"))  # the second from the cache
    reference = build_encoding(json.loads(qwen_backend_json), qwen_certificate.pattern)
    assert encoding_from_table(tokens, qwen_certificate.pattern)._mergeable_ranks == reference._mergeable_ranks
    path = tmp_path / "table.json"
    write_json_atomic(path, token_table_entry(tokens, key))
    assert read_token_table(path, key, qwen_certificate.num_tokens) == tokens
    assert read_token_table(path, "0" * 64) is None and read_token_table(path, key, len(tokens) + 1) is None
    for bad in (tokens[:1] + tokens[:-1], [b""] + tokens[1:]):
        write_json_atomic(path, token_table_entry(bad, key))
        assert read_token_table(path, key) is None
    path.write_text(json.dumps({**token_table_entry(tokens, key), "bytes": "not base64!"}))
    assert read_token_table(path, key) is None
