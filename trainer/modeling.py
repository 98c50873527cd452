"""The model side of training: loading (dtype, attention kernel, checkpointing, compiled layers), the
tokenizer and embedding size needed before any weights load, and the one forward pass that training
and eval use.

Invariants:
- Attention (`model.attention`, `attention_implementation`): every kernel keeps packed documents
  apart. flash_attention_2 and `varlen` (torch.nn.attention.varlen, Flash Attention inside PyTorch,
  registered here with transformers' AttentionInterface) take each document as its own sequence from
  cu_seqlens, computed once per forward from `position_ids` (`packed_sequence_kwargs`); on CPU (or in
  fp32) `varlen` runs causal SDPA document by document, exactly. sdpa, eager and flex_attention get the
  block-causal mask transformers derives from `position_ids`. auto: flash_attention_2 > varlen >
  flex_attention > sdpa on CUDA (the order is a hypothesis until bench/gpu_check.sh measures it);
  sdpa on CPU.
- `causal_lm_loss_sum(..., fused=True)` (training.fused_linear_cross_entropy): the output projection
  and the loss in chunks of FUSED_CE_CHUNK_BYTES of float32 logits; neither the [B, L, vocab] logits
  nor their gradient ever exist (Qwen2.5 at 4 x 4096 tokens: 5 GB in bf16 each, 10 GB in float32).
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
import inspect
import logging
import os
from typing import Any

import torch

from schemas.config import ModelConfig
from schemas.errors import ConfigError, TokenizerError
from trainer.data import IGNORE_INDEX

logger = logging.getLogger(__name__)

CE_CHUNK_BYTES = 256 * 2**20  # float32 bytes of logits upcast at once (~440 rows of a 152k vocabulary)
# Fused projection + loss: float32 logits made at once (~1,770 rows of 152k): chunks big enough that the
# per-chunk float32 update of grad_W (vocab x hidden) stays a small share of the chunk's matmuls.
FUSED_CE_CHUNK_BYTES = 2**30


def _varlen_kernel():
    """torch.nn.attention.varlen.varlen_attn (Flash Attention inside PyTorch, torch >= 2.9), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def attention_implementation(attention: str, *, use_flash_attention: bool = True, device_type: str, low_precision: bool = True) -> str:
    """The `attn_implementation` to load the model with, for `model.attention`.

    `auto` takes the first that runs here, fastest first: flash_attention_2 (CUDA, flash-attn
    installed, use_flash_attention on), varlen (CUDA, bf16/fp16 compute, torch's varlen kernel),
    flex_attention (CUDA, torch's flex_attention), else sdpa. All mask packed documents exactly: flash and
    varlen take each document as its own sequence (cu_seqlens from position_ids), flex and sdpa a
    block-causal mask that transformers derives from position_ids."""
    if attention != "auto":
        if attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("model.attention=flash_attention_2 needs flash-attn (pip install 'cpt-toolkit[flash]'); use model.attention auto")
        if attention == "varlen" and device_type == "cuda" and (_varlen_kernel() is None or not low_precision):
            raise ConfigError("model.attention=varlen needs torch >= 2.9 and bf16/fp16 compute on CUDA "
                              "(training.bf16 on or model.torch_dtype bfloat16); use model.attention auto")
        if attention == "varlen":
            register_varlen_attention()
        return attention
    if device_type != "cuda":
        return "sdpa"
    if use_flash_attention and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    if _varlen_kernel() is not None and low_precision:
        register_varlen_attention()
        return "varlen"
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is not None:
        return "flex_attention"
    return "sdpa"


