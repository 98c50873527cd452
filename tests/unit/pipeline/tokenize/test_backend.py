"""`--tokenizer_backend auto|hf|fast`: the choice, the fallback with its reason, and builds whose
output is byte-identical whichever backend ran (sha256 of every file; the manifest apart from the
backend record)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from pipeline.build.run import BuildOptions, build_dataset
from pipeline.tokenize.backend import choose_backend
from pipeline.tokenize.load import plain_text_backend_json
from schemas.config import DataConfig
from schemas.errors import ConfigError, TokenizerError
from tests.conftest import DATA_DIR


@pytest.fixture(scope="module")
def word_level_dir(tmp_path_factory):
    """A real non-BPE tokenizer (word level), which the fast backend does not reproduce, and the
    sample's English lines as its corpus (every word in its vocabulary: no [UNK], an added token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("wordlevel")
    lines = [line for line in (DATA_DIR / "sample" / "train.txt").read_text(encoding="utf-8").splitlines() if line.isascii() and "<|" not in line and "[UNK]" not in line]
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    words = sorted(set(" ".join(lines).split()))
    vocab = {w: i for i, w in enumerate(["[UNK]", "<|endoftext|>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|endoftext|>").save_pretrained(folder)
    return folder


def digests(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "manifest.json":
                manifest = json.loads(data)
                manifest.pop("created_at"), manifest.pop("tokenization"), manifest["config"].pop("tokenizer_backend")
                data = json.dumps(manifest, sort_keys=True).encode()
            out[str(path.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def build(tmp_path: Path, tokenizer: Path, backend: str, workers: int = 2, inputs: tuple[Path, ...] = (DATA_DIR / "sample" / "train.txt",), eval_inputs: tuple[Path, ...] = (DATA_DIR / "sample" / "eval.txt",)):
    out = tmp_path / f"shards-{backend}"
    result = build_dataset(BuildOptions(
        inputs=[str(p) for p in inputs], eval_inputs=[str(p) for p in eval_inputs], output=out,
        tokenizer=str(tokenizer), data=DataConfig(tokenizer_backend=backend, shard_target_bytes=256 * 1024), workers=workers,
        progress=False, chunk_bytes=256 * 1024,
    ))
    return result.manifest, out


def test_bundled_sample_builds_identically_with_hf_and_auto(tokenizer_dir, tmp_path):
    hf, hf_out = build(tmp_path, tokenizer_dir, "hf")
    auto, auto_out = build(tmp_path, tokenizer_dir, "auto")
    assert hf.tokenization.backend == "hf" and hf.tokenization.crosscheck_documents == 0 and hf.tokenization.certificate is None
    assert auto.tokenization.backend == "fast" and auto.tokenization.certificate["certified"]
    kept = sum(auto.accounting.kept.values())
    assert auto.tokenization.crosscheck_documents >= min(100, kept)
    assert auto.tokenizer == hf.tokenizer  # fingerprint and all: the same whichever backend ran
    assert len(list(hf_out.rglob("*.arrow"))) > 2  # several shards, and a drop log
    assert digests(hf_out) == digests(auto_out)
    assert json.loads((auto_out / "manifest.json").read_text())["tokenization"]["requested"] == "auto"


def test_deleted_merges_build_gives_hf_ids(deleted_merges_dir, tmp_path):
    """A tokenizer the proof covers only in part: documents with suspect tokens go to HF, and the
    output is still HF's, byte for byte."""
    hf, hf_out = build(tmp_path, deleted_merges_dir, "hf", workers=1)
    auto, auto_out = build(tmp_path, deleted_merges_dir, "auto", workers=1)
    assert auto.tokenization.backend == "fast" and auto.tokenization.certificate["num_suspect_tokens"] >= 150
    assert auto.tokenization.reference_documents > 0
    assert digests(hf_out) == digests(auto_out)


def test_non_bpe_tokenizer_falls_back_to_hf_and_says_why(word_level_dir, tmp_path, caplog):
    from transformers import AutoTokenizer

    backend_json = plain_text_backend_json(AutoTokenizer.from_pretrained(str(word_level_dir)))
    choice = choose_backend(backend_json, "auto")
    assert choice.backend == "hf" and "not BPE" in choice.notice and "\n" not in choice.notice
    with pytest.raises(TokenizerError, match=r"--tokenizer_backend fast: .*cannot be proven exact.*model type 'WordLevel' is not BPE.*auto or hf"):
        choose_backend(backend_json, "fast")
    with caplog.at_level(logging.INFO, logger="pipeline.build.run"):
        manifest, _ = build(tmp_path, word_level_dir, "auto", workers=1, inputs=(word_level_dir / "corpus.txt",), eval_inputs=())
    assert manifest.tokenization.backend == "hf" and not manifest.tokenization.certificate["certified"]
    assert any("tokenizer backend: HF tokenizers, since the fast backend cannot be proven exact" in r.getMessage() for r in caplog.records)
    with pytest.raises(TokenizerError, match="cannot be proven exact"):
        build(tmp_path, word_level_dir, "fast", workers=1, inputs=(word_level_dir / "corpus.txt",), eval_inputs=())
    assert not (tmp_path / "shards-fast").exists()


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="tokenizer_backend.*auto, hf, fast"):
        DataConfig(tokenizer_backend="quick")
