"""The Ray executor: the build's task functions as Ray tasks, on a cluster or on this machine.

- `--ray_address ADDRESS` connects to a running cluster (`ray start --head` on one node, `ray
  start --address HEAD:6379` on the others); inputs, the output folder and its staging folder
  must be on a path every node sees under the same name (NFS, Lustre, a mounted bucket). Without
  an address, a Ray instance with `--workers` CPUs is started on this machine and shut down at the
  end of the build (nothing is left running). Inside a process that already called `ray.init`
  (tests, notebooks), that instance is used and left running.
- Each task runs `initializer(*initargs)` once per Ray worker process (they are reused between
  tasks), then `fn(*args)`; task results come back through the object store.
- A worker or node that dies while it runs a task: Ray runs the task again (up to
  `MAX_RETRIES` times; the tasks are deterministic and write their files by atomic rename, so the
  output is the same). Beyond that the future raises `WorkerLost`. An exception raised by the task
  itself comes back as that exception (not wrapped), so user errors stay one line.

Imported only when `--executor ray` is chosen; Ray is the optional extra `pip install '.[ray]'`.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future
from typing import Any, Callable, Optional, Sequence

from pipeline.executor.local import WorkerLost
from schemas.errors import InputError

logger = logging.getLogger(__name__)

MAX_RETRIES = 3  # Ray's default for tasks whose worker died; said here because the output relies on it


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray, which is not installed; install it with pip install '.[ray]' (or pip install 'ray>=2.9'), or use --executor local") from None
    return ray


class RayExecutor:
    """Runs tasks on Ray; see the module docstring."""

    def __init__(self, initializer: Callable[..., None], initargs: Sequence[Any], *, workers: int, address: Optional[str] = None) -> None:
        ray = import_ray()
        self._ray = ray
        self._owns = False
        if address:
            try:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                raise InputError(f"cannot connect to the Ray cluster at --ray_address {address} ({first}); start it with `ray start --head` or fix the address") from None
            self._owns = True
        elif not ray.is_initialized():
            # A private instance for this build: its CPUs are --workers, and it ends with the build.
            ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            self._owns = True
        self._init_ref = ray.put((initializer, tuple(initargs)))
        self._task = ray.remote(_run_task)
        self._named: dict[str, Any] = {}
        self._pending: dict[Any, Future] = {}

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        # Named after the task function: the Ray dashboard (and `ps`: "ray::cpt.scan_chunk") shows it.
        name = f"cpt.{fn.__name__}"
        if name not in self._named:
            self._named[name] = self._task.options(name=name, max_retries=MAX_RETRIES, retry_exceptions=False)
        ref = self._named[name].remote(self._init_ref, fn, *args)
        outer: Future = Future()
        outer.set_running_or_notify_cancel()
        self._pending[ref] = outer
        ray = self._ray

        def relay(done: Future) -> None:
            self._pending.pop(ref, None)
            try:
                outer.set_result(done.result())
            except ray.exceptions.RayTaskError as exc:  # the task raised: hand on its own exception
                cause = getattr(exc, "cause", None)
                outer.set_exception(cause if isinstance(cause, BaseException) else RuntimeError(str(exc).splitlines()[0]))
            except ray.exceptions.RayError as exc:  # worker/node lost after the retries, object lost, cancelled
                outer.set_exception(WorkerLost(f"a worker process died (a Ray worker or node was lost: {exc.__class__.__name__})"))
            except BaseException as exc:  # noqa: BLE001 - e.g. concurrent.futures.CancelledError
                outer.set_exception(WorkerLost(f"a worker process died (a Ray task did not finish: {exc.__class__.__name__})"))

        ref.future().add_done_callback(relay)
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        ray = self._ray
        if cancel_futures:
            for ref in list(self._pending):
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
        if self._owns and ray.is_initialized():
            ray.shutdown()


_INITIALIZED: Optional[tuple] = None


def _run_task(init: tuple, fn: Callable[..., Any], *args: Any) -> Any:
    """In a Ray worker: set up this process once per distinct `(initializer, initargs)`, run `fn`."""
    global _INITIALIZED
    if _INITIALIZED != init:
        os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one task per CPU: no nested tokenizer threads
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        initializer, initargs = init
        initializer(*initargs)
        _INITIALIZED = init
    return fn(*args)
