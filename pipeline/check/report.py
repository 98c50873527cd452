"""`cpt-prep check --report DIR`: a self-contained HTML page (`DIR/index.html`, plots embedded as
base64 PNG, inline CSS, no script, no network) plus the same plots as PNG files next to it.

Plots: document length per split (tokens, log-spaced bins, share of documents), tokens by input
file, records kept and dropped by reason, duplicate cluster sizes (from the drop log, binned: 2, 3,
4, 5, 6-10, ... >100), letters by script (sample; scripts under 1% everywhere summed as "other");
then the first dropped records of each reason with their text read back from the inputs
(`pipeline.check.dropped`, at most 256 MiB read of each input), then the rule results table,
failures first. Matplotlib's Agg canvas is used
directly (no pyplot global state), so this is safe to call in any process.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.check.dropped import DroppedRecord, dropped_records
from pipeline.check.outcome import CheckOutcome
from schemas.errors import CptError, InputError
from schemas.manifest import SPLITS
from schemas.storage import no_space_error

MAX_SOURCES = 25  # inputs shown one by one in the tokens-by-source plot; the rest are summed
MIN_SCRIPT_SHARE = 0.01  # a script below 1% of letters in every split is drawn as part of "other"
EXAMPLES_PER_REASON = 3  # dropped records shown per drop reason
EXAMPLE_READ_BYTES = 256 * 2**20  # bytes of each input read back for the examples (the report stays cheap)
EXAMPLE_CHARS = 240
_COLORS = {"train": "#3b6ea8", "eval": "#e08a2c"}
_STATUS_ORDER = {"fail": 0, "skip": 1, "pass": 2}


def _figure(width: float = 7.5, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_lengths(length_counts: dict[str, np.ndarray]) -> bytes:
    """Share of documents per log-spaced length bin, one line per split, median marked."""
    fig = _figure()
    ax = fig.add_subplot()
    if not length_counts:
        _empty(ax, "no readable documents")
        return _png(fig)
    top = max(len(c) for c in length_counts.values())
    edges = np.unique(np.round(np.logspace(0, np.log10(max(top, 2)), 40)).astype(int))
    edges = np.concatenate([[0], edges, [top + 1]]) if edges[-1] <= top else np.concatenate([[0], edges])
    for split, counts in length_counts.items():
        n = counts.sum()
        csum = np.concatenate([[0], np.cumsum(counts)])
        per_bin = csum[np.minimum(edges[1:], len(counts))] - csum[np.minimum(edges[:-1], len(counts))]
        ax.stairs(per_bin / max(n, 1), np.maximum(edges, 0.8), color=_COLORS[split], linewidth=1.8,
                  label=f"{split} ({int(n):,} documents)")
        median = int(np.searchsorted(np.cumsum(counts), max(np.ceil(n / 2), 1)))
        ax.axvline(max(median, 0.8), color=_COLORS[split], linestyle=":", linewidth=1)
    ax.set_xscale("log")
    first = min(int(np.flatnonzero(c)[0]) if c.any() else 1 for c in length_counts.values())
    ax.set_xlim(max(first, 1) * 0.8, top * 1.25)
    ax.set_xlabel("document length (tokens, separator excluded; dotted: median)")
    ax.set_ylabel("share of documents")
    ax.set_title("Document length")
    ax.legend(frameon=False)
    return _png(fig)


def plot_sources(tokens_by_source: dict[str, np.ndarray], names: list[str]) -> bytes:
    """Tokens per input file (horizontal bars, train and eval stacked)."""
    num = max([len(v) for v in tokens_by_source.values()] + [0])
    labels = [Path(names[i]).name if i < len(names) else f"input {i}" for i in range(num)]
    totals = np.zeros(num)
    for v in tokens_by_source.values():
        totals[: len(v)] += v
    order = [int(i) for i in np.argsort(-totals, kind="stable") if totals[i] > 0]
    shown, rest = order[:MAX_SOURCES], order[MAX_SOURCES:]
    fig = _figure(height=max(2.4, 0.9 + 0.32 * (len(shown) + bool(rest))))
    ax = fig.add_subplot()
    if not shown:
        _empty(ax, "no tokens")
        return _png(fig)
    y = np.arange(len(shown) + bool(rest))
    left = np.zeros(len(y))
    for split in SPLITS:
        v = tokens_by_source.get(split)
        if v is None:
            continue
        full = np.zeros(num)
        full[: len(v)] = v
        vals = np.array([full[i] for i in shown] + ([full[rest].sum()] if rest else []))
        ax.barh(y, vals, left=left, color=_COLORS[split], label=split)
        left += vals
    for yi, v in zip(y, left):
        ax.text(v, yi, f" {int(v):,}", va="center", fontsize=8)
    ax.set_yticks(y, [labels[i] for i in shown] + ([f"{len(rest)} more inputs"] if rest else []))
    ax.invert_yaxis()
    ax.set_xlim(0, left.max() * 1.18)  # set, not margins(): the stacked bars' sticky edges block autoscaling
    ax.set_xlabel("tokens")
    ax.set_title("Tokens by input file")
    ax.legend(frameon=False, loc="lower right")
    return _png(fig)


def plot_outcomes(kept: dict[str, int], dropped: dict[str, int]) -> bytes:
    """Records per outcome: kept per split, dropped per reason."""
    items = [(f"kept: {k}", v, _COLORS.get(k, "#3b6ea8")) for k, v in kept.items()]
    items += [(f"dropped: {k}", v, "#b8433c") for k, v in sorted(dropped.items(), key=lambda kv: -kv[1]) if v]
    fig = _figure(height=max(2.4, 0.9 + 0.32 * len(items)))
    ax = fig.add_subplot()
    if not items:
        _empty(ax, "no records")
        return _png(fig)
    y = np.arange(len(items))
    ax.barh(y, [v for _, v, _ in items], color=[c for _, _, c in items])
    total = max(sum(v for _, v, _ in items), 1)
    for yi, (_, v, _) in zip(y, items):
        ax.text(v, yi, f" {v:,} ({v / total:.1%})", va="center", fontsize=8)
    ax.set_yticks(y, [label for label, _, _ in items])
    ax.invert_yaxis()
    ax.set_xlabel("input records")
    ax.set_title("Records kept and dropped, by reason")
    ax.margins(x=0.18)
    return _png(fig)


# Cluster-size bins of the duplicate plot: one bar per small size, then wider bins, so that one
# cluster of 110 copies does not stretch the axis to 110 and squeeze the bars of sizes 2-5.
CLUSTER_BINS = ((2, 2), (3, 3), (4, 4), (5, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, None))


CLUSTER_LABELS = [str(lo) if lo == hi else f"{lo}-{hi}" if hi else f">{lo - 1}" for lo, hi in CLUSTER_BINS]


def cluster_bins(sizes: np.ndarray) -> list[int]:
    """Clusters per bin of `CLUSTER_BINS`, up to the last bin that holds one (at least 4 bins)."""
    out = [int(((sizes >= lo) & (sizes <= hi)).sum() if hi is not None else (sizes >= lo).sum()) for lo, hi in CLUSTER_BINS]
    last = max((i for i, n in enumerate(out) if n), default=0)
    return out[: max(last + 1, 4)]


def plot_clusters(cluster_sizes: dict[str, np.ndarray], has_drop_log: bool) -> bytes:
    """Number of duplicate clusters per size bin (kept original + dropped copies), per duplicate reason."""
    fig = _figure()
    ax = fig.add_subplot()
    if not cluster_sizes:
        _empty(ax, "no duplicates in the drop log" if has_drop_log else "the manifest lists no drop log: cluster sizes unknown")
        ax.set_title("Duplicate cluster sizes")
        return _png(fig)
    colors = {"exact_duplicate": "#6a51a3", "near_duplicate": "#9e9ac8", "overlaps_eval": "#b8433c"}
    binned = {reason: cluster_bins(sizes) for reason, sizes in cluster_sizes.items()}
    num_bins = max(len(b) for b in binned.values())
    width = 0.8 / len(binned)
    for k, (reason, bins) in enumerate(sorted(binned.items())):
        counts = bins + [0] * (num_bins - len(bins))
        x = np.arange(num_bins) + (k - (len(binned) - 1) / 2) * width
        ax.bar(x, counts, width=width, color=colors.get(reason, "#777"), label=f"{reason} ({len(cluster_sizes[reason]):,} clusters, "
               f"largest {int(cluster_sizes[reason].max()):,})")
    ax.set_xticks(np.arange(num_bins), CLUSTER_LABELS[:num_bins])
    ax.set_xlabel("cluster size (original + dropped copies)")
    ax.set_ylabel("clusters")
    ax.set_title("Duplicate cluster sizes")
    ax.legend(frameon=False)
    return _png(fig)


def script_segments(script_counts: dict[str, dict[str, int]], splits: list[str]) -> list[tuple[str, str, list[float]]]:
    """(legend label, colour, share of letters per split) per bar segment of the script plot.

    A script under MIN_SCRIPT_SHARE in every split would be a legend entry with no visible bar: those
    are summed into one "other" segment that says how many scripts it holds."""
    shares = {s: {k: v / max(sum(script_counts[s].values()), 1) for k, v in script_counts[s].items()} for s in splits}
    scripts = sorted({k for s in splits for k in shares[s]}, key=lambda k: -sum(shares[s].get(k, 0) for s in splits))
    shown = [k for k in scripts if max(shares[s].get(k, 0) for s in splits) >= MIN_SCRIPT_SHARE]
    rest = [k for k in scripts if k not in shown]
    palette = ["#3b6ea8", "#c0504d", "#9bbb59", "#8064a2", "#4bacc6", "#f79646", "#2c4d75", "#772c2a", "#5f7530"]
    segments = [(k, palette[i % len(palette)], [shares[s].get(k, 0) for s in splits]) for i, k in enumerate(shown)]
    if rest:
        other = [sum(shares[s].get(k, 0) for k in rest) for s in splits]
        segments.append((f"other: {len(rest)} script{'s' if len(rest) > 1 else ''} under {MIN_SCRIPT_SHARE:.0%} ({max(other):.1%})", "#7f7f7f", other))
    return segments


def plot_scripts(script_counts: dict[str, dict[str, int]]) -> bytes:
    """Share of letters per script in each split's sample (stacked horizontal bars)."""
    fig = _figure(height=2.6)
    ax = fig.add_subplot()
    splits = [s for s in SPLITS if script_counts.get(s)]
    if not splits:
        _empty(ax, "no text sample (tokenizer not loaded, or --sample 0)")
        ax.set_title("Letters by script (sample)")
        return _png(fig)
    segments = script_segments(script_counts, splits)
    left = np.zeros(len(splits))
    for script, color, values in segments:
        vals = np.array(values)
        ax.barh(splits, vals, left=left, color=color, label=script)
        for j, v in enumerate(vals):
            if v > 0.06:
                ax.text(left[j] + v / 2, j, f"{v:.0%}", ha="center", va="center", color="white", fontsize=8)
        left += vals
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of letters")
    ax.set_title("Letters by script (sample)")
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1120px;color:#222}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.verdict{display:inline-block;padding:3px 10px;border-radius:4px;color:#fff;font-weight:600}
.PASSED{background:#2e7d32}.FAILED{background:#c62828}
table{border-collapse:collapse;width:100%;font-size:13px}td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f4f4f4}.meta td:first-child{width:190px;color:#555}
td.fail{background:#fdecea;color:#b71c1c;font-weight:600}td.skip{background:#fff8e1;color:#8d6e00;font-weight:600}td.pass{color:#2e7d32}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:14px}.plots figure{margin:0}.plots img{width:100%;border:1px solid #eee}
.failed{background:#fdecea;border:1px solid #f5c6c0;padding:8px 12px;border-radius:4px}.failed li{margin:3px 0}
code{font-size:12px}table.inner{width:auto}table.inner td{border:none;padding:1px 12px 1px 0}
"""


def _dedup_table(dedup: dict[str, Any]) -> str:
    """The manifest's dedup settings as a two-column table (HTML), not a JSON blob."""
    esc = html.escape
    rows = "".join(f"<tr><td><code>{esc(str(k))}</code></td><td>{esc(_fmt_setting(v))}</td></tr>" for k, v in dedup.items())
    return f"<table class='inner'>{rows}</table>"


def _fmt_setting(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):  # one level down (e.g. shingles): `key = value` pairs
        return "; ".join(f"{k} = {_fmt_setting(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt_setting(v) for v in value)
    return str(value)


def _examples_html(examples: list[DroppedRecord]) -> str:
    """Dropped records per reason, their text read back from the inputs (`pipeline.check.dropped`)."""
    if not examples:
        return "<p>Nothing was dropped, or the manifest lists no drop log.</p>"
    esc = html.escape

    def text(value: Optional[str]) -> str:
        if value is None:
            return "<i>not available</i>"
        value = value if len(value) <= EXAMPLE_CHARS else value[: EXAMPLE_CHARS - 3] + "..."
        return f"<code>{esc(value)}</code>" if value else "<i>(empty)</i>"

    rows = "".join(
        f"<tr><td><code>{esc(r.reason)}</code></td><td>{esc(Path(r.input).name)}:{r.line}</td><td>{text(r.text)}"
        + (f"<br><small>{esc(r.note)}</small>" if r.note else "") + "</td><td>"
        + (f"{esc(Path(r.kept_input or '').name)}:{r.kept_line}<br>{text(r.kept_text)}" if r.kept_line is not None else "")
        + "</td></tr>"
        for r in examples)
    return (f"<p>The first {EXAMPLES_PER_REASON} records dropped for each reason (all of them: "
            "<code>cpt-prep dropped MANIFEST --reason REASON</code>).</p>"
            f"<table><tr><th>reason</th><th>input:line</th><th>text</th><th>kept instead</th></tr>{rows}</table>")


def render_html(outcome: CheckOutcome, images: dict[str, bytes], code: int, examples: Optional[list[DroppedRecord]] = None) -> str:
    """The page: header, data-set facts, plots (base64), dropped-record examples, results table."""
    m = outcome.manifest
    c = outcome.counts()
    verdict = "PASSED" if code == 0 else "FAILED"
    esc = html.escape
    facts = [
        ("manifest", str(outcome.manifest_path)),
        ("schema / tool version", f"{m.schema_version} / {m.tool_version}"),
        ("created", m.created_at),
        ("tokenizer", f"{m.tokenizer.name_or_path} ({m.tokenizer.class_name}, vocab {m.tokenizer.vocab_size:,}, separator "
                      f"{m.tokenizer.separator_token} = {m.tokenizer.separator_id})"),
        ("token dtype", m.token_dtype),
        ("splits", "; ".join(f"{s}: {i.num_documents:,} documents, {i.num_tokens:,} tokens, {len(i.shards)} shards" for s, i in m.splits.items())),
        ("records", f"{m.accounting.num_records:,} in, {sum(m.accounting.kept.values()):,} kept, {sum(m.accounting.dropped.values()):,} dropped"),
    ]
    rows = sorted(outcome.results, key=lambda r: _STATUS_ORDER.get(r.status, 3))
    table = "".join(
        f"<tr><td class='{r.status}'>{r.status.upper()}</td><td><code>{esc(r.rule)}</code></td>"
        f"<td>{esc(r.shard or r.split or '')}{'' if r.row is None else f' row {r.row}'}</td>"
        f"<td>{esc(_fmt(r.value))}</td><td>{esc(_fmt(r.threshold))}</td><td>{esc(r.message)}</td></tr>"
        for r in rows)
    bad = [r for r in rows if r.status == "fail"]
    failed = ("<div class='failed'><b>Failed rules</b><ul>" + "".join(f"<li><code>{esc(r.rule)}</code>: {esc(r.message)}</li>" for r in bad[:20])
              + (f"<li>... and {len(bad) - 20} more (table below)</li>" if len(bad) > 20 else "") + "</ul></div>") if bad else ""
    plots = "".join(f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'></figure>"
                    for name, png in images.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cpt-prep check: {verdict}</title><style>{_CSS}</style></head>
<body>
<h1>cpt-prep check report <span class="verdict {verdict}">{verdict}</span></h1>
<p>{c['fail']} failed, {c['skip']} skipped, {c['pass']} passed in {outcome.seconds:.1f} s.</p>
{failed}
<h2>Data set</h2>
<table class="meta">{''.join(f'<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>' for k, v in facts)}<tr><td>deduplication</td><td>{_dedup_table(m.dedup)}</td></tr></table>
<h2>Plots</h2>
<div class="plots">{plots}</div>
<h2>Dropped records: examples</h2>
{_examples_html(examples or [])}
<h2>Rule results</h2>
<table><tr><th>status</th><th>rule</th><th>where</th><th>value</th><th>threshold</th><th>message</th></tr>{table}</table>
</body></html>
"""


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value if len(value) <= 24 else value[:21] + "..."
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= 80 else text[:77] + "..."


def write_report(outcome: CheckOutcome, folder: str | Path, *, code: int | None = None) -> Path:
    """Write the PNGs and `index.html` into `folder` (created); returns the page's path.

    Every file is written under a temporary name first and renamed into place only when all are
    written, so a full disk leaves the previous report whole and no temporary file behind."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        full = no_space_error(exc, folder, "the report", error_type=InputError)
        if full is not None:
            raise full from None
        raise InputError(f"cannot create report folder {folder} ({exc.__class__.__name__}); pass a writable --report DIR") from None
    m = outcome.manifest
    images = {
        "lengths.png": plot_lengths(outcome.length_counts),
        "sources.png": plot_sources(outcome.tokens_by_source, [i.path for i in m.inputs]),
        "outcomes.png": plot_outcomes(m.accounting.kept, m.accounting.dropped),
        "clusters.png": plot_clusters(outcome.cluster_sizes, m.drop_log is not None),
        "scripts.png": plot_scripts(outcome.script_counts),
    }
    code = outcome.exit_code() if code is None else code
    try:
        examples = dropped_records(m, outcome.manifest_path.parent, limit=0, per_reason=EXAMPLES_PER_REASON, max_read_bytes=EXAMPLE_READ_BYTES)
    except CptError:
        examples = []  # no drop log, or an unreadable one: the accounting rule reports it
    files = {**images, "index.html": render_html(outcome, images, code, examples).encode("utf-8")}
    written = []
    try:
        for name, content in files.items():
            tmp = folder / f".{name}.tmp-{os.getpid()}"
            written.append((tmp, folder / name))
            tmp.write_bytes(content)
    except OSError as exc:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        full = no_space_error(exc, folder, "the report", needed=sum(len(c) for c in files.values()), error_type=InputError)
        if full is not None:
            raise full from None
        raise InputError(f"cannot write the report into {folder} ({exc.__class__.__name__}: {exc.strerror}); pass a writable --report DIR") from None
    for tmp, final in written:
        os.replace(tmp, final)
    return folder / "index.html"
