"""Checkpoints: save (atomically), find, rotate and restore.

A checkpoint folder holds, side by side:
- the model as `save_pretrained` writes it (config + safetensors) and the tokenizer, so
  `AutoModelForCausalLM.from_pretrained(folder)` and `generate` work on it directly;
- for resumable checkpoints (`checkpoint-step-*`, `checkpoint-epoch-*`): `training_state/`
  (trainer/training_state.py: weights as trained, optimizer, scheduler, RNG of python/numpy/torch/
  cuda per process, in safetensors and JSON: nothing is unpickled on resume),
  `trainer_state.json` (global step, epoch, best/initial eval loss, the settings that fix the data
  order) and `loader_state_rank{R}.json` (each process's WindowLoader position: resume jumps there,
  no batch is replayed);
- `cpt_checkpoint.json` (`RECORD_NAME`): step, epoch, eval losses and the lineage: every manifest
  of the mixture (name, path, sha256 of manifest.json, weight, tokens and windows drawn so far),
  `manifest` (the first one, as the first trainer wrote it) and `init_from` (the record of the
  model folder a new stage started from, `stage_lineage`, nested back to the first stage). It is
  written LAST and is the completion marker.

Atomicity: everything is written into `<name>.tmp-<pid of rank 0>`, the record last, then the folder
is renamed to `<name>` (an existing `<name>` is first renamed to `<name>.old-<pid>` and deleted after).
A crash therefore leaves only `*.tmp-*` / `*.old-*` folders or folders without the record; the
`latest` resolver ignores all of them, and `remove_stale_tmp` clears them at the next start. A full
disk during a save removes the `.tmp-*` folder and stops the run with a one-line error naming the
folder and its free space (exit 2); the previous checkpoint is untouched.

Formats: CHECKPOINT_FORMAT 2. Format 1 (Accelerate's pickle files) is refused on resume with a
line saying so (its weights still start a new stage). Resuming under FSDP or DeepSpeed is refused:
their optimizer state is sharded and is not written in the code-free format yet.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate.utils import DistributedType, broadcast_object_list

from schemas.errors import ConfigError, CptError
from schemas.manifest import sha256_file
from schemas.storage import full_disk_as_error
from trainer import training_state

logger = logging.getLogger(__name__)

RECORD_NAME = "cpt_checkpoint.json"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_STATE_DIR = "training_state"
CHECKPOINT_FORMAT = 2  # version of the files above; bump on incompatible change (1: Accelerate pickles)
_SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)
_RESUMABLE = re.compile(r"^checkpoint-(step|epoch)-(\d+)$")
_PARTIAL = re.compile(r"\.(tmp|old)-\d+$")


def loader_state_name(rank: int) -> str:
    return f"loader_state_rank{rank}.json"


def manifest_record(manifest_path: str | Path) -> dict[str, str]:
    """The manifest a checkpoint was trained on: absolute path and sha256 of manifest.json."""
    path = Path(manifest_path)
    if path.is_dir():
        path = path / "manifest.json"
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


def _set_config_dtype(config_path: Path, dtype: torch.dtype) -> None:
    """Record the dtype the weights were written in, so `from_pretrained(dtype="auto")` loads it."""
    config = json.loads(config_path.read_text())
    name = str(dtype).removeprefix("torch.")
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = name
    config.setdefault("dtype", name)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def save_checkpoint(
    accelerator,
    model,
    tokenizer,
    folder: Path,
    *,
    record: dict[str, Any],
    trainer_state: Optional[dict[str, Any]] = None,
    loader_state: Optional[dict[str, Any]] = None,
    optimizer=None,
    scheduler=None,
    model_dtype: Optional[torch.dtype] = None,
) -> Path:
    """Write a checkpoint to `folder` atomically; every process must call it.

    With `trainer_state` the checkpoint is resumable: `optimizer` and `scheduler` are then required,
    and training_state/ + the loader position are added. A full disk raises the one-line error of
    `schemas.storage.no_space_error` on every process, after removing the partial folder."""
    folder = Path(folder)
    main = accelerator.is_main_process
    pid = broadcast_object_list([os.getpid()])[0] if accelerator.num_processes > 1 else os.getpid()
    tmp = folder.with_name(f"{folder.name}.tmp-{pid}")
    failure = None
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = _attempt(lambda: tmp.mkdir(parents=True), folder)
    _raise_if_any(accelerator, failure, tmp, folder)

    # get_state_dict gathers a full state dict under FSDP (a collective: every process calls it).
    state_dict = accelerator.get_state_dict(model)
    if model_dtype is not None and state_dict is not None:
        # The exported model in model.torch_dtype; the resumable state below keeps the fp32 masters.
        state_dict = {k: v.to(model_dtype) if v.is_floating_point() else v for k, v in state_dict.items()}

    def write_parts(state_dict) -> None:
        accelerator.unwrap_model(model).save_pretrained(tmp, is_main_process=main, state_dict=state_dict)
        if main and model_dtype is not None:
            _set_config_dtype(tmp / "config.json", model_dtype)
        if main and tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if trainer_state is not None:
            sharded = accelerator.distributed_type in _SHARDED
            if not sharded:
                training_state.save_training_state(accelerator, model, optimizer, scheduler, tmp / TRAINING_STATE_DIR)
            training_state.write_json(tmp / loader_state_name(accelerator.process_index), loader_state or {})
            if main:
                distributed = str(accelerator.distributed_type).rsplit(".", 1)[-1]
                training_state.write_json(tmp / TRAINER_STATE_NAME, {"format": CHECKPOINT_FORMAT, "distributed": distributed,
                                                                     "optimizer_saved": not sharded, **trainer_state})

    failure = _attempt(functools.partial(write_parts, state_dict), folder)
    del state_dict
    _raise_if_any(accelerator, failure, tmp, folder)

    def publish() -> None:
        training_state.write_json(tmp / RECORD_NAME, {"format": CHECKPOINT_FORMAT, "complete": True, "resumable": trainer_state is not None, **record})
        old = folder.with_name(f"{folder.name}.old-{pid}")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(folder.parent)

    _raise_if_any(accelerator, _attempt(publish, folder) if main else None, tmp, folder)
    return folder


def _attempt(write, folder: Path) -> Optional[CptError]:
    """Run `write`; a full disk becomes the one-line error returned (other errors propagate)."""
    try:
        with full_disk_as_error(folder.parent, folder.name):
            write()
    except CptError as error:
        return error
    return None


def _raise_if_any(accelerator, failure: Optional[CptError], tmp: Path, folder: Path) -> None:
    """Every process learns whether any failed (one collective), so none is left waiting at a barrier;
    the partial folder is removed and every process raises."""
    failed = [failure is not None]
    if accelerator.num_processes > 1:
        failed = accelerator.gather(torch.tensor([failure is not None], device=accelerator.device)).tolist()
    else:
        accelerator.wait_for_everyone()
    if not any(failed):
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    if failure is not None:
        raise failure
    raise CptError(f"writing checkpoint {folder.name} into {folder.parent} failed on another process (see its error line); the previous checkpoint is intact")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_record(folder: str | Path) -> Optional[dict[str, Any]]:
    """The checkpoint's record, or None when the folder is not a complete checkpoint."""
    folder = Path(folder)
    if _PARTIAL.search(folder.name) or not folder.is_dir():
        return None
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("complete") is True else None


