"""The settings schema: what a run's data, precision, training, profile and LoRA may be, each value checked.

A run is one profile (which model, which data, how long to train, which precision) crossed with
one experiment (which quantisation, which LoRA); `presets` holds the course's own, `config.RunConfig`
joins one of each. Every field is checked against its declared type and range when a settings
object is built, so a typo is one sentence before any model loads.

Where a setting goes straight to a Hugging Face object it carries that object's
name: `LoraSettings` holds PEFT `LoraConfig` fields, `TrainSettings` holds TRL
`SFTConfig` fields (transformers 5 names; the post's 2023 names are in
`lora_course.post.TRAINER_NAMES`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from .catalogue import ModelSpec, get_model_spec
from .errors import CourseError

Quantization = Literal["none", "int8", "nf4"]
QUANTIZATIONS: tuple[str, ...] = ("none", "int8", "nf4")
LLM_INT8_THRESHOLD = 6.0  # LLM.int8: input columns with a value above this stay in 16-bit (Dettmers et al. 2022)
DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")

# The post's two target sets. "all-linear" is resolved on the loaded model by
# `lora.find_linear_names`, and (as in the post) includes lm_head.
ATTENTION_QV: tuple[str, ...] = ("q_proj", "v_proj")
ALL_LINEAR = "all-linear"

# The trainer's choices (transformers' OptimizerNames and SchedulerType): a test keeps them equal to
# the installed version's, so that a typo is refused here, before any model loads.
Optimizer = Literal[
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor", "adamw_anyprecision",
    "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit", "adamw_8bit",
    "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit",
    "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw",
    "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise",
    "stable_adamw",
]
Scheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy",
]


def _describe(t) -> str:
    """A field's declared type in words, for a message."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return "a comma-separated list of names"
    return {int: "a whole number", float: "a finite number", bool: "true or false", str: "a text",
            type(None): "None"}.get(t, str(t))


def _fits(value: Any, t) -> bool:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return isinstance(value, str) and value in args
    if origin is tuple:
        return isinstance(value, tuple) and len(value) > 0 and all(isinstance(v, str) and v for v in value)
    if t is type(None):
        return value is None
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if t is str:
        return isinstance(value, str) and bool(value.strip())
    return True


def _check_types(obj) -> None:
    """Every field of a settings dataclass holds a value of its declared type (a Literal: one of its choices)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):  # a numpy number
            value = int(value) if isinstance(value, numbers.Integral) else float(value)
            object.__setattr__(obj, f.name, value)
        if not _fits(value, hints[f.name]):
            raise CourseError(f"{f.name} must be {_describe(hints[f.name])}, got {value!r}: "
                              f"set it to e.g. {f.name}={_example(f)}.")


def _example(f: dataclasses.Field) -> str:
    d = f.default
    return ",".join(d) if isinstance(d, tuple) else str(d).lower() if isinstance(d, bool) else str(d)


def _check_range(obj, names: tuple[str, ...], rule: str, ok) -> None:
    """Each named field satisfies `ok` (None passes); else one sentence with the field's default as the example."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in names and value is not None and not ok(value):
            raise CourseError(f"{f.name} must be {rule}, got {value!r}: set it to e.g. {f.name}={_example(f)}.")


def parse_setting(cls, name: str, text: str) -> Any:
    """The text of a command-line NAME=VALUE as the value `cls`'s field `name` declares.

    A tuple field takes a comma-separated list or one name ("q_proj" or "q_proj,v_proj"); an optional
    field takes "none". Ranges and choices are checked when the settings are built.
    """
    t = typing.get_type_hints(cls)[name]
    options = typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else (t,)
    text = text.strip()
    if type(None) in options and text.lower() in ("none", "null"):
        return None
    for option in options:
        origin = typing.get_origin(option)
        if origin is Literal and text in typing.get_args(option):
            return text
        if origin is tuple and text != ALL_LINEAR:
            names = tuple(n.strip() for n in text.split(","))
            if all(names):
                return names
        if option is bool and text.lower() in ("true", "false", "1", "0", "yes", "no"):
            return text.lower() in ("true", "1", "yes")
        if option is int:
            try:
                return int(text)
            except ValueError:
                pass
        if option is float:
            try:
                value = float(text)
            except ValueError:
                continue
            if math.isfinite(value):
                return value
        if option is str and text:
            return text
    default = next(f for f in dataclasses.fields(cls) if f.name == name)
    raise CourseError(f"--set {name}={text} is not {_describe(t)}: write e.g. --set {name}={_example(default)}.")


