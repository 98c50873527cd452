"""The config tree shared by `cpt-prep` and `cpt-train`: one JSON file with the original tool's three
sections, `training`, `model` and `data`, and its key names and defaults.

- `data` holds every preparation setting; `cpt-prep build` resolves it and records it in the
  manifest, and `cpt-train` compares the keys a user set explicitly against that record.
- Unknown sections or keys are errors (a misspelt key must never be silently ignored).
- CLI flags override keys: `--learning_rate 1e-4` or `--training.learning_rate 1e-4`; the
  original `--batch_size` is an alias of `training.per_device_train_batch_size`.
- `CptConfig.explicit` remembers which `section.key`s came from a flag, or from a file with a value
  other than the default (a file restating a default, e.g. the original tool's
  `"max_train_samples": null`, sets nothing a manifest could conflict with).
- Unknown keys name the nearest known key (`difflib`, as argparse and git suggest).
- The written config (`write_config`, `output_dir/cpt_config.json`) holds what reproduces the run:
  the run-control keys (`RUN_CONTROL_KEYS`: resume, overwrite) controlled one invocation and are
  left out, so reusing a resumed run's copy starts a run instead of doing 0 steps.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from schemas.errors import ConfigError

DEFAULT_MODEL = "Qwen/Qwen2.5-7B"
DEFAULT_CONFIG_NAME = "cpt_config.json"

# Flags of the original single-script tool whose names differ from the config key they set.
KEY_ALIASES = {"batch_size": "training.per_device_train_batch_size"}

# Learning-rate schedules (trainer/optim.py maps each to a transformers scheduler).
SCHEDULES = ("cosine", "linear", "warmup_stable_decay", "constant_with_warmup", "constant")
DECAY_TYPES = ("linear", "cosine", "1-sqrt")
# Attention kernels (trainer/modeling.py): each masks packed documents from each other.
ATTENTIONS = ("auto", "varlen", "flex_attention", "sdpa", "eager", "flash_attention_2")
# A source name becomes part of metric keys (`tokens/<name>`, `eval_loss/<name>`) and file-safe labels.
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _require(ok: bool, section: str, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{section}.{key}={value!r} is invalid: expected {expected}")


@dataclass
class TrainingConfig:
    """Optimisation, schedule, logging and checkpointing (the original `training` section)."""

    learning_rate: float = 5e-5
    """Peak learning rate reached after warmup."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay; never applied to biases and norm weights."""
    manifests: list[str] = field(default_factory=list)
    """Manifests to train on, in order (`--manifest` sets it; repeat the flag for a mixture); the first is the main source."""
    mixture_weights: list[float] = field(default_factory=list)
    """Share of training tokens per manifest, summing to 1 (e.g. 0.8,0.2); optional for one manifest; 0 = evaluated only."""
    mixture_names: list[str] = field(default_factory=list)
    """Source names for logs, metrics and records (default: each manifest's folder name); unique."""
    num_train_epochs: float = 3
    """Passes over the first source's train windows (fractions allowed); used when max_steps and max_tokens are unset."""
    max_tokens: int = 0
    """Training-token budget (all processes); when > 0 it sets the run's length unless max_steps is set."""
    max_steps: int = -1
    """Optimizer steps to run; > 0 overrides max_tokens and num_train_epochs."""
    max_repetitions: float = 4.0
    """Most passes over one source's train windows (each pass a fresh seeded order); a run needing more is refused before step 0."""
    per_device_train_batch_size: int = 4
    """Packed windows of max_length tokens per device per micro-batch."""
    per_device_eval_batch_size: int = 4
    """Packed windows per device per eval batch."""
    gradient_accumulation_steps: int = 8
    """Micro-batches per optimizer step."""
    lr_scheduler_type: str = "cosine"
    """cosine, linear, warmup_stable_decay, constant_with_warmup or constant (transformers' schedulers)."""
    warmup_ratio: float = 0.05
    """Fraction of optimizer steps spent warming up linearly from 0."""
    warmup_steps: Optional[int] = None
    """Warmup length in optimizer steps; overrides warmup_ratio when set (0 = no warmup)."""
    min_lr_ratio: float = 0.0
    """Floor of the decaying schedules (cosine, linear, warmup_stable_decay), as a fraction of learning_rate."""
    decay_ratio: float = 0.2
    """warmup_stable_decay: fraction of the optimizer steps spent in the final decay."""
    decay_type: str = "1-sqrt"
    """warmup_stable_decay: shape of the decay, linear, cosine or 1-sqrt."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (L2 norm); 0 disables clipping."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2 (0.95 is the usual LLM pre-training value; HF's default is 0.999)."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    seed: int = 42
    """Seed for model init noise, data order and dropout."""
    output_dir: str = "./cpt_output"
    """Where checkpoints, best_model/, final_model/, logs/ and cpt_config.json go."""
    logging_steps: int = 10
    """Optimizer steps between metric log lines."""
    eval_steps: int = 500
    """Optimizer steps between evaluations (also at step 0 and each epoch end); 0 disables."""
    max_eval_batches: int = 0
    """Cap on eval batches per source per evaluation; 0 evaluates each whole eval split."""
    best_model_metric: Optional[str] = None
    """Metric best_model/ follows (lower is better): eval_loss (the mixture) or eval_loss/<name>; default the first source's."""
    save_steps: int = 500
    """Optimizer steps between step checkpoints; 0 disables step checkpoints."""
    save_total_limit: int = 3
    """Step checkpoints kept (oldest deleted first); 0 keeps all. Epoch checkpoints are kept."""
    bf16: bool = True
    """bf16 mixed precision where the hardware supports it (fp32 on CPU, logged once)."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward to save memory."""
    checkpoint_every: int = 1
    """With gradient_checkpointing: checkpoint 1 decoder layer in N (1 = all; 2 = every other layer, more memory, less recompute)."""
    torch_compile: bool = False
    """Compile each decoder layer with torch.compile (CUDA only; the first steps pay the compile time)."""
    fused_linear_cross_entropy: bool = True
    """Compute the output projection and the loss together in row chunks, never holding the [tokens, vocab] logits."""
    fused_adamw: bool = True
    """AdamW's fused CUDA kernel (one launch for all parameters); on CPU the default implementation."""
    peak_tflops: Optional[float] = None
    """Peak TFLOP/s per device for MFU; default: the dense bf16 peak of a known GPU (trainer/flops.py), none on CPU."""
    spike_guard: bool = True
    """Skip an optimizer step whose loss or grad norm exceeds its rolling mean by spike_sigma standard deviations."""
    spike_window: int = 128
    """Accepted steps in the spike guard's rolling mean and standard deviation."""
    spike_sigma: float = 6.0
    """Standard deviations above the rolling mean that make a loss or grad norm a spike."""
    spike_warmup_steps: int = 64
    """Accepted steps the spike guard observes before it acts (at most spike_window)."""
    max_consecutive_skips: int = 5
    """Skipped optimizer steps in a row (spikes or non-finite values) that stop the run."""
    verify_checksums: bool = True
    """sha256 every shard before step 0; turn off only for data sets too large to hash each run."""
    resume_from_checkpoint: Optional[str] = None
    """A checkpoint folder, or `latest` for the newest one in output_dir."""
    overwrite_output_dir: bool = False
    """Start a new run in an output_dir that holds a previous run (its checkpoints/models are deleted)."""
    report_to: str = "tensorboard"
    """Accelerate tracker (tensorboard, wandb, ...) or `none`; JSONL logs are always written."""

    def __post_init__(self) -> None:
        s = "training"
        _require(self.learning_rate > 0, s, "learning_rate", self.learning_rate, "a number > 0")
        _require(self.weight_decay >= 0, s, "weight_decay", self.weight_decay, "a number >= 0")
        _require(self.num_train_epochs > 0, s, "num_train_epochs", self.num_train_epochs, "a number > 0")
        _require(self.max_steps == -1 or self.max_steps > 0, s, "max_steps", self.max_steps, "-1 or an integer > 0")
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "logging_steps"):
            _require(getattr(self, key) >= 1, s, key, getattr(self, key), "an integer >= 1")
        for key in ("eval_steps", "save_steps", "save_total_limit", "max_eval_batches"):
            _require(getattr(self, key) >= 0, s, key, getattr(self, key), "an integer >= 0")
        _require(0 <= self.warmup_ratio < 1, s, "warmup_ratio", self.warmup_ratio, "a fraction in [0, 1)")
        _require(self.max_grad_norm >= 0, s, "max_grad_norm", self.max_grad_norm, "a number >= 0")
        _require(0 <= self.adam_beta1 < 1, s, "adam_beta1", self.adam_beta1, "a number in [0, 1)")
        _require(0 <= self.adam_beta2 < 1, s, "adam_beta2", self.adam_beta2, "a number in [0, 1)")
        _require(self.max_tokens >= 0, s, "max_tokens", self.max_tokens, "an integer >= 0 (0 = no token budget)")
        _require(self.max_repetitions >= 1, s, "max_repetitions", self.max_repetitions, "a number >= 1")
        _require(self.lr_scheduler_type in SCHEDULES, s, "lr_scheduler_type", self.lr_scheduler_type, "one of " + ", ".join(SCHEDULES))
        _require(self.warmup_steps is None or self.warmup_steps >= 0, s, "warmup_steps", self.warmup_steps, "null or an integer >= 0")
        _require(0 <= self.min_lr_ratio < 1, s, "min_lr_ratio", self.min_lr_ratio, "a fraction in [0, 1)")
        _require(0 < self.decay_ratio <= 1, s, "decay_ratio", self.decay_ratio, "a fraction in (0, 1]")
        _require(self.decay_type in DECAY_TYPES, s, "decay_type", self.decay_type, "one of " + ", ".join(DECAY_TYPES))
        metric = self.best_model_metric
        _require(metric is None or metric == "eval_loss" or (metric.startswith("eval_loss/") and len(metric) > 10), s,
                 "best_model_metric", metric, "null, eval_loss or eval_loss/<source name>")
        _require(self.spike_window >= 2, s, "spike_window", self.spike_window, "an integer >= 2")
        _require(self.spike_sigma > 0, s, "spike_sigma", self.spike_sigma, "a number > 0")
        _require(2 <= self.spike_warmup_steps <= self.spike_window, s, "spike_warmup_steps", self.spike_warmup_steps,
                 f"an integer in [2, spike_window={self.spike_window}]")
        _require(self.checkpoint_every >= 1, s, "checkpoint_every", self.checkpoint_every, "an integer >= 1")
        _require(self.peak_tflops is None or self.peak_tflops > 0, s, "peak_tflops", self.peak_tflops, "null or a number > 0")
        _require(self.max_consecutive_skips >= 1, s, "max_consecutive_skips", self.max_consecutive_skips, "an integer >= 1")
        self._check_mixture()

    def _check_mixture(self) -> None:
        s, n = "training", len(self.manifests)
        weights, names = self.mixture_weights, self.mixture_names
        for w in weights:
            # The schedule works in millionths (trainer/mixture.py): a smaller non-zero share cannot be honoured.
            _require(w == 0 or w >= 1e-6, s, "mixture_weights", weights, "shares >= 0.000001 (or 0 for an eval-only source)")
        if weights:
            _require(weights[0] > 0, s, "mixture_weights", weights, "a first weight > 0 (the first source is the one trained on; list an eval-only source later)")
            _require(abs(sum(weights) - 1) <= 1e-6, s, "mixture_weights", weights, f"shares of the training tokens that sum to 1 (they sum to {sum(weights):.6g})")
        if n and weights:
            _require(len(weights) == n, s, "mixture_weights", weights, f"one weight per manifest ({n} manifest(s))")
        if n > 1 and not weights:
            example = "0.8,0.2" if n == 2 else ",".join(["0.5"] + [f"{0.5 / (n - 1):.4g}"] * (n - 1))
            raise ConfigError(f"training.mixture_weights is required with {n} manifests: the share of training tokens of each, in order "
                              f"(e.g. --mixture_weights {example})")
        if names:
            if n:
                _require(len(names) == n, s, "mixture_names", names, f"one name per manifest ({n} manifest(s))")
            for name in names:
                _require(bool(SOURCE_NAME.fullmatch(name)), s, "mixture_names", names, "names of letters, digits, '_', '-' and '.' (they become metric keys)")
            _require(len(set(names)) == len(names), s, "mixture_names", names, "unique names")


