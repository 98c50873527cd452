"""The HF encoder with the real Qwen2 tokenizer: one separator per document, control-token strings
encoded as plain text, no truncation, exact round trip, the NFC fast path."""

from __future__ import annotations


import numpy as np
import pytest

from pipeline.tokenize.backend import make_encoder
from pipeline.tokenize.hf import DocumentEncoder, nfc_inert
from pipeline.tokenize.load import plain_text_backend_json, tokenizer_info
from schemas.errors import TokenizerError
from schemas.tokenizer import control_token_ids
from tests.conftest import DATA_DIR

ENDOFTEXT_ID = 151643
TOOL_CALL_ID = 151657  # an added token that is NOT marked special


@pytest.fixture(scope="module")
def encoder_and_info(qwen_tokenizer, tokenizer_dir):
    info = tokenizer_info(qwen_tokenizer, name_or_path=str(tokenizer_dir))
    return make_encoder(qwen_tokenizer, info), info


def docs(ids, offsets):
    return [ids[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def test_separator_is_endoftext_not_eos(qwen_tokenizer, encoder_and_info):
    _, info = encoder_and_info
    assert qwen_tokenizer.eos_token == "<|im_end|>"  # the bundled config's eos is wrong between documents
    assert (info.separator_token, info.separator_id) == ("<|endoftext|>", ENDOFTEXT_ID)


def test_one_separator_per_document_and_round_trip(qwen_tokenizer, encoder_and_info):
    encoder, _ = encoder_and_info
    texts = ["Hello, world! This is a test.", "中文句子，没有空格。混合 English 和中文。", "  leading and trailing spaces  ", "line\twith\ttabs"]
    ids, offsets = encoder.encode(texts)
    assert ids.dtype == np.uint32 and len(offsets) == len(texts) + 1
    for text, doc in zip(texts, docs(ids, offsets)):
        assert doc[-1] == ENDOFTEXT_ID
        assert ENDOFTEXT_ID not in doc[:-1].tolist()
        assert qwen_tokenizer.decode(doc[:-1].tolist()) == text
        # Same ids as the transformers tokenizer for text without control-token strings.
        assert doc[:-1].tolist() == qwen_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_every_added_token_string_is_encoded_as_plain_text(qwen_tokenizer, encoder_and_info):
    encoder, info = encoder_and_info
    controls = set(control_token_ids(qwen_tokenizer))
    assert TOOL_CALL_ID in controls and ENDOFTEXT_ID in controls
    strings = [tok.content for tok in qwen_tokenizer.added_tokens_decoder.values()]
    assert "<tool_call>" in strings and "<|fim_prefix|>" in strings
    texts = [f"text before {s} text after" for s in strings] + [" ".join(strings)]
    ids, offsets = encoder.encode(texts)
    for text, doc in zip(texts, docs(ids, offsets)):
        inside = set(doc[:-1].tolist())
        assert not inside & controls, text
        assert qwen_tokenizer.decode(doc[:-1].tolist()) == text


def test_encode_special_tokens_alone_would_leak_non_special_added_tokens(qwen_tokenizer):
    """Why the encoder drops the added-token table: the obvious switch misses <tool_call>."""
    backend = qwen_tokenizer.backend_tokenizer
    previous = backend.encode_special_tokens
    try:
        backend.encode_special_tokens = True
        leaked = backend.encode("a <tool_call> b", add_special_tokens=False).ids
    finally:
        backend.encode_special_tokens = previous
    assert TOOL_CALL_ID in leaked


def test_no_truncation(qwen_tokenizer, encoder_and_info):
    encoder, _ = encoder_and_info
    text = "word " * 40000
    ids, offsets = encoder.encode([text])
    assert len(ids) > 40000
    assert qwen_tokenizer.decode(ids[:-1].tolist()) == text


def test_empty_batch(encoder_and_info):
    encoder, _ = encoder_and_info
    ids, offsets = encoder.encode([])
    assert len(ids) == 0 and offsets.tolist() == [0]


def test_control_id_from_base_vocabulary_is_an_error(tmp_path):
    """A tokenizer whose base vocabulary itself spells a control token cannot be used safely."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "<|endoftext|>": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    encoder = DocumentEncoder(tok.to_str(), separator_id=2, control_ids=[0, 2], dtype="uint16")
    ids, offsets = encoder.encode(["hello hello"])
    assert ids.tolist() == [1, 1, 2]
    with pytest.raises(TokenizerError, match="control token id 2"):
        encoder.encode(["hello <|endoftext|> hello"])


# Text on which NFC is active in some way: composed and decomposed accents, reordering of combining
# marks, singletons, a composition exclusion, Hangul jamo, a ccc-0 secondary (Kannada U+0CD5),
# compatibility forms NFC keeps, a character newer than this Python's Unicode database, emoji.
NFC_CASES = [
    "café", "cafe\u0301", "e\u0301\u0323 and e\u0323\u0301", "\u212b ngström vs \u00c5", "\u0958 devanagari qa",
    "\u1100\u1161\u11a8 jamo vs \uac01", "\u0cbf\u0cd5 kannada", "ｆｕｌｌｗｉｄｔｈ，中文。", "\U0001fae8 newer emoji",
    "👩\u200d💻 zwj sequence", "Ǆ digraph ﬁ ligature", "plain ascii only", "中文句子，没有空格。",
]


def test_nfc_inert_texts_are_unchanged_by_nfc():
    import random
    import unicodedata

    rng = random.Random(0)
    alphabet = "aeiouAEIOU \u00e9\u00c5\u212b\u0301\u0323\u0300\u0958\u1100\u1161\u11a8\uac00\u0cbf\u0cd5中文，。ｆ\U0001fae8\U0001f600"
    texts = NFC_CASES + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(3000)]
    inert = nfc_inert(texts)
    assert inert.any() and not inert.all()
    assert all(unicodedata.normalize("NFC", t) == t for t, flag in zip(texts, inert) if flag)
    expected_active = {"cafe\u0301", "\u212b ngström vs \u00c5", "\u1100\u1161\u11a8 jamo vs \uac01", "\u0cbf\u0cd5 kannada", "\U0001fae8 newer emoji", "\u0958 devanagari qa"}
    assert {t for t, flag in zip(NFC_CASES, inert) if not flag} >= expected_active
    assert inert[NFC_CASES.index("café")] and inert[NFC_CASES.index("中文句子，没有空格。")]


def test_nfc_fast_path_gives_the_full_backends_ids(qwen_tokenizer, encoder_and_info, tokenizer_dir):
    """Qwen2's normalizer is NFC; inert documents skip it. Same ids as the full backend and as
    transformers, on adversarial text and on the bundled sample corpus (English and Chinese)."""
    encoder, info = encoder_and_info
    assert encoder._encode_inert is not None  # the fast path is on for Qwen2
    full = DocumentEncoder(plain_text_backend_json(qwen_tokenizer), separator_id=info.separator_id, control_ids=info.control_token_ids, nfc_fast_path=False)
    sample = (DATA_DIR / "sample" / "train.txt").read_text(encoding="utf-8").splitlines()
    texts = NFC_CASES + sample
    ids, offsets = encoder.encode(texts)
    ref_ids, ref_offsets = full.encode(texts)
    assert np.array_equal(offsets, ref_offsets) and np.array_equal(ids, ref_ids)
    for text, doc in zip(NFC_CASES, docs(ids, offsets)):
        assert doc[:-1].tolist() == qwen_tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_encoder_from_the_loaded_backend_matches_the_json_one(qwen_tokenizer, encoder_and_info):
    """The main process's cross-check encodes with the tokenizer already loaded (no JSON round
    trip): the same ids, and the backend it was given keeps its NFC normalizer."""
    from pipeline.tokenize.load import plain_text_backend

    encoder, info = encoder_and_info
    plain = plain_text_backend(qwen_tokenizer)
    direct = DocumentEncoder(plain, separator_id=info.separator_id, control_ids=info.control_token_ids)
    texts = NFC_CASES + (DATA_DIR / "sample" / "train.txt").read_text(encoding="utf-8").splitlines()[:300]
    ids, offsets = direct.encode(texts)
    ref_ids, ref_offsets = encoder.encode(texts)
    assert np.array_equal(offsets, ref_offsets) and np.array_equal(ids, ref_ids)
    assert plain.normalizer is not None


def test_private_use_planes_need_no_lookup():
    """Planes 15-16 are set without a per-character lookup: the same as looking each one up."""
    import unicodedata

    from pipeline.tokenize.hf import nfc_active_table

    table = nfc_active_table()
    for cp in range(0xF0000, 0x110000):
        c = chr(cp)
        looked_up = unicodedata.category(c) == "Cn" or unicodedata.combining(c) or unicodedata.normalize("NFC", c) != c or bool(unicodedata.decomposition(c))
        assert bool(looked_up) == table[cp], hex(cp)