def packed_sequence_kwargs(position_ids: torch.Tensor) -> dict[str, Any]:
    """cu_seqlens and the longest document of a packed batch, for the varlen and flash kernels: every
    row's documents laid end to end (each row starts one, at position 0). One host sync (the count of
    documents), once per forward rather than once per layer."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten().to(torch.int32)
    cu = torch.cat([starts, torch.tensor([flat.numel()], dtype=torch.int32, device=flat.device)])
    longest = int(cu.diff().max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                             cu_seq_lens_q=None, max_length_q=None, position_ids=None, **kwargs):
    """transformers attention function `varlen`: causal attention within each packed document.

    query [B, Hq, L, D], key/value [B, Hkv, L, D] -> [B, L, Hq, D]. On CUDA in bf16/fp16 one
    `varlen_attn` call over all documents; elsewhere (CPU, fp32) causal SDPA document by document,
    which is exact and what the CPU tests check the document boundaries with."""
    if dropout:
        raise ConfigError(f"model.attention=varlen has no attention dropout (the model asks for {dropout}); use model.attention sdpa")
    if sliding_window is not None:
        raise ConfigError("model.attention=varlen does not do sliding-window attention; use model.attention sdpa")
    if cu_seq_lens_q is None:
        if position_ids is None:
            raise ValueError("varlen attention needs position_ids or cu_seq_lens_q (see trainer.modeling.forward_logits)")
        packed = packed_sequence_kwargs(position_ids)
        cu_seq_lens_q, max_length_q = packed["cu_seq_lens_q"], packed["max_length_q"]
    batch, heads, length, dim = query.shape
    if query.is_cuda and _VARLEN and query.dtype in (torch.bfloat16, torch.float16):
        q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
        options = dict(_VARLEN["options"])
        if "scale" in _VARLEN["params"]:
            options["scale"] = scaling
        elif scaling is not None and abs(scaling - dim**-0.5) > 1e-12:
            raise ConfigError(f"this torch's varlen_attn has no scale argument and the model scales by {scaling}; use model.attention sdpa")
        if "enable_gqa" not in _VARLEN["params"] and k.shape[1] != heads:  # older torch: repeat the KV heads
            k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
        out = _VARLEN["kernel"](q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, **options)
        return out.view(batch, length, heads, dim), None
    bounds = cu_seq_lens_q.tolist()
    flat_q, flat_k, flat_v = (t.transpose(0, 1).reshape(t.shape[1], batch * length, dim) for t in (query, key, value))
    flat_out = torch.empty_like(flat_q)
    for s, e in zip(bounds[:-1], bounds[1:]):
        flat_out[:, s:e] = torch.nn.functional.scaled_dot_product_attention(
            flat_q[None, :, s:e], flat_k[None, :, s:e], flat_v[None, :, s:e], is_causal=True, scale=scaling, enable_gqa=True)[0]
    out = flat_out.view(heads, batch, length, dim).permute(1, 2, 0, 3)
    return out, None


# The varlen kernel and how to call it in this torch, read once at registration (not inside the
# forward, which torch.compile traces): {"kernel", "params", "options"}; empty where there is none.
_VARLEN: dict[str, Any] = {}


def register_varlen_attention() -> None:
    """Register `varlen` with transformers (attention function; no mask: the kernel takes cu_seqlens)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, flash_attention_mask

    kernel = _varlen_kernel()
    if kernel is not None and not _VARLEN:
        params = set(inspect.signature(kernel).parameters)
        # Causal: `is_causal=True` (torch 2.9-2.10) or `window_size=(-1, 0)` (later); GQA natively where it can.
        options: dict[str, Any] = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        _VARLEN.update(kernel=kernel, params=params, options=options)
    if "varlen" not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register("varlen", varlen_attention_forward)
        AttentionMaskInterface.register("varlen", flash_attention_mask)


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


def load_model(model_config: ModelConfig, *, device_type: str, bf16: bool, gradient_checkpointing: bool,
               checkpoint_every: int = 1, compile_layers: bool = False) -> Any:
    """`AutoModelForCausalLM` from `model_config`, on CPU, ready for Accelerate to place and wrap.

    `checkpoint_every` N checkpoints 1 decoder layer in N (with gradient_checkpointing);
    `compile_layers` compiles each decoder layer with torch.compile (CUDA only)."""
    from transformers import AutoModelForCausalLM

    path = model_config.model_name_or_path
    _check_exists(path, "model")
    dtype = load_dtype(model_config.torch_dtype, device_type=device_type, bf16=bf16)
    low_precision = (bf16 and _bf16_supported(device_type)) or dtype in (torch.bfloat16, torch.float16)
    attn = attention_implementation(model_config.attention, use_flash_attention=model_config.use_flash_attention,
                                    device_type=device_type, low_precision=low_precision)
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
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=checkpoint_every)
    if compile_layers:
        compile_decoder_layers(model, device_type=device_type)
    num_params = sum(p.numel() for p in model.parameters())
    checkpointing = "off" if not gradient_checkpointing else "on" if checkpoint_every == 1 else f"1 layer in {checkpoint_every}"
    logger.info("model %s: %s, %.1fM parameters, %s weights, attention %s, gradient checkpointing %s, compiled layers %s",
                path, type(model).__name__, num_params / 1e6, next(model.parameters()).dtype, attn, checkpointing,
                "on" if compile_layers and device_type == "cuda" else "off")
    return model


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's repeated decoder blocks (`model.model.layers` in Llama/Qwen-style models)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ConfigError(f"{type(model).__name__} has no decoder `layers` list; set training.torch_compile false")
    return list(layers)


def compile_decoder_layers(model: Any, *, device_type: str, backend: str = "inductor") -> int:
    """torch.compile each decoder layer in place (one graph per block, shared by all blocks: same code,
    same shapes), as torchtitan does; embedding, final norm and loss stay eager. CUDA only: on CPU
    the compile time outweighs any gain (logged). Returns the number of compiled layers."""
    if device_type != "cuda" and backend == "inductor":
        logger.info("training.torch_compile applies on CUDA only (device is %s); layers run eagerly", device_type)
        return 0
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(backend=backend)
    return len(layers)


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