@dataclass
class ModelConfig:
    """The base model to continue training (the original `model` section)."""

    model_name_or_path: str = DEFAULT_MODEL
    """Hub name or local folder of a causal LM (AutoModelForCausalLM)."""
    tokenizer_name_or_path: Optional[str] = None
    """Tokenizer to check the data against; defaults to model_name_or_path."""
    torch_dtype: str = "bfloat16"
    """Dtype the weights are loaded in: bfloat16, float16, float32 or auto."""
    device_map: str = "auto"
    """Kept for compatibility: Accelerate places the model; `auto` is the only supported value."""
    max_length: int = 2048
    """Tokens per packed training window."""
    use_flash_attention: bool = True
    """Let attention=auto pick flash_attention_2 when flash-attn is installed and on CUDA."""
    attention: str = "auto"
    """Attention kernel with per-document masking: auto (the fastest exact one here), varlen, flex_attention, sdpa, eager or flash_attention_2."""
    trust_remote_code: bool = False
    """Allow model code from the model folder or hub repo (only on request)."""

    def __post_init__(self) -> None:
        _require(self.max_length >= 2, "model", "max_length", self.max_length, "an integer >= 2")
        _require(self.attention in ATTENTIONS, "model", "attention", self.attention, "one of " + ", ".join(ATTENTIONS))
        dtypes = ("bfloat16", "float16", "float32", "auto")
        _require(self.torch_dtype in dtypes, "model", "torch_dtype", self.torch_dtype, "one of " + ", ".join(dtypes))


