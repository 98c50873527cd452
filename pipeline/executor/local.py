"""The local executor: a process pool of spawned workers, or this process for one worker.

Orphan-proof workers: when the main process is killed (SIGKILL, the OOM killer), a worker would
otherwise keep running its task and wait on its queue for minutes, and multiprocessing's resource
tracker with it (it exits when the last holder of its pipe has gone). Each worker therefore asks the
kernel to SIGKILL it when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`), and, where that is not
available, a daemon thread polls `os.getppid()` every 0.5 s. Both end the worker within about a
second of the parent's death.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_POLL_S = 0.5


class WorkerLost(RuntimeError):
    """A worker process (or node) died while it held a task, and the task was not retried."""


LOST_WORKER_ERRORS = (WorkerLost, BrokenProcessPool)  # what a future raises when its worker died


class InlineExecutor:
    """The executor interface in this process: a task runs when it is submitted (`--workers 1`)."""

    def __init__(self, initializer: Callable[..., None], initargs: Sequence[Any]) -> None:
        initializer(*initargs)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # re-raised by future.result(), as from a pool
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class LocalPool:
    """Spawned worker processes (no fork of a process that holds tokenizer threads)."""

    def __init__(self, initializer: Callable[..., None], initargs: Sequence[Any], *, workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_orphan_proof, initargs=(os.getpid(), initializer, tuple(initargs))
        )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._pool.submit(fn, *args)  # a dead worker: BrokenProcessPool (one of LOST_WORKER_ERRORS)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def start_local(initializer: Callable[..., None], initargs: Sequence[Any], *, workers: int) -> InlineExecutor | LocalPool:
    """A pool of `workers` processes, or this process for one."""
    if workers == 1:
        return InlineExecutor(initializer, initargs)
    return LocalPool(initializer, initargs, workers=workers)


def exit_with_parent(parent_pid: int) -> None:
    """Make this process end within about a second of `parent_pid`'s death (see the module docstring)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            threading.Event().wait(PARENT_POLL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_orphan_proof(parent_pid: int, initializer: Callable[..., None], initargs: tuple) -> None:
    exit_with_parent(parent_pid)
    initializer(*initargs)
