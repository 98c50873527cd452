"""The model side of training: loading (dtype, attention kernel, checkpointing), the tokenizer and
embedding size needed before any weights load, and the one forward pass that training and eval use.

Invariants:
- Every forward goes through `forward_logits`: `input_ids` + `position_ids`, no attention mask,
  `use_cache=False`. transformers 5.24 derives the per-document (block-causal) mask from
  `position_ids` only when no attention mask is given and no KV cache exists; with `use_cache=True`
  it builds a cache and packed documents attend to each other (tests/unit/test_modeling.py pins both).
- Loss: `causal_lm_loss_sum` returns the float32 sum of next-token cross-entropies over targets whose
  label is not -100, and their count; the caller divides by the count over the whole accumulated
  batch (all micro-batches, all processes). The cross-entropy runs in row chunks of 256 MiB of
  float32 (`CE_CHUNK_BYTES`): besides the model's own logits and their gradient it never holds a
  float32 or log-softmax copy of the [B, L, vocab] logits (Qwen2.5 at B=4, L=2048: 5 GB each). On
  an H200, a 0.5B Qwen2 shape at B=4, L=2048 in bf16: 8.5 GiB less peak memory than HF's built-in
  loss, for 9% more step time (the CE is a smaller share of a 7B step).
- Weights load in float32 for training whenever the compute is not pure `model.torch_dtype`: on CPU,
  on a device without bf16, with `training.bf16` off, and under bf16 mixed precision (fp32 master
  weights + bf16 autocast). Each case is logged once. Saved models are written in
  `model.torch_dtype` whatever the training dtype (`save_dtype`); `trust_remote_code` only when asked.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

import torch

from schemas.config import ModelConfig
from schemas.errors import ConfigError, TokenizerError
from trainer.data import IGNORE_INDEX

logger = logging.getLogger(__name__)

CE_CHUNK_BYTES = 256 * 2**20  # float32 bytes of logits upcast at once (~440 rows of a 152k vocabulary)


def attention_implementation(use_flash_attention: bool, device_type: str) -> str:
    """`flash_attention_2` when requested, on CUDA, with flash-attn importable; else `sdpa`."""
    if not use_flash_attention:
        return "sdpa"
    if device_type != "cuda":
        logger.info("model.use_flash_attention: flash-attn needs CUDA (device is %s); using PyTorch SDPA", device_type)
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is None:
        logger.info("model.use_flash_attention: flash-attn is not installed (pip install 'cpt-toolkit[flash]'); using PyTorch SDPA")
        return "sdpa"
    return "flash_attention_2"


def _bf16_supported(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return False


def load_dtype(torch_dtype: str, *, device_type: str, bf16: bool) -> torch.dtype | str:
    """The dtype to load weights in: `torch_dtype`, or float32 where the device cannot train in it."""
    if device_type == "cpu":
        logger.info("training runs in fp32 on CPU (model.torch_dtype=%s and training.bf16=%s apply on GPUs only)", torch_dtype, bf16)
        return torch.float32
    if torch_dtype == "bfloat16" and not _bf16_supported(device_type):
        logger.info("training runs in fp32: this %s device has no bfloat16 support", device_type)
        return torch.float32
    if torch_dtype == "bfloat16" and not bf16:
        logger.info("training runs in fp32: training.bf16 is off, so weights load in float32 (model.torch_dtype=bfloat16 applies with bf16 on)")
        return torch.float32
    if torch_dtype == "bfloat16" and bf16:
        # AdamW steps on bf16 weights round small updates away (bf16 keeps 8 bits of mantissa: an update
        # below ~1/256 of a weight is lost, e.g. lr 5e-5 on most weights). Mixed precision keeps fp32
        # master weights and computes in bf16 (autocast): the 16 bytes/parameter DESIGN.md budgets.
        logger.info("bf16 mixed precision: fp32 master weights, bf16 compute; saved models are written in bfloat16 (model.torch_dtype)")
        return torch.float32
    return "auto" if torch_dtype == "auto" else getattr(torch, torch_dtype)


def save_dtype(torch_dtype: str) -> torch.dtype | None:
    """The dtype saved models (best_model/, final_model/, checkpoints) are written in, or None to keep
    the training dtype: `model.torch_dtype` when it names one (bfloat16, float16, float32), whatever
    the weights were trained in (fp32 masters under bf16 mixed precision, fp32 on CPU), so that the
    export is what the config says; `auto` keeps the training dtype."""
    return None if torch_dtype == "auto" else getattr(torch, torch_dtype)


def _looks_local(path: str) -> bool:
    # A hub id is `name` or `org/name`; anything else can only be a local path.
    return os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or os.path.exists(path)


def _model_error(path: str, exc: BaseException) -> ConfigError:
    reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
    return ConfigError(
        f"cannot load model {path!r} ({exc.__class__.__name__}: {reason}); pass --model_name_or_path a local folder with "
        "config.json and the weights (e.g. one written by `python data/make_tiny_model.py DIR`), or a hub name the machine can download"
    )


def _check_exists(path: str, what: str) -> None:
    if _looks_local(path) and not os.path.exists(os.path.expanduser(path)):
        raise ConfigError(f"{what} {path!r} does not exist; pass --model_name_or_path an existing model folder or a hub name")


def load_model(model_config: ModelConfig, *, device_type: str, bf16: bool, gradient_checkpointing: bool) -> Any:
    """`AutoModelForCausalLM` from `model_config`, on CPU, ready for Accelerate to place and wrap."""
    from transformers import AutoModelForCausalLM

    path = model_config.model_name_or_path
    _check_exists(path, "model")
    dtype = load_dtype(model_config.torch_dtype, device_type=device_type, bf16=bf16)
    attn = attention_implementation(model_config.use_flash_attention, device_type)
    if model_config.device_map == "auto":
        logger.info("model.device_map=auto: Accelerate places the model (one full replica or FSDP shard per process)")
    else:
        logger.warning("model.device_map=%s is ignored: Accelerate places the model; use an Accelerate FSDP config to shard it", model_config.device_map)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn, trust_remote_code=model_config.trust_remote_code
        )
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise _model_error(path, exc) from None
    model.config.use_cache = False  # training never builds a KV cache (see forward_logits)
    if gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # pragma: no cover - older transformers
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    num_params = sum(p.numel() for p in model.parameters())
    logger.info("model %s: %s, %.1fM parameters, %s weights, attention %s, gradient checkpointing %s",
                path, type(model).__name__, num_params / 1e6, next(model.parameters()).dtype, attn, "on" if gradient_checkpointing else "off")
    return model


def load_tokenizer(model_config: ModelConfig) -> Any:
    """`AutoTokenizer` from `tokenizer_name_or_path`, else `model_name_or_path`."""
    from transformers import AutoTokenizer

    path = model_config.tokenizer_name_or_path or model_config.model_name_or_path
    # The flag that fixes a bad path: the tokenizer comes from the model unless it was set apart.
    flag = "--tokenizer_name_or_path" if model_config.tokenizer_name_or_path else "--model_name_or_path (or --tokenizer_name_or_path)"
    if _looks_local(path) and not os.path.exists(os.path.expanduser(path)):
        raise TokenizerError(f"tokenizer {path!r} does not exist; pass {flag} a folder with the tokenizer files")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=model_config.trust_remote_code)
    except (OSError, ValueError, ImportError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise TokenizerError(
            f"cannot load tokenizer {path!r} ({exc.__class__.__name__}: {reason}); pass {flag} a folder with the model's tokenizer files"
        ) from None


def check_hub_access(model_config: ModelConfig, *, timeout_s: float = 5.0) -> None:
    """Before anything loads: when the model or tokenizer is a hub name and the hub cannot be reached,
    use the local Hugging Face cache (offline mode, no retries) if it holds them, else fail at once
    naming the flag that fixes it. Without this, transformers retries for about 50 s per file and
    then names the tokenizer. Nothing is probed when every path is local or HF_HUB_OFFLINE is set."""
    import huggingface_hub
    from huggingface_hub import constants

    names = [(model_config.model_name_or_path, "model", "--model_name_or_path", "config.json")]
    if model_config.tokenizer_name_or_path:
        names.append((model_config.tokenizer_name_or_path, "tokenizer", "--tokenizer_name_or_path", "tokenizer_config.json"))
    remote = [item for item in names if not _looks_local(item[0])]
    if not remote or constants.is_offline_mode():
        return
    reason = _hub_unreachable(constants.ENDPOINT, timeout_s)
    if reason is None:
        return
    for name, what, flag, probe in remote:
        if not isinstance(huggingface_hub.try_to_load_from_cache(name, probe), str):
            raise ConfigError(
                f"{what} {name!r} is a hub name, but the hub {constants.ENDPOINT} cannot be reached ({reason}) and the local cache "
                f"({constants.HF_HUB_CACHE}) does not hold it; pass {flag} a local folder (config.json, weights and tokenizer files, "
                "e.g. one written by `python data/make_tiny_model.py DIR`), or run where the hub can be reached"
            )
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    logger.warning("the hub %s cannot be reached (%s): loading %s from the local cache (offline mode)",
                   constants.ENDPOINT, reason, ", ".join(name for name, *_ in remote))


def _hub_unreachable(endpoint: str, timeout_s: float) -> str | None:
    """None when the hub answers an HTTP request at all (any status); else why not, in a few words."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=timeout_s)
    except Exception as exc:  # httpx / requests connection errors, DNS failures, timeouts
        return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:120] or exc.__class__.__name__
    return None