TOKENIZER_BACKENDS = ("auto", "hf", "fast")


@dataclass
class DataConfig:
    """Data preparation settings (the original `data` section plus the pipeline's knobs).

    `cpt-prep build` applies them and records them in the manifest; `cpt-train` checks them."""

    max_train_samples: Optional[int] = None
    """Keep at most this many training documents (the first ones kept, in input order)."""
    max_eval_samples: Optional[int] = None
    """Keep at most this many eval documents."""
    mlm_probability: Optional[float] = None
    """Original key; masking has no meaning for a causal LM, so a value set here is reported and ignored."""
    min_length: int = 10
    """Minimum document length in characters (after stripping), so Chinese is measured fairly."""
    filter_duplicates: bool = True
    """Drop exact duplicates and MinHash near duplicates, keeping the first occurrence."""
    decontaminate: bool = True
    """Drop training documents that duplicate or near-duplicate an eval document."""
    text_field: str = "text"
    """Field (.jsonl) or column (.parquet) holding the document text."""
    eval_fraction: float = 0.0
    """Fraction of documents held out for eval when no eval input is given (hash-assigned, stable)."""
    split_seed: int = 0
    """Seed of the hash that assigns documents to eval with eval_fraction."""
    dedup_word_ngram: int = 5
    """Words per shingle for space-separated text (FineWeb/datatrove: 5)."""
    dedup_char_ngram: int = 5
    """Characters per shingle for runs of CJK text (which has no spaces between words)."""
    dedup_num_bands: int = 14
    """LSH bands (FineWeb: 14 x 8 = 112 hashes, threshold ~0.72)."""
    dedup_rows_per_band: int = 8
    """Hashes per LSH band."""
    dedup_seed: int = 1
    """Seed of the MinHash permutations (a*x+b) mod (2^61-1)."""
    separator_token: Optional[str] = None
    """Token appended to every document; default `<|endoftext|>` when the vocabulary has it, else eos."""
    shard_target_bytes: int = 128 * 2**20
    """Start a new shard once the current one reaches this many bytes of tokens."""
    max_binary_fraction: float = 0.3
    """Refuse a .txt/.jsonl input when more than this share of its first 64 KiB is not UTF-8 text (NUL, control bytes, invalid UTF-8); 1 allows any."""
    tokenizer_backend: str = "auto"
    """Encoder: `hf` (HF tokenizers), `fast` (tiktoken, only where provably exact, else an error) or `auto` (fast when proven, else hf); same ids either way."""

    def __post_init__(self) -> None:
        s = "data"
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            _require(value is None or value >= 1, s, key, value, "null or an integer >= 1")
        _require(self.mlm_probability is None or 0 <= self.mlm_probability <= 1, s, "mlm_probability", self.mlm_probability, "null or a fraction")
        _require(self.min_length >= 0, s, "min_length", self.min_length, "an integer >= 0")
        _require(0 <= self.eval_fraction < 1, s, "eval_fraction", self.eval_fraction, "a fraction in [0, 1)")
        for key in ("dedup_word_ngram", "dedup_char_ngram", "dedup_num_bands", "dedup_rows_per_band"):
            _require(getattr(self, key) >= 1, s, key, getattr(self, key), "an integer >= 1")
        _require(self.shard_target_bytes >= 1024, s, "shard_target_bytes", self.shard_target_bytes, "an integer >= 1024")
        _require(0 <= self.max_binary_fraction <= 1, s, "max_binary_fraction", self.max_binary_fraction, "a fraction in [0, 1]")
        _require(self.tokenizer_backend in TOKENIZER_BACKENDS, s, "tokenizer_backend", self.tokenizer_backend, "one of " + ", ".join(TOKENIZER_BACKENDS))


