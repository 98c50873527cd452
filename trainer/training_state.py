"""Resumable training state in formats that cannot carry code: safetensors for tensors, JSON for
everything else. Nothing here unpickles (no `torch.load`, no `pickle`), so a checkpoint folder
from someone else can at worst be refused, never run code.

`training_state/` of a resumable checkpoint (STATE_FORMAT 2) holds:
- `model.safetensors` (rank 0): the live weights as trained (the fp32 masters under bf16 mixed
  precision; the exported `model.safetensors` beside the folder may be in `model.torch_dtype`);
- `optimizer.safetensors` + `optimizer.json` (rank 0): every tensor of the optimizer's state
  (AdamW: step, exp_avg, exp_avg_sq per parameter) under `state.<param>.<name>`, and in JSON its
  param_groups and any state value that is not a tensor;
- `scheduler.json` (rank 0): the LR scheduler's `state_dict` (plain numbers and lists);
- `rng_rank{R}.safetensors` + `rng_rank{R}.json` (each process): torch's CPU and CUDA generator
  states; Python's `random` and numpy's global generator states.
The loader position, the trainer's counters and the spike guard's history are JSON files beside
`training_state/` (trainer/checkpoint.py).

Loading checks each file and turns any failure (missing, not safetensors/JSON, keys or shapes
that do not fit this model and optimizer) into a one-line `InputError` naming the file; nothing
is skipped. DDP: every process holds the same model and optimizer, so rank 0 writes them and every
process reads them. FSDP and DeepSpeed shard the optimizer: their state is not written here and
resuming them is refused (trainer/checkpoint.py).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schemas.errors import InputError

logger = logging.getLogger(__name__)

STATE_FORMAT = 2  # 1 was Accelerate's save_state (pickle); refused on load
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_JSON = "scheduler.json"


def rng_files(rank: int) -> tuple[str, str]:
    return f"rng_rank{rank}.safetensors", f"rng_rank{rank}.json"


# ---------------------------------------------------------------------------------------- writing
def write_json(path: Path, payload: Any) -> None:
    """Write JSON and fsync it."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


def _jsonable(value: Any) -> Any:
    """Tuples become lists (AdamW's betas); numbers and strings pass; anything else is a bug here."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a JSON state file")


def save_model_state(model, folder: Path) -> None:
    """The unwrapped model's weights as trained (tied weights stored once)."""
    from safetensors.torch import save_model

    save_model(model, str(folder / MODEL_FILE))


def save_optimizer_state(optimizer, folder: Path) -> None:
    state = optimizer.state_dict()
    tensors, other = {}, {}
    for param, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param}.{name}"] = value
            else:
                other.setdefault(str(param), {})[name] = _jsonable(value)
    _write_tensors(folder / OPTIMIZER_TENSORS, tensors)
    write_json(folder / OPTIMIZER_JSON, {"format": STATE_FORMAT, "param_groups": _jsonable(state["param_groups"]), "other_state": other})


def save_scheduler_state(scheduler, folder: Path) -> None:
    write_json(folder / SCHEDULER_JSON, {"format": STATE_FORMAT, "state": _jsonable(scheduler.state_dict())})


def save_rng_state(folder: Path, rank: int) -> None:
    """This process's generators: torch CPU and CUDA (safetensors), Python and numpy (JSON)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensor_file, json_file = rng_files(rank)
    _write_tensors(folder / tensor_file, tensors)
    write_json(folder / json_file, {
        "format": STATE_FORMAT,
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    })


def save_training_state(accelerator, model, optimizer, scheduler, folder: Path) -> None:
    """Write `folder` (every process calls it; rank 0 writes the shared files)."""
    folder.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        save_model_state(accelerator.unwrap_model(model), folder)
        save_optimizer_state(optimizer, folder)
        save_scheduler_state(scheduler, folder)
    save_rng_state(folder, accelerator.process_index)


# ---------------------------------------------------------------------------------------- reading
def _unreadable(path: Path, exc: BaseException, what: str) -> InputError:
    detail = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
    return InputError(f"checkpoint file {path} cannot be loaded as {what} ({exc.__class__.__name__}: {detail}); "
                      "the checkpoint is damaged or was altered: resume from another checkpoint (--resume_from_checkpoint FOLDER)")


def read_json(path: Path, *, what: str = "JSON") -> dict[str, Any]:
    """A JSON object from `path`, or a one-line InputError naming the file."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _unreadable(path, exc, what) from None
    if not isinstance(payload, dict):
        raise _unreadable(path, TypeError(f"expected a JSON object, found {type(payload).__name__}"), what)
    return payload


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ValueError...
        raise _unreadable(path, exc, "safetensors") from None