@dataclass(frozen=True)
class DataSettings:
    """Where the rows come from and how they are sampled and split.

    `source` is "sample" (the dataset bundled with the course), a hub dataset id,
    or a local CSV / JSONL / parquet path. `test_size` below 1 is a share of the
    rows, from 1 up a row count. `train_rows` keeps only the first rows of the
    training split (a small slice for a long run); the test split is untouched.
    `eval_rows` gives the trainer's own per-epoch evaluation only the first rows
    of the test split (the held-out evaluation of a run always uses all of them).
    """

    source: str = "sample"
    n_rows: int | None = None  # None keeps every row; the post samples 5,000
    sample_seed: int = 42  # the post's `random_state=42`
    test_size: float = 0.05  # the post's 95/5 split
    split_seed: int = 42
    overlong: Literal["truncate", "drop"] = "truncate"  # rows longer than max_length
    train_rows: int | None = None
    eval_rows: int | None = None
    # Maps the roles of a data shape to the table's columns, e.g. {"instruction": "question", "response": "answer"};
    # None reads the shape off the column names (see `formats`).
    columns: dict[str, str] | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        _check_range(self, ("n_rows", "train_rows", "eval_rows"), "a positive row count (or None for all)",
                     lambda v: v >= 1)
        _check_range(self, ("test_size",), "a share between 0 and 1 or a whole row count from 1 up",
                     lambda v: 0 < v < 1 or (v >= 1 and float(v).is_integer()))


@dataclass(frozen=True)
class PrecisionSettings:
    """The one precision setting, resolved per device by `precision.resolve_precision`.

    compute_dtype     dtype of the matmuls of 4-bit layers, and of the float weights on a GPU
                      ("bf16" as in the post; a GPU without bf16 falls back to "fp16")
    adapter_dtype     dtype the LoRA weights train, save and reload in ("fp32" as in the post's stack)
    mixed_precision   the trainer's autocast: "fp16" is the post's `fp16=True`, "no" for none
    quant_storage     the tensor dtype 4-bit weights are packed into: "uint8" normally; a float
                      dtype ("fp32" with fp16 autocast, "bf16" with bf16) lets FSDP shard them

    On a CPU, bf16 is emulated and slow on machines without AVX512-BF16; the CPU
    profiles say "fp32" everywhere, and bf16 there is only ever an explicit choice.
    """

    compute_dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    adapter_dtype: Literal["fp32", "bf16"] = "fp32"
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    quant_storage: Literal["uint8", "fp32", "bf16"] = "uint8"

    def __post_init__(self) -> None:
        if self.quant_storage not in ("uint8", "fp32", "bf16"):
            raise CourseError(f"Unknown quant_storage {self.quant_storage!r}: use 'uint8', 'fp32' or 'bf16'.")
        for name in ("compute_dtype", "adapter_dtype"):
            if getattr(self, name) not in DTYPES:
                raise CourseError(f"Unknown {name} {getattr(self, name)!r}: use one of {', '.join(DTYPES)}.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise CourseError(f"Unknown mixed_precision {self.mixed_precision!r}: use 'no', 'fp16' or 'bf16'.")


@dataclass(frozen=True)
class TrainSettings:
    """Trainer settings, each named as the TRL `SFTConfig` field it becomes.

    Either `max_steps` (> 0) or `num_train_epochs` bounds training. A float
    `warmup_steps` below 1 is a share of all steps (the post's warmup_ratio).
    `completion_only_loss` trains on prompt/completion rows with the loss on the
    response only; otherwise on whole texts with the loss on every token, as the post does.
    """

    learning_rate: float = 2e-4
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_steps: int = -1
    num_train_epochs: float = 1.0
    max_length: int = 256  # tokens per example, prompt + response
    lr_scheduler_type: Scheduler = "constant"
    warmup_steps: float = 0.0
    max_grad_norm: float = 1.0
    optim: Optimizer = "adamw_torch"
    train_sampling_strategy: Literal["random", "sequential", "group_by_length"] = "random"
    activation_checkpointing: bool = False  # the post's gradient checkpointing
    packing: bool = False
    packing_strategy: Literal["bfd", "wrapped"] = "bfd"
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    completion_only_loss: bool = False
    logging_steps: float = 1
    eval_strategy: Literal["no", "epoch", "steps"] = "no"
    save_strategy: Literal["no", "epoch", "steps"] = "no"
    save_steps: float = 500
    per_device_eval_batch_size: int = 8

    def __post_init__(self) -> None:
        _check_types(self)
        _check_range(self, ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
                            "per_device_eval_batch_size", "pad_to_multiple_of"), "a positive whole number",
                     lambda v: v >= 1)
        _check_range(self, ("learning_rate", "num_train_epochs", "logging_steps", "save_steps"),
                     "a positive number", lambda v: v > 0)
        _check_range(self, ("warmup_steps", "max_grad_norm"), "zero or more", lambda v: v >= 0)
        if self.max_steps == 0 or self.max_steps < -1:
            raise CourseError(f"max_steps must be a positive step count, or -1 to train num_train_epochs "
                              f"({self.num_train_epochs}), got {self.max_steps}: set it to e.g. max_steps=6.")


