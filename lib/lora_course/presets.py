"""The presets: the course's profiles (one scale each) and its experiments (one way to fine-tune each).

    PROFILES      smoke, cpu, gpu, and the gpu profile smaller: gpu-mini (CI), gpu-device (a GPU machine's check)
    EXPERIMENTS   the post's four runs; EXTRA_EXPERIMENTS the course's own (the unquantised base, the baseline)

Everything a run depends on is data here or in `settings`; `config.RunConfig` joins one profile and one experiment.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import CourseError
from .settings import (
    ALL_LINEAR,
    ATTENTION_QV,
    DataSettings,
    Experiment,
    LoraSettings,
    PrecisionSettings,
    Profile,
    TrainSettings,
)

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