def _tuples_like(saved: Any, live: Any) -> Any:
    """Give back the tuples JSON turned into lists, where the live value is a tuple."""
    if isinstance(live, tuple) and isinstance(saved, list):
        return tuple(saved)
    return saved


def load_model_state(model, folder: Path) -> None:
    from safetensors.torch import load_model

    path = folder / MODEL_FILE
    try:
        load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))
    except Exception as exc:
        raise _unreadable(path, exc, "this model's weights (safetensors)") from None


def load_optimizer_state(optimizer, folder: Path) -> None:
    tensor_path, json_path = folder / OPTIMIZER_TENSORS, folder / OPTIMIZER_JSON
    tensors = _read_tensors(tensor_path)
    meta = read_json(json_path, what="optimizer state (JSON)")
    live_groups = optimizer.state_dict()["param_groups"]
    try:
        groups = meta["param_groups"]
        if len(groups) != len(live_groups):
            raise ValueError(f"{len(groups)} parameter groups, this optimizer has {len(live_groups)}")
        groups = [{k: _tuples_like(v, live.get(k)) for k, v in saved.items()} for saved, live in zip(groups, live_groups)]
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            prefix, param, name = key.split(".", 2)
            if prefix != "state":
                raise ValueError(f"unexpected tensor {key!r}")
            state.setdefault(int(param), {})[name] = value
        for param, values in (meta.get("other_state") or {}).items():
            state.setdefault(int(param), {}).update(values)
        if [g["params"] for g in groups] != [g["params"] for g in live_groups]:
            raise ValueError("its parameter groups list other parameters than this optimizer's")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _unreadable(json_path, exc, "optimizer state") from None
    # torch's load_state_dict checks no shapes: a wrong one would fail (or broadcast) at the next step.
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for index, values in state.items():
        for name, value in values.items():
            if not 0 <= index < len(params):
                raise _unreadable(tensor_path, ValueError(f"state for parameter {index}, this optimizer has {len(params)}"), "this optimizer's state")
            if isinstance(value, torch.Tensor) and value.ndim and value.shape != params[index].shape:
                raise _unreadable(tensor_path, ValueError(f"state.{index}.{name} has shape {list(value.shape)}, the parameter "
                                                          f"{list(params[index].shape)}"), "this optimizer's state")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise _unreadable(tensor_path, exc, "this optimizer's state") from None


def load_scheduler_state(scheduler, folder: Path) -> None:
    path = folder / SCHEDULER_JSON
    meta = read_json(path, what="LR scheduler state (JSON)")
    try:
        saved = meta["state"]
        live = scheduler.state_dict()
        if set(saved) != set(live):
            raise ValueError(f"keys {sorted(saved)} differ from this scheduler's {sorted(live)}")
        scheduler.load_state_dict({k: _tuples_like(v, live[k]) for k, v in saved.items()})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _unreadable(path, exc, "LR scheduler state") from None


def load_rng_state(folder: Path, rank: int) -> None:
    tensor_file, json_file = rng_files(rank)
    tensors = _read_tensors(folder / tensor_file)
    meta = read_json(folder / json_file, what="RNG state (JSON)")
    try:
        py, npy = meta["python"], meta["numpy"]
        python_state = (int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss_next"])
        numpy_state = (str(npy["name"]), np.asarray(npy["keys"], dtype=np.uint32), int(npy["pos"]), int(npy["has_gauss"]),
                       float(npy["cached_gaussian"]))
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    except (KeyError, TypeError, ValueError) as exc:
        raise _unreadable(folder / json_file, exc, "RNG state") from None
    try:
        torch.set_rng_state(tensors["torch"])
        cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors) - 1)]
        if cuda and torch.cuda.is_available():
            if len(cuda) != torch.cuda.device_count():
                raise ValueError(f"{len(cuda)} CUDA generator states for {torch.cuda.device_count()} devices")
            torch.cuda.set_rng_state_all(cuda)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise _unreadable(folder / tensor_file, exc, "RNG state") from None


def load_training_state(accelerator, model, optimizer, scheduler, folder: Path) -> None:
    """Restore model, optimizer, scheduler and this process's RNG from `folder` (every process)."""
    load_model_state(accelerator.unwrap_model(model), folder)
    load_optimizer_state(optimizer, folder)
    load_scheduler_state(scheduler, folder)
    load_rng_state(folder, accelerator.process_index)