@dataclass(frozen=True)
class Profile:
    """One scale of the course: a model, its data, a training budget and a precision."""

    name: str
    model: str
    device: Literal["cpu", "cuda"]
    data: DataSettings
    train: TrainSettings
    precision: PrecisionSettings
    max_new_tokens: int = 128
    bench_rows: int = 64  # training rows per trainer setting in `bench`, one pass each
    sweep_steps: int = 8  # optimizer steps per point of the sweep chapter
    # Runs trained at once by `pipeline.run_all`, each in its own process with cores / parallel_runs
    # threads. How a run is scheduled, not what it trains: not part of a run's identity.
    parallel_runs: int = 1
    description: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.parallel_runs, bool) or not isinstance(self.parallel_runs, int) or self.parallel_runs < 1:
            raise CourseError(f"parallel_runs must be a whole number from 1 up, got {self.parallel_runs!r}: "
                              "1 trains one run at a time.")
        if self.device == "cuda" and self.parallel_runs != 1:
            raise CourseError(f"Profile {self.name!r}: parallel_runs must be 1 on a GPU (each run takes the whole "
                              "device); set parallel_runs=1.")

    @property
    def model_spec(self) -> ModelSpec:
        return get_model_spec(self.model)


@dataclass(frozen=True)
class LoraSettings:
    """PEFT `LoraConfig` fields, by LoraConfig's own names. The post fixes all but `r` and `target_modules`."""

    r: int = 8  # the post's lora_r
    target_modules: tuple[str, ...] | str = ATTENTION_QV
    lora_alpha: int = 8
    lora_dropout: float = 0.05
    bias: str = "none"
    use_rslora: bool = False
    use_dora: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise CourseError(f"The LoRA rank r must be a positive integer, got {self.r!r}: use r >= 1 (the post uses 8 and 16).")
        if isinstance(self.target_modules, list):  # as PEFT's LoraConfig takes them
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        _check_types(self)
        if isinstance(self.target_modules, str) and self.target_modules != ALL_LINEAR:
            raise CourseError(f"target_modules must be {ALL_LINEAR!r} or a list of module names, got "
                              f"{self.target_modules!r}: write e.g. target_modules=q_proj,v_proj.")
        if self.bias not in ("none", "all", "lora_only"):
            raise CourseError(f"bias must be 'none', 'all' or 'lora_only', got {self.bias!r}: the post uses 'none'.")
        if self.lora_alpha <= 0:
            raise CourseError(f"lora_alpha must be positive, got {self.lora_alpha}: the post uses 8.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise CourseError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}: the post uses 0.05.")

    @property
    def scaling(self) -> float:
        """The factor on B A: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
        return self.lora_alpha / (self.r ** 0.5 if self.use_rslora else self.r)


@dataclass(frozen=True)
class Experiment:
    """One way to fine-tune: how the frozen base is stored, and the LoRA on top (None: no adapter)."""

    name: str
    title: str
    quantization: Quantization
    lora: LoraSettings | None

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise CourseError(
                f"Unknown quantization {self.quantization!r}: use one of {', '.join(QUANTIZATIONS)}."
            )

    def with_lora(self, name: str | None = None, **changes: Any) -> "Experiment":
        """A variant with some LoRA fields changed (a sweep point, say)."""
        lora = dataclasses.replace(self.lora or LoraSettings(), **changes)
        return dataclasses.replace(self, name=name or self.name, lora=lora)