# Keys that control one invocation of a run (where to resume, whether to wipe output_dir), not the
# run itself: never written into output_dir/cpt_config.json.
RUN_CONTROL_KEYS = ("training.resume_from_checkpoint", "training.overwrite_output_dir")

# Keys whose effect is fixed when the shards are built; the trainer reads them from the manifest.
# tokenizer_backend is not one: it changes how fast the ids are made, never the ids.
PREP_KEYS = tuple(f.name for f in dataclasses.fields(DataConfig) if f.name not in ("mlm_probability", "tokenizer_backend"))

SECTIONS: dict[str, type] = {"training": TrainingConfig, "model": ModelConfig, "data": DataConfig}


@dataclass
class CptConfig:
    """The whole config tree: `training`, `model`, `data`."""

    training: TrainingConfig = field(default_factory=TrainingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    explicit: set[str] = field(default_factory=set, compare=False)
    """`section.key`s set by a config file or a flag rather than left at their default."""

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "config") -> "CptConfig":
        """Build from a `{section: {key: value}}` mapping; unknown sections or keys are errors."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source} must be a JSON object with sections {', '.join(SECTIONS)}; got {type(raw).__name__}")
        values: dict[str, dict[str, Any]] = {}
        explicit: set[str] = set()
        defaults = {name: SECTIONS[name]() for name in SECTIONS}
        for section, content in raw.items():
            if section not in SECTIONS:
                raise ConfigError(f"unknown config section {section!r} in {source}{_did_you_mean(section, list(SECTIONS))}; "
                                  f"known sections: {', '.join(SECTIONS)}")
            if not isinstance(content, dict):
                raise ConfigError(f"section {section!r} in {source} must be a JSON object, got {type(content).__name__}")
            hints = typing.get_type_hints(SECTIONS[section])
            for key, value in content.items():
                if key not in hints or key == "explicit":
                    raise ConfigError(f"unknown config key {section}.{key} in {source}{_did_you_mean(key, _field_names(section), section)}; "
                                      f"known keys: {', '.join(_field_names(section))}")
                values.setdefault(section, {})[key] = coerced = _coerce(value, hints[key], f"{section}.{key}")
                if coerced != getattr(defaults[section], key):
                    explicit.add(f"{section}.{key}")
        try:
            sections = {name: SECTIONS[name](**values.get(name, {})) for name in SECTIONS}
        except TypeError as exc:  # pragma: no cover - keys were checked above
            raise ConfigError(f"{source}: {exc}") from None
        return cls(**sections, explicit=explicit)

    def with_overrides(self, overrides: dict[str, Any], *, source: str = "command line") -> "CptConfig":
        """Return a copy with `{key: value}` applied; a key is `name`, `section.name` or an alias.

        String values (from flags) are parsed to the field's type."""
        merged = self.to_dict()
        explicit = set(self.explicit)
        for key, value in overrides.items():
            full_key = resolve_key(key)
            section, name = full_key.split(".", 1)
            merged[section][name] = value
            explicit.add(full_key)
        # Re-run the coercion and validation on everything.
        result = CptConfig.from_dict(merged, source=source)
        result.explicit = explicit
        return result


