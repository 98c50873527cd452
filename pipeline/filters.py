"""Per-document quality filters: keep, or drop with a reason from `schemas.manifest.DROP_REASONS`.

- `empty`: nothing but whitespace (Unicode whitespace, U+3000 included) once stripped.
- `too_short`: fewer than `min_length` characters after stripping (the original tool's
  `min_length`, default 10). Characters, not bytes or words, so that Chinese (3 UTF-8 bytes and
  roughly one word per character) is measured on the same scale as English.
Filters look at the text only; the document that is kept is the original text, unstripped.
"""

from __future__ import annotations

from typing import Optional

from schemas.manifest import DROP_REASONS

FILTER_REASONS = ("empty", "too_short")
assert set(FILTER_REASONS) <= set(DROP_REASONS)


def filter_text(text: str, *, min_length: int) -> Optional[str]:
    """None to keep `text`, else the drop reason (`empty` or `too_short`)."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    if len(stripped) < min_length:
        return "too_short"
    return None