LINEAGE_KEYS = ("name", "global_step", "epoch", "eval_loss", "base_model", "manifest", "mixture", "init_from", "saved_at")


def stage_lineage(model_path: str | Path) -> Optional[dict[str, Any]]:
    """When a run starts from a model folder this trainer wrote (a new CPT stage: `final_model/`,
    `best_model/`, a checkpoint), that folder's record, cut to its lineage; else None."""
    folder = Path(model_path).expanduser()
    record = read_record(folder) if folder.is_dir() else None
    if record is None:
        return None
    return {"path": str(folder.resolve()), **{key: record.get(key) for key in LINEAGE_KEYS if key in record}}


def list_checkpoints(output_dir: str | Path, *, kind: Optional[str] = None) -> list[tuple[int, Path]]:
    """Complete resumable checkpoints in `output_dir` as (global_step, folder), oldest first.

    `kind` limits to `step` or `epoch` checkpoints. Partial folders are never listed."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = _RESUMABLE.match(child.name)
        if not match or (kind and match.group(1) != kind):
            continue
        record = read_record(child)
        if record is None or not record.get("resumable"):
            continue
        # Order by step, then epoch checkpoints after step checkpoints of the same step (same state).
        found.append((int(record.get("global_step", -1)), match.group(1) == "epoch", child))
    return [(step, path) for step, _, path in sorted(found)]


def resolve_checkpoint(spec: str, output_dir: str | Path) -> Path:
    """`latest` -> the newest complete checkpoint in output_dir; otherwise the given folder, checked."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise ConfigError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}; drop the flag to start from step 0 or pass a checkpoint folder")
        _check_format(found[-1][1], read_record(found[-1][1]).get("format"))
        return found[-1][1]
    folder = Path(spec)
    if not folder.is_dir():
        raise ConfigError(f"--resume_from_checkpoint {spec}: no such folder; pass a checkpoint-* folder or `latest`")
    record = read_record(folder)
    if record is None:
        raise ConfigError(f"--resume_from_checkpoint {spec}: not a complete checkpoint (no {RECORD_NAME}, or an interrupted write); pass another checkpoint or `latest`")
    if not record.get("resumable"):
        raise ConfigError(f"--resume_from_checkpoint {spec}: holds a model only (no optimizer/loader state); resume from a checkpoint-step-* or checkpoint-epoch-* folder")
    _check_format(folder, record.get("format"))
    return folder