def _field_names(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[section])]


def _did_you_mean(name: str, known: Sequence[str], section: str = "") -> str:
    """` (did you mean X?)` for the closest of `known` to `name`, or "" when none is close."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {section + '.' if section else ''}{close[0]}?)"


def resolve_key(key: str) -> str:
    """Map a flag name (`learning_rate`, `training.learning_rate`, `batch_size`) to `section.key`."""
    key = key.lstrip("-").replace("-", "_")
    if key in KEY_ALIASES:
        return KEY_ALIASES[key]
    if "." in key:
        section, name = key.split(".", 1)
        if section in SECTIONS and name in _field_names(section):
            return key
        hint = _did_you_mean(key, all_keys())
        raise ConfigError(f"unknown config key {key!r}{hint}; use section.key with a section of {', '.join(SECTIONS)} and a key of that section")
    matches = [f"{section}.{key}" for section in SECTIONS if key in _field_names(section)]
    if not matches:
        names = {name: full for full in all_keys() for name in [full.split(".", 1)[1]]}
        close = difflib.get_close_matches(key, [*names, *KEY_ALIASES], n=1, cutoff=0.6)
        hint = f" (did you mean --{close[0]}?)" if close else ""
        raise ConfigError(f"unknown config key {key!r}{hint}; see README 'Configuration' for the keys of training, model and data")
    return matches[0]


def all_keys() -> list[str]:
    """Every `section.key`, for help texts and flag parsers."""
    return [f"{section}.{name}" for section in SECTIONS for name in _field_names(section)]


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a JSON or flag value to the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        # A JSON list, or a comma-separated flag value (`--mixture_weights 0.8,0.2`).
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} is invalid: expected a list (JSON list or comma-separated values)")
        return [_coerce(item, item_type, key) for item in value]
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if annotation is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                return int(float(value)) if float(value).is_integer() else int(value)
            if isinstance(value, int):
                return value
            raise ValueError
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"{key}={value!r} is invalid: expected {name}") from None
    return value


def read_json_file(path: str | Path, *, what: str, flag: str) -> Any:
    """Parse a user-supplied JSON file; any failure is a one-line ConfigError naming `flag`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}; pass an existing JSON file to {flag}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path} ({exc.__class__.__name__}); check the path and its permissions") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix the syntax") from None


