"""Tokenization with the real Qwen2 tokenizer: one separator per document, control-token strings
encoded as plain text, no truncation, exact round trip, and clear loading errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.tokenize import DocumentEncoder, load_tokenizer, make_encoder, plain_text_backend_json, tokenizer_info
from schemas.errors import TokenizerError
from schemas.tokenizer import control_token_ids, tokenizer_fingerprint

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


def test_plain_text_backend_has_no_added_tokens(qwen_tokenizer):
    spec = json.loads(plain_text_backend_json(qwen_tokenizer))
    assert spec["added_tokens"] == [] and spec["truncation"] is None and spec["padding"] is None


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


def test_tokenizer_info_identity(qwen_tokenizer, tokenizer_dir):
    info = tokenizer_info(qwen_tokenizer, name_or_path=str(tokenizer_dir))
    assert info.fingerprint == tokenizer_fingerprint(qwen_tokenizer)
    assert info.vocab_size == len(qwen_tokenizer) > 65536
    assert info.files_sha256 and len(info.files_sha256) == 64
    assert info.control_token_ids == control_token_ids(qwen_tokenizer)
    with pytest.raises(TokenizerError, match="not in the tokenizer's vocabulary"):
        tokenizer_info(qwen_tokenizer, name_or_path="x", separator_token="<|no_such|>")


def test_load_tokenizer_errors_name_the_fix(tmp_path, monkeypatch, tokenizer_dir):
    with pytest.raises(TokenizerError, match="tokenizer folder not found.*--tokenizer") as info:
        load_tokenizer(str(tmp_path / "nope"))
    assert str(tokenizer_dir) in str(info.value)  # the bundled folder is offered as the example
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerError, match="not in the Hugging Face cache.*--tokenizer PATH") as info:
        load_tokenizer("no-such-org/no-such-tokenizer")
    assert "\n" not in str(info.value)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot load a tokenizer from"):
        load_tokenizer(str(tmp_path / "junk"))


def test_load_tokenizer_from_folder(tokenizer_dir):
    tok = load_tokenizer(str(tokenizer_dir))
    assert tok.backend_tokenizer is not None and len(tok) == 151669