def _model_config(model_config: ModelConfig) -> Any:
    """The model's (text) config from config.json; no weights are read."""
    from transformers import AutoConfig

    path = model_config.model_name_or_path
    _check_exists(path, "model")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=model_config.trust_remote_code)
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise _model_error(path, exc) from None
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def embedding_rows(model_config: ModelConfig) -> int:
    """Rows of the model's input embedding, from its config (no weights are read)."""
    rows = getattr(_model_config(model_config), "vocab_size", None)
    if not isinstance(rows, int) or rows < 1:
        raise ConfigError(f"model {model_config.model_name_or_path!r} config has no vocab_size; pass --model_name_or_path a causal LM (config.json with vocab_size)")
    return rows


def check_max_length(model_config: ModelConfig) -> None:
    """Refuse `max_length` beyond the model's `max_position_embeddings` (from config.json, before any
    weights load): past it positions are out of the range the model was trained on, and a first
    step at 2x the model's length can run out of memory with nothing printed."""
    limit = getattr(_model_config(model_config), "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0 and model_config.max_length > limit:
        raise ConfigError(
            f"model.max_length={model_config.max_length} exceeds the max_position_embeddings={limit} of model "
            f"{model_config.model_name_or_path!r}; set --max_length {limit} or less, or use a model (config.json) made for longer sequences"
        )


def forward_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits [B, L, vocab] of a packed batch: the one forward that training, eval and tests share.

    No attention mask and `use_cache=False`, so transformers builds per-document masks from
    `position_ids` (with a KV cache, 5.24 skips them and documents would attend to each other)."""
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits


class _CrossEntropySum(torch.autograd.Function):
    """sum_i [logsumexp(z_i) - z_i[t_i]] over rows with t_i != IGNORE_INDEX, in float32, in chunks.

    Saves the logits themselves (no copy); the backward recomputes the softmax chunk by chunk and
    writes (softmax - onehot) * grad into one gradient tensor of the logits' dtype."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        safe = torch.where(valid, targets, 0)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            for s in range(0, logits.shape[0], chunk_rows):
                z = logits[s : s + chunk_rows].float()
                chunk_lse = torch.logsumexp(z, dim=-1)
                target_logit = z.gather(1, safe[s : s + chunk_rows, None]).squeeze(1)
                total += torch.where(valid[s : s + chunk_rows], chunk_lse - target_logit, 0.0).sum()
        ctx.save_for_backward(logits, safe, valid)
        ctx.chunk_rows = chunk_rows
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        logits, safe, valid = ctx.saved_tensors
        grad = torch.empty_like(logits)
        rows = ctx.chunk_rows
        # d(lse - z_t)/dz = softmax(z) - onehot(t), times the incoming gradient, 0 on ignored rows.
        scale = torch.where(valid, grad_total.float(), 0.0)[:, None]
        with torch.autocast(device_type=logits.device.type, enabled=False):
            for s in range(0, logits.shape[0], rows):
                # softmax reads the logits in their dtype and writes float32: no separate upcast pass.
                p = torch.softmax(logits[s : s + rows], dim=-1, dtype=torch.float32)
                p.scatter_add_(1, safe[s : s + rows, None], torch.full_like(scale[s : s + rows], -1.0))
                torch.mul(p, scale[s : s + rows], out=grad[s : s + rows])  # scaled and cast in one pass
        return grad, None, None


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor, *, chunk_rows: int | None = None) -> torch.Tensor:
    """float32 sum of cross-entropies of `logits` [N, V] against `targets` [N] (-100 ignored).

    `chunk_rows` rows are upcast at a time (default: CE_CHUNK_BYTES of float32)."""
    if chunk_rows is None:
        chunk_rows = max(1, CE_CHUNK_BYTES // (4 * logits.shape[-1]))
    return _CrossEntropySum.apply(logits, targets, chunk_rows)


def causal_lm_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropies, number of target tokens) for a packed batch.

    Position t is scored on labels[t + 1] when that label is not -100; the sum is float32 and
    differentiable, the count an int64 tensor on the same device."""
    logits = forward_logits(model, batch)
    labels = batch["labels"]
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    # Shift the labels, not the logits: logits[:, :-1] could not be flattened without a copy.
    loss_sum = cross_entropy_sum(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss_sum, (targets != IGNORE_INDEX).sum()