def _unwrapped(model: Any) -> Any:
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def _forward_kwargs(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if getattr(_unwrapped(model).config, "_attn_implementation", None) in ("varlen", "flash_attention_2"):
        kwargs.update(packed_sequence_kwargs(batch["position_ids"]))  # once per forward, not per layer
    return kwargs


def forward_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits [B, L, vocab] of a packed batch: the one forward that training, eval and tests share.

    No attention mask and `use_cache=False`, so transformers builds per-document masks from
    `position_ids` (with a KV cache, 5.24 skips them and documents would attend to each other); the
    varlen and flash kernels get the documents' cu_seqlens instead."""
    return model(**_forward_kwargs(model, batch)).logits


def final_hidden_states(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.nn.Module, torch.dtype]:
    """(hidden states [B, L, H] that the output projection reads, that projection, the dtype it computes
    in) from the same forward as `forward_logits`, through the (wrapped) model so that DDP's hooks run,
    but with no logits computed (`logits_to_keep` selects no position)."""
    inner = _unwrapped(model)
    captured: list[torch.Tensor] = []

    def keep(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = inner.get_decoder().register_forward_hook(keep)
    try:
        none = torch.empty(0, dtype=torch.long, device=batch["input_ids"].device)
        out = model(**_forward_kwargs(model, batch), logits_to_keep=none)
    finally:
        handle.remove()
    head = inner.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ConfigError(f"{type(inner).__name__}'s output projection has a bias; set training.fused_linear_cross_entropy false")
    return captured[-1], head, out.logits.dtype  # logits [B, 0, V]: the dtype autocast gave the projection


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


class _LinearCrossEntropySum(torch.autograd.Function):
    """sum_i [logsumexp(h_i W^T) - (h_i W^T)[t_i]] over rows with t_i != IGNORE_INDEX, the logits made
    chunk by chunk and never kept: forward keeps h (in the compute dtype) and each row's logsumexp
    (float32); backward remakes each chunk's logits, turns them into (softmax - onehot) x grad and
    multiplies back into grad_h (compute dtype) and grad_W (accumulated in float32)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows: int, compute_dtype: torch.dtype):
        valid = targets != IGNORE_INDEX
        safe = torch.where(valid, targets, 0)
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.autocast(device_type=h.device.type, enabled=False):
            for s in range(0, h.shape[0], chunk_rows):
                z = (h[s : s + chunk_rows] @ w.t()).float()
                lse[s : s + chunk_rows] = torch.logsumexp(z, dim=-1)
                target_logit = z.gather(1, safe[s : s + chunk_rows, None]).squeeze(1)
                total += torch.where(valid[s : s + chunk_rows], lse[s : s + chunk_rows] - target_logit, 0.0).sum()
        ctx.save_for_backward(h, weight, safe, valid, lse)
        ctx.chunk_rows, ctx.compute_dtype, ctx.hidden_dtype = chunk_rows, compute_dtype, hidden.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        h, weight, safe, valid, lse = ctx.saved_tensors
        rows, w = ctx.chunk_rows, weight.to(ctx.compute_dtype)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        scale = torch.where(valid, grad_total.float(), 0.0)[:, None]
        with torch.autocast(device_type=h.device.type, enabled=False):
            for s in range(0, h.shape[0], rows):
                h_c = h[s : s + rows]
                p = torch.exp((h_c @ w.t()).float() - lse[s : s + rows, None])  # softmax, from the saved logsumexp
                p.scatter_add_(1, safe[s : s + rows, None], torch.full_like(scale[s : s + rows], -1.0))
                g = (p * scale[s : s + rows]).to(ctx.compute_dtype)
                torch.matmul(g, w, out=grad_h[s : s + rows])
                grad_w += (g.t() @ h_c).float()
        return grad_h.to(ctx.hidden_dtype), grad_w.to(weight.dtype), None, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                             compute_dtype: torch.dtype | None = None, chunk_rows: int | None = None) -> torch.Tensor:
    """float32 sum of cross-entropies of `hidden` [N, H] @ `weight` [V, H]^T against `targets` [N]
    (-100 ignored), without the [N, V] logits: `chunk_rows` rows at a time (default FUSED_CE_CHUNK_BYTES
    of float32 logits), the products in `compute_dtype` (default: the hidden states' dtype)."""
    if chunk_rows is None:
        chunk_rows = max(1, FUSED_CE_CHUNK_BYTES // (4 * weight.shape[0]))
    return _LinearCrossEntropySum.apply(hidden, weight, targets, chunk_rows, compute_dtype or hidden.dtype)


def causal_lm_loss_sum(model: Any, batch: dict[str, torch.Tensor], *, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropies, number of target tokens) for a packed batch.

    Position t is scored on labels[t + 1] when that label is not -100; the sum is float32 and
    differentiable, the count an int64 tensor on the same device. `fused`: the output projection and
    the loss together (`linear_cross_entropy_sum`), the [B, L, vocab] logits never made."""
    labels = batch["labels"]
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    # Shift the labels, not the logits: logits[:, :-1] could not be flattened without a copy.
    if fused:
        hidden, head, compute_dtype = final_hidden_states(model, batch)
        loss_sum = linear_cross_entropy_sum(hidden.reshape(-1, hidden.shape[-1]), head.weight, targets.reshape(-1), compute_dtype=compute_dtype)
    else:
        logits = forward_logits(model, batch)
        loss_sum = cross_entropy_sum(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss_sum, (targets != IGNORE_INDEX).sum()
