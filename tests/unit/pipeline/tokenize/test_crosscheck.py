"""The cross-check: a seeded, deterministic sample of at least 100 documents, and a real wrong
encoder (the fast encoder of a tokenizer with merges deleted, without its suspect-token routing)
caught with a one-line error."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tokenize.backend import build_encoder
from pipeline.tokenize.certificate import certify
from pipeline.tokenize.crosscheck import SAMPLE_MIN, CrossCheck
from pipeline.tokenize.fast import FastDocumentEncoder, build_encoding
from pipeline.tokenize.load import plain_text_backend_json
from schemas.errors import TokenizerError
from schemas.tokenizer import control_token_ids
from tests.conftest import DATA_DIR

ENDOFTEXT_ID = 151643


def test_sample_is_the_first_100_then_half_a_percent_whatever_the_chunking(qwen_backend_json):
    provenance = [(i % 3, i) for i in range(60_000)]
    one = CrossCheck(qwen_backend_json, separator_id=ENDOFTEXT_ID, control_ids=[], dtype="uint32")
    picked = one.pick(provenance)
    assert picked[:SAMPLE_MIN] == list(range(SAMPLE_MIN))
    assert 0.004 * 60_000 < len(picked) - SAMPLE_MIN < 0.006 * 60_000
    chunked = CrossCheck(qwen_backend_json, separator_id=ENDOFTEXT_ID, control_ids=[], dtype="uint32")
    again = []
    for lo in range(0, 60_000, 777):
        again += [lo + k for k in chunked.pick(provenance[lo : lo + 777])]
    assert again == picked


def test_a_wrong_encoder_is_caught(deleted_merges_tokenizer):
    backend_json = plain_text_backend_json(deleted_merges_tokenizer)
    cert = certify(backend_json)
    import json

    controls = control_token_ids(deleted_merges_tokenizer)
    wrong = FastDocumentEncoder(backend_json, encoding=build_encoding(json.loads(backend_json), cert.pattern), reference_table=cert.reference_table(),
                                suspect_ids=[], separator_id=ENDOFTEXT_ID, control_ids=controls)  # the routing left out: a real wrong encoder
    right = build_encoder(backend_json, cert, separator_id=ENDOFTEXT_ID, control_ids=controls, dtype="uint32")
    texts = (DATA_DIR / "sample" / "train.txt").read_text(encoding="utf-8").splitlines()[:400]
    provenance = [(0, line) for line in range(1, len(texts) + 1)]
    ids, offsets = right.encode(texts)
    check = CrossCheck(backend_json, separator_id=ENDOFTEXT_ID, control_ids=controls, dtype="uint32", fraction=0.5)
    check.check(provenance, lambda ks: [texts[k] for k in ks], ids, offsets, source_names=["train.txt"])
    assert check.num_checked > SAMPLE_MIN
    ids, offsets = wrong.encode(texts)
    assert not np.array_equal(ids, right.encode(texts)[0])
    check = CrossCheck(backend_json, separator_id=ENDOFTEXT_ID, control_ids=controls, dtype="uint32")
    with pytest.raises(TokenizerError, match=r"cross-check failed.*train.txt line \d+.*--tokenizer_backend hf") as info:
        check.check(provenance, lambda ks: [texts[k] for k in ks], ids, offsets, source_names=["train.txt"])
    assert "\n" not in str(info.value)
