"""The build's staging folder: where `cpt-prep build` writes before its output is whole.

A build writes into a hidden folder beside the output, `.NAME.tmp-PID`, and renames it into place
only after the manifest is written (`swap_into_place`), so a failed or interrupted run leaves the
old output (or nothing) and never a manifest that points at incomplete shards.

- A build killed outright (SIGKILL, the OOM killer) cannot remove its staging folder. The next build
  into the same output removes the folders of processes that are gone (`remove_stale_staging`) and
  logs each one; the folder of a live process, another build running now, is left alone. A PID
  the system has since given to a process started after the folder was last written (PID reuse)
  counts as gone.
- `.NAME.old-PID` (the previous output, renamed aside for the moment of the swap) is removed only
  when the output itself exists: a build killed between its two renames leaves the previous output
  there and nowhere else, and that is restored instead.
- A full disk while staging is one line naming the folder and its free space
  (`schemas.storage.no_space_error`), never a traceback.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from schemas.errors import DataError, InputError
from schemas.storage import no_space_error

logger = logging.getLogger(__name__)


def staging_folder(output: Path, pid: Optional[int] = None) -> Path:
    """`.NAME.tmp-PID` beside `output`."""
    output = Path(output).absolute()
    return output.parent / f".{output.name}.tmp-{os.getpid() if pid is None else pid}"


def _pattern(output: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(output.name)}\.(tmp|old)-(\d+)")


def _process_started_after(pid: int, when: float) -> Optional[bool]:
    """True when process `pid` started after time `when` (so it cannot have written there), False
    when before, None when unknown (no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of proc(5): start time in clock ticks after boot
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + start_ticks / os.sysconf("SC_CLK_TCK") > when + 1  # btime has 1 s resolution


def process_alive(pid: int, *, since: Optional[float] = None) -> bool:
    """Whether `pid` is a running process that may have written at time `since` (a folder's mtime)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    if since is not None and _process_started_after(pid, since):
        return False  # the PID was reused by a process born after the folder was written
    return True


def remove_stale_staging(output: Path) -> list[Path]:
    """Remove the staging folders that killed builds left beside `output`; return them."""
    output = Path(output).absolute()
    parent = output.parent
    if not parent.is_dir():
        return []
    pattern = _pattern(output)
    removed = []
    for entry in sorted(parent.iterdir()):
        match = pattern.fullmatch(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        kind, pid = match.group(1), int(match.group(2))
        try:
            mtime = entry.stat().st_mtime
        except OSError:
            continue
        if process_alive(pid, since=mtime):
            continue
        if kind == "old" and not output.exists():
            # Killed between the two renames of a swap: this is the previous output. Put it back.
            os.rename(entry, output)
            logger.warning("restored %s from %s, left by a build (PID %d) killed while replacing it", output, entry.name, pid)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        logger.warning("removed %s, left by a build (PID %d) that is no longer running", entry, pid)
        removed.append(entry)
    return removed


def make_staging(output: Path) -> Path:
    """Create this process's empty staging folder beside `output` (stale ones removed first)."""
    output = Path(output)
    staging = staging_folder(output)
    parent = staging.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(output)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        probe = staging / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        full = no_space_error(exc, parent, f"the build of {output}", error_type=DataError)
        if full is not None:
            raise full from None
        raise InputError(f"output {output} is not writable ({exc.strerror or exc.__class__.__name__} in {parent}); choose another --output or fix the permissions") from None
    return staging


def disk_full_error(exc: BaseException, output: Path) -> Optional[DataError]:
    """The one-line error for a build that ran out of disk space writing `output`, or None."""
    return no_space_error(exc, Path(output).absolute().parent, f"the shards, dedup hash files (~180 bytes per document), drop log and manifest of {output}", error_type=DataError)


def swap_into_place(staging: Path, output: Path) -> None:
    """Rename the finished staging folder to `output`, replacing an old build (if any) last."""
    output = output.absolute()
    if not output.exists():
        os.rename(staging, output)
        return
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    os.rename(output, old)
    try:
        os.rename(staging, output)
    except OSError:
        os.rename(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)