def rotate_checkpoints(output_dir: str | Path, *, limit: int) -> list[Path]:
    """Delete the oldest step checkpoints beyond `limit` (0 keeps all); return what was deleted."""
    if limit <= 0:
        return []
    found = list_checkpoints(output_dir, kind="step")
    doomed = [path for _, path in found[: max(0, len(found) - limit)]]
    for path in doomed:
        # Rename first so that a crash mid-delete never leaves a checkpoint that looks whole.
        trash = path.with_name(f"{path.name}.old-{os.getpid()}")
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("deleted %s (save_total_limit=%d)", path.name, limit)
    return doomed


def _previous_run(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.iterdir() if p.is_dir() and (p.name.startswith("checkpoint-") or p.name in ("best_model", "final_model")))


def check_output_dir(output_dir: str | Path, *, resuming: bool, overwrite: bool) -> None:
    """Refuse to mix a new run into a previous run's outputs (unless resuming or overwrite)."""
    output_dir = Path(output_dir)
    if resuming or overwrite or not output_dir.is_dir():
        return
    previous = [p.name for p in _previous_run(output_dir)]
    if previous:
        raise ConfigError(
            f"output_dir {output_dir} already holds a run ({', '.join(previous[:3])}{', ...' if len(previous) > 3 else ''}); "
            "resume it with --resume_from_checkpoint latest, choose another --output_dir, or pass --overwrite_output_dir true"
        )


def clear_previous_run(output_dir: str | Path) -> None:
    """overwrite_output_dir: delete a previous run's checkpoints, best_model/ and final_model/."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    for path in _previous_run(output_dir):
        shutil.rmtree(path)
        logger.info("overwrite_output_dir: removed %s", path)


def remove_stale_tmp(output_dir: str | Path) -> list[Path]:
    """Delete `*.tmp-*` / `*.old-*` folders a killed run left in output_dir (rank 0 only)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    stale = [p for p in output_dir.iterdir() if p.is_dir() and _PARTIAL.search(p.name)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        logger.warning("removed %s, left by an interrupted checkpoint write", path.name)
    return stale


def check_resume_supported(accelerator, folder: Path) -> None:
    """Refuse, before any weights load, to resume under FSDP or DeepSpeed (sharded optimizer state
    is not saved in the code-free format)."""
    if accelerator.distributed_type in _SHARDED:
        kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
        raise ConfigError(
            f"--resume_from_checkpoint under {kind} is not supported by this version: its sharded optimizer state is not saved "
            f"(only pickle-free formats are loaded); start a new stage from the checkpoint's weights with --model_name_or_path {folder} "
            "and a new --output_dir, or resume on one GPU or with DDP (accelerate_configs/ddp.yaml)"
        )


def load_checkpoint(accelerator, folder: Path, *, model, optimizer, scheduler) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model, optimizer, scheduler and RNG from `folder` (every process calls it).

    Returns (trainer_state, this process's loader state). Every file is read as JSON or
    safetensors; one that cannot be loaded is a one-line InputError naming it."""
    folder = Path(folder)
    trainer_state = training_state.read_json(folder / TRAINER_STATE_NAME, what="trainer state (JSON)")
    _check_format(folder, trainer_state.get("format"))
    check_resume_supported(accelerator, folder)
    if trainer_state.get("optimizer_saved") is False:
        raise ConfigError(f"checkpoint {folder} was written under {trainer_state.get('distributed')}, without optimizer state; "
                          f"start a new stage from its weights with --model_name_or_path {folder} and a new --output_dir")
    saved_world = trainer_state.get("world_size")
    if saved_world != accelerator.num_processes:
        raise ConfigError(f"checkpoint {folder} was written by {saved_world} processes, this run has {accelerator.num_processes}; resume with --num_processes {saved_world} (the data position is per process)")
    loader_state = training_state.read_json(folder / loader_state_name(accelerator.process_index), what="data-loader state (JSON)")
    training_state.load_training_state(accelerator, model, optimizer, scheduler, folder / TRAINING_STATE_DIR)
    return trainer_state, loader_state


def _check_format(folder: Path, version: Any) -> None:
    if version == CHECKPOINT_FORMAT:
        return
    if isinstance(version, int) and version < CHECKPOINT_FORMAT:
        raise ConfigError(
            f"checkpoint {folder} was written by an older version of cpt-train (checkpoint format {version}: Accelerate's pickle files, "
            f"which can run code when loaded), so this version does not resume it; start a new stage from its weights with "
            f"--model_name_or_path {folder} and a new --output_dir (fresh optimizer and schedule), or resume with the version that wrote it"
        )
    raise ConfigError(f"checkpoint {folder} has format {version!r}, this trainer reads {CHECKPOINT_FORMAT}; resume with the toolkit version that wrote it")
