"""The local executor: a killed `cpt-prep build` takes its worker processes (and multiprocessing's
resource tracker) with it, within seconds; one worker runs its tasks in this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline.executor.local import InlineExecutor, start_local
from tests.unit.pipeline.build.test_run import prose

REPO = Path(__file__).resolve().parents[4]


def test_one_worker_runs_tasks_in_this_process():
    calls = []
    executor = start_local(calls.append, ("set up",), workers=1)
    assert isinstance(executor, InlineExecutor) and calls == ["set up"]
    assert executor.submit(os.getpid).result() == os.getpid()
    with pytest.raises(ZeroDivisionError):
        executor.submit(divmod, 1, 0).result()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills processes by pid (Linux)")
def test_workers_exit_when_the_build_is_killed(tmp_path, tokenizer_dir):
    """SIGKILL of the main `cpt-prep build` process only (as the OOM killer does it): every process
    it started is gone within seconds."""
    corpus = tmp_path / "big.txt"
    corpus.write_text("\n".join(prose(i, num_words=200) for i in range(20000)) + "\n")  # ~25 MB: many seconds of work
    cmd = [sys.executable, "-m", "pipeline", "build", str(corpus), "--tokenizer", str(tokenizer_dir), "--output", str(tmp_path / "out"), "--workers", "2", "--no_progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    children: list[psutil.Process] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        children = parent.children(recursive=True)
        workers = [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]
        if len(workers) >= 2 and list(tmp_path.glob(".out.tmp-*/.dedup/*")):  # both workers are scanning
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(children) >= 3, "the build ended before its workers and resource tracker could be seen"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running 10 s after the build was killed: {[' '.join(p.cmdline())[:80] for p in alive]}"
