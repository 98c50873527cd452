"""Resumable state never runs code: every file of a checkpoint replaced by a pickle payload that would
write a marker file is refused with a one-line error naming that file, and the marker never appears;
a checkpoint in the old Accelerate (pickle) format is refused with a line saying so. Real Accelerate,
a real tiny Qwen2 model, real files."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from schemas.errors import ConfigError, CptError, InputError
from trainer import checkpoint as ckpt
from trainer import training_state as ts

STATE_FILES = [
    ckpt.TRAINER_STATE_NAME,
    ckpt.loader_state_name(0),
    f"{ckpt.TRAINING_STATE_DIR}/{ts.MODEL_FILE}",
    f"{ckpt.TRAINING_STATE_DIR}/{ts.OPTIMIZER_TENSORS}",
    f"{ckpt.TRAINING_STATE_DIR}/{ts.OPTIMIZER_JSON}",
    f"{ckpt.TRAINING_STATE_DIR}/{ts.SCHEDULER_JSON}",
    *(f"{ckpt.TRAINING_STATE_DIR}/{name}" for name in ts.rng_files(0)),
]


class _Payload:
    """Unpickling this writes the marker file: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _payload_bytes(marker, kind: str) -> bytes:
    if kind == "pickle":
        return pickle.dumps(_Payload(marker))
    # torch.save's zip format: what torch.load(weights_only=False) would execute.
    import io

    buffer = io.BytesIO()
    torch.save({"state": _Payload(marker)}, buffer)
    return buffer.getvalue()


def _reset():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _parts(model_dir):
    acc = Accelerator(cpu=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=10)
    model, optimizer = acc.prepare(model, optimizer)
    return acc, model, optimizer, scheduler


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory, tiny_model_dir):
    """One resumable checkpoint after one real step (read-only for the tests: they copy what they edit)."""
    acc, model, optimizer, scheduler = _parts(tiny_model_dir)
    ids = torch.randint(0, 1000, (2, 16))
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    optimizer.step()
    scheduler.step()
    folder = ckpt.save_checkpoint(acc, model, AutoTokenizer.from_pretrained(tiny_model_dir),
                                  tmp_path_factory.mktemp("ckpt") / "checkpoint-step-1", record={"global_step": 1},
                                  trainer_state={"global_step": 1, "world_size": 1}, loader_state={"version": 1},
                                  optimizer=optimizer, scheduler=scheduler)
    _reset()
    return folder


@pytest.fixture
def accelerate_reset():
    yield
    _reset()


@pytest.mark.parametrize("name", STATE_FILES)
@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_planted_payload_is_refused_naming_the_file_and_never_runs(tmp_path, saved_checkpoint, tiny_model_dir, accelerate_reset, name, kind):
    folder = tmp_path / "checkpoint-step-1"
    shutil.copytree(saved_checkpoint, folder)
    marker = tmp_path / "marker"
    (folder / name).write_bytes(_payload_bytes(marker, kind))
    acc, model, optimizer, scheduler = _parts(tiny_model_dir)
    with pytest.raises(CptError) as info:
        ckpt.load_checkpoint(acc, ckpt.resolve_checkpoint(str(folder), tmp_path), model=model, optimizer=optimizer, scheduler=scheduler)
    assert isinstance(info.value, InputError)
    message = str(info.value)
    assert str(folder / name) in message and "\n" not in message, message
    assert not marker.exists(), "a payload in the checkpoint ran"


def test_a_valid_file_of_the_wrong_shape_is_refused_naming_it(tmp_path, saved_checkpoint, tiny_model_dir, accelerate_reset):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "checkpoint-step-1"
    shutil.copytree(saved_checkpoint, folder)
    path = folder / ckpt.TRAINING_STATE_DIR / ts.OPTIMIZER_TENSORS
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("exp_avg"))
    tensors[key] = torch.zeros(3)
    save_file(tensors, str(path))
    acc, model, optimizer, scheduler = _parts(tiny_model_dir)
    with pytest.raises(InputError, match=str(path)):
        ckpt.load_checkpoint(acc, folder, model=model, optimizer=optimizer, scheduler=scheduler)


def _old_format(folder, marker):
    """What Accelerate's save_state wrote (format 1), each pickle file holding a payload."""
    for name in (ckpt.RECORD_NAME, ckpt.TRAINER_STATE_NAME):
        raw = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**raw, "format": 1}))
    state = folder / ckpt.TRAINING_STATE_DIR
    shutil.rmtree(state)
    state.mkdir()
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
        (state / name).write_bytes(_payload_bytes(marker, "pickle" if name.endswith(".pkl") else "torch.save"))


def test_an_old_pickle_checkpoint_is_refused_before_anything_loads(tmp_path, saved_checkpoint, accelerate_reset):
    from trainer.cli import main

    out = tmp_path / "out"
    folder = out / "checkpoint-step-1"
    shutil.copytree(saved_checkpoint, folder)
    marker = tmp_path / "marker"
    _old_format(folder, marker)
    for spec in (str(folder), "latest"):
        with pytest.raises(ConfigError, match="older version of cpt-train") as info:
            ckpt.resolve_checkpoint(spec, out)
        assert f"--model_name_or_path {folder}" in str(info.value) and "\n" not in str(info.value)
    code = main(["--manifest", str(tmp_path / "shards"), "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    assert code == 2
    assert not marker.exists()
