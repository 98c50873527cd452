"""Full disks as one-line errors. Both programs write large files (shards, reports, checkpoints);
when the file system runs out of space mid-write, the user gets one line that names the folder,
the free space seen there and, where the writer knows it, the space it needed; never a traceback.

Use `no_space_error` in the `except OSError` around a write; it returns the `CptError` to raise when
the error is a full disk (ENOSPC, EDQUOT, EFBIG) and None otherwise (re-raise the original then).
"""

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path

from schemas.errors import CptError

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` (or an exception it was raised from) is a full disk or an exhausted quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return True
        # pyarrow and safetensors raise errors with the errno only in their text.
        text = str(exc)
        if "No space left on device" in text or "Disk quota exceeded" in text or "File too large" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(folder: Path) -> int | None:
    """Free space for an unprivileged writer on the file system holding `folder` (or its nearest
    existing parent), or None when it cannot be read."""
    folder = Path(folder)
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KB'; decimal units, as `df -H` prints them."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def no_space_error(exc: BaseException, folder: Path, what: str, needed: int | None = None,
                   error_type: type[CptError] = CptError) -> CptError | None:
    """The one-line error for a write of `what` into `folder` that failed with `exc`, or None when
    `exc` is not a full disk. `needed` is the writer's estimate of the bytes it still had to write."""
    if not is_disk_full(exc):
        return None
    free = free_bytes(folder)
    seen = f"{human_bytes(free)} free there" if free is not None else "free space unreadable"
    need = f", about {human_bytes(needed)} needed" if needed else ""
    return error_type(f"the disk is full: writing {what} into {folder} failed ({seen}{need}); "
                      "free space there or choose a folder on a larger disk")


@contextmanager
def full_disk_as_error(folder: Path, what: str, needed: int | None = None, error_type: type[CptError] = CptError):
    """`with full_disk_as_error(folder, "metrics.jsonl"): write...`: a full disk inside the block
    raises `no_space_error`'s one-line error; any other error propagates unchanged.

    Catches Exception, not only OSError: safetensors raises its own type with the OS error in its text."""
    try:
        yield
    except Exception as exc:
        error = no_space_error(exc, folder, what, needed, error_type)
        if error is None:
            raise
        raise error from None
