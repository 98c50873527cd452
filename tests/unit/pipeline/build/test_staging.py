"""The build's staging folders (pipeline.build.staging): those of killed builds are removed by the
next build, those of a live build are not, and a swap cut between its two renames is undone."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from pipeline.build.staging import make_staging, process_alive, remove_stale_staging, staging_folder


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_staging_of_a_gone_process_is_removed_and_said(tmp_path, caplog):
    out = tmp_path / "shards"
    gone = staging_folder(out, _dead_pid())
    (gone / "train").mkdir(parents=True)
    (gone / "train" / "train-00000.arrow").write_bytes(b"x" * 1000)
    live_child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = staging_folder(out, live_child.pid)
        live.mkdir()
        other = tmp_path / f".other.tmp-{_dead_pid()}"  # another output's staging: not ours to judge
        other.mkdir()
        with caplog.at_level(logging.WARNING):
            staging = make_staging(out)
        assert staging == staging_folder(out) and staging.is_dir()
        assert not gone.exists() and live.is_dir() and other.is_dir()
        assert any(str(gone) in r.getMessage() and "no longer running" in r.getMessage() for r in caplog.records)
        assert remove_stale_staging(out) == []  # this process's own folder is live too
    finally:
        live_child.kill()
        live_child.wait()


def test_a_swap_cut_between_its_renames_restores_the_previous_output(tmp_path, caplog):
    out = tmp_path / "shards"
    old = tmp_path / f".shards.old-{_dead_pid()}"  # the previous build, renamed aside; then the kill
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        remove_stale_staging(out)
    assert (out / "manifest.json").read_text() == "{}" and not old.exists()
    leftover = tmp_path / f".shards.old-{_dead_pid()}"  # the output exists: this copy is garbage
    leftover.mkdir()
    assert remove_stale_staging(out) == [leftover] and not leftover.exists()


def test_process_alive_and_reused_pids():
    assert process_alive(os.getpid())
    assert not process_alive(_dead_pid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_alive(child.pid, since=time.time())  # started before the folder was written: may be its writer
        # A folder last written an hour ago cannot belong to a process born now: its PID was reused.
        assert not process_alive(child.pid, since=time.time() - 3600)
    finally:
        child.kill()
        child.wait()