def load_config(path: Optional[str | Path]) -> CptConfig:
    """Read a JSON config file (defaults when `path` is None)."""
    if path is None:
        return CptConfig()
    return CptConfig.from_dict(read_json_file(path, what="config file", flag="--config"), source=str(path))


def parse_flag_overrides(
    tokens: Sequence[str], *, passthrough: Sequence[str] = (), usage: str = "pass settings as --key value"
) -> tuple[dict[str, str], dict[str, str]]:
    """Parse `--key value`, `--key=value` and bare boolean `--key` (= true) into
    ({section.key: value}, {passthrough flag: value}). Keys resolve with `resolve_key` (unknown keys
    are errors); flags named in `passthrough` are returned as given, not as config keys."""
    overrides: dict[str, str] = {}
    passed: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument {token!r}; {usage}")
        name, eq, value = token[2:].partition("=")
        i += 1
        has_value = bool(eq)
        if not has_value and i < len(tokens) and not tokens[i].startswith("--"):
            value, has_value = tokens[i], True
            i += 1
        bare = name.replace("-", "_")
        if bare in passthrough:
            if not has_value:
                raise ConfigError(f"--{bare} needs a value")
            passed[bare] = value
            continue
        full = resolve_key(name)
        if not has_value:
            section, key = full.split(".", 1)
            if typing.get_type_hints(SECTIONS[section])[key] is not bool:
                raise ConfigError(f"--{name} needs a value (e.g. --{name} VALUE)")
            value = "true"
        overrides[full] = value
    return overrides, passed


def write_config(config: CptConfig, path: str | Path) -> None:
    """Write the resolved config as JSON (atomically), e.g. to `output_dir/cpt_config.json`, without
    the run-control keys (`RUN_CONTROL_KEYS`): the file reproduces the run, not one invocation."""
    path = Path(path)
    tree = config.to_dict()
    for full_key in RUN_CONTROL_KEYS:
        section, name = full_key.split(".", 1)
        tree[section].pop(name, None)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(tree, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
