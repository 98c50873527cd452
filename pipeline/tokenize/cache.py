"""The user cache folder for what is computed once per tokenizer (`certificate`: the fast backend's
proof; `fast`: its token table; `load`: the tokenizer's profile, so that a build need not import
transformers).

The folder is `$CPT_CACHE_DIR`, else `$XDG_CACHE_HOME/cpt-toolkit`, else `~/.cache/cpt-toolkit`,
with one subfolder per kind. An entry is one JSON file named by its key (a sha256 of everything the
value depends on): data, never code, written atomically (temporary name + rename), and used only
after its reader has checked every field. A folder that cannot be written only costs the
recomputation next time.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)


def cache_folder(kind: str) -> Path:
    """The folder of one kind of entry (`certificates`, `fast-vocab`, `tokenizers`)."""
    explicit = os.environ.get("CPT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser() / kind
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "cpt-toolkit" / kind


def write_json_atomic(path: Path, value: Any) -> None:
    """Write `value` as JSON to `path` atomically (temporary name + rename); OSError propagates."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(value), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> Optional[Any]:
    """The JSON value in `path`, or None when it is missing or not JSON (the caller checks its shape)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def store(kind: str, key: str, value: Any) -> None:
    """Cache `value` under `key` (a failure to write is logged at debug level, not raised)."""
    path = cache_folder(kind) / f"{key}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, value)
    except OSError as exc:
        logger.debug("cannot cache %s in %s (%s)", kind, path.parent, exc)
