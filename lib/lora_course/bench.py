"""Benchmarks: what fine-tuning and serving cost, measured side by side.

    python -m lora_course bench --profile cpu --experiment qlora-r8-qv

For one profile and experiment, in one process:
  - training with two trainer settings on the same model, rows and token budget:
    `blog` (every example padded to max_length, batch 4 x accumulation 4, bf16
    compute, as in the post's code) and `recommended` (examples packed into full
    rows, no pad tokens, no accumulation, the device's compute dtype); per-step
    times give median and spread;
  - held-out response loss after each, so speed is not bought with quality;
  - generation latency of the base, the unmerged adapter and the merged model.
Ratios are reported next to the absolute numbers. No result here is asserted in
tests: speed is measured, not tested.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import Profile, RunConfig
from .errors import CourseError


@dataclass(frozen=True)
class TrainerSetting:
    """One way to run the same training: overrides of TrainSettings, and the 4-bit compute dtype."""

    train: dict[str, Any]
    compute_dtype: str | None = None  # None: the profile's, chosen for its device

    def to_dict(self) -> dict[str, Any]:
        return {**self.train, "compute_dtype": self.compute_dtype or "profile"}


TRAINER_SETTINGS: dict[str, TrainerSetting] = {
    # The post's code: every example padded to max_length (256), 4 rows x 4
    # accumulation steps, 4-bit layers computing in bf16.
    "blog": TrainerSetting(
        dict(micro_batch_size=4, grad_accum_steps=4, pad_to_max_length=True, packing=False, padding_free=False),
        compute_dtype="bf16",
    ),
    # Packed: examples laid end to end and cut into full rows of max_length tokens
    # (TRL's "wrapped" packing), 4 rows a step with no accumulation. No position
    # holds padding, and every row is a plain causal sequence, which runs on the
    # fast attention path. The price: attention can cross from one example into
    # the next one in the same row, and an example may be split across rows.
    # (TRL's "bfd" packing keeps examples apart, but without FlashAttention it
    # attends over the whole flattened batch and measured slower than padding here.)
    # 4-bit layers compute in the profile's dtype: bf16 on a GPU, fp32 on a CPU
    # without bf16 units, where bf16 is emulated.
    "recommended": TrainerSetting(
        dict(micro_batch_size=4, grad_accum_steps=1, pad_to_max_length=False, packing=True,
             packing_strategy="wrapped", padding_free=False),
    ),
}


class StepTimer:
    """Trainer callback: wall time of every optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.seconds.append(time.perf_counter() - timer._start)

        self.seconds: list[float] = []
        self._start = 0.0
        self.callback = _Callback()


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


@dataclass
class TrainingBench:
    settings: str
    train_settings: dict[str, Any]
    steps: int
    rows: int
    tokens: int  # non-padding tokens trained on
    wall_time_s: float
    step_seconds: dict[str, float]  # median/min/max over steps after the first
    peak_memory_mib: float
    memory_kind: str
    final_train_loss: float
    heldout_loss: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.wall_time_s

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.wall_time_s

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tokens_per_second": self.tokens_per_second,
                "steps_per_second": self.steps_per_second}


@dataclass
class BenchResult:
    profile: str
    experiment: str
    model: str
    random_weights: bool
    device: str
    training: dict[str, TrainingBench] = field(default_factory=dict)
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Non-padding tokens per second, recommended over blog."""
        return self.training["recommended"].tokens_per_second / self.training["blog"].tokens_per_second

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "training"}
        d["training"] = {k: v.to_dict() for k, v in self.training.items()}
        if {"blog", "recommended"} <= set(self.training):
            d["speedup_tokens_per_second"] = self.speedup
            d["heldout_loss_difference"] = self.training["recommended"].heldout_loss - self.training["blog"].heldout_loss
        return d

    def table(self) -> str:
        lines = [f"{'settings':12} {'tokens/s':>9} {'steps/s':>8} {'s/step (median [min, max])':>28} {'peak MiB':>9} {'held-out loss':>13}"]
        for name, t in self.training.items():
            s = t.step_seconds
            lines.append(f"{name:12} {t.tokens_per_second:9.0f} {t.steps_per_second:8.3f} "
                         f"{s['median']:10.2f} [{s['min']:.2f}, {s['max']:.2f}]{'':6} {t.peak_memory_mib:9.0f} {t.heldout_loss:13.3f}")
        if {"blog", "recommended"} <= set(self.training):
            lines.append(f"speed-up in non-padding tokens/s, recommended / blog: {self.speedup:.2f}x")
        for name, lat in self.latency.items():
            lines.append(f"generate {name:28} median {lat['median_s']:.2f} s [{lat['min_s']:.2f}, {lat['max_s']:.2f}]  "
                         f"{lat['tokens_per_second']:.1f} tokens/s")
        return "\n".join(lines)


def bench(profile: Profile, experiment: str, *, rows: int | None = None, random_weights: bool = False,
          data_source: str | None = None, latency_tokens: int = 32, latency_repeats: int = 3,
          settings: tuple[str, ...] = ("blog", "recommended"), latency: bool = True) -> BenchResult:
    """Measure training (per trainer setting) and generation latency for one experiment.

    Every setting trains one pass over the same `rows` training rows (equal
    token budget) from the same fresh model and seed, then is scored on the
    held-out split. Latency compares, all in float on the same device, the base,
    the base with the trained adapter unmerged, and the merged model.
    """
    import tempfile

    from .data import BLOG_PROMPTS, RESPONSE_SUFFIX, prepare_data, product_prompt
    from .evaluate import response_loss
    from .generate import measure_latency
    from .lora import attach_lora
    from .merge import load_adapter_model, merge_adapter
    from .model import check_device, check_quantization, load_model, load_tokenizer, random_weights_spec
    from .train import train_model

    unknown = [s for s in settings if s not in TRAINER_SETTINGS]
    if unknown:
        raise CourseError(f"Unknown trainer settings {', '.join(unknown)}: choose from {', '.join(TRAINER_SETTINGS)}.")
    config = RunConfig.create(experiment, profile, data_source=data_source)
    profile, exp = config.profile, config.experiment
    check_device(profile.device)
    check_quantization(exp.quantization)
    spec = random_weights_spec(profile.model_spec) if random_weights else profile.model_spec
    tokenizer = load_tokenizer(spec if random_weights else profile)
    # Rows longer than max_length are dropped: padding truncates them and packing
    # would not, so keeping them would give the two settings different tokens.
    data = prepare_data(dataclasses.replace(profile.data, overlong="drop"), tokenizer, profile.train.max_length)
    rows = rows or profile.bench_rows
    if rows > len(data.train):
        raise CourseError(f"Asked for {rows} training rows but only {len(data.train)} exist: lower --rows.")
    train_rows, test = data.train.select(range(rows)), data.test
    device, compute = profile.device, profile.compute_dtype
    result = BenchResult(profile.name, exp.name, spec.name, random_weights, device)

    with tempfile.TemporaryDirectory(prefix="lora_course_bench_") as scratch:
        for name in settings:
            # One pass over the same rows for every setting: an equal token budget.
            setting = TRAINER_SETTINGS[name]
            t_settings = dataclasses.replace(profile.train, **setting.train, max_steps=-1, num_epochs=1.0,
                                             logging_steps=1, eval_each_epoch=False, group_by_length=name == "blog")
            torch.manual_seed(config.seed)
            model = load_model(spec, exp.quantization, device, setting.compute_dtype or compute)
            model = attach_lora(model, exp, t_settings.gradient_checkpointing)
            timer = StepTimer()
            tr = train_model(model, tokenizer, train_rows, t_settings, seed=config.seed, device=device,
                             callbacks=[timer.callback])
            loss = response_loss(model, tokenizer, list(test["prompt"]), [r + RESPONSE_SUFFIX for r in test["description"]],
                                 max_length=profile.train.max_length)
            result.training[name] = TrainingBench(
                settings=name, train_settings=setting.to_dict(), steps=tr.steps, rows=rows,
                tokens=tr.tokens_trained, wall_time_s=tr.wall_time_s,
                step_seconds=spread(timer.seconds[1:] or timer.seconds),  # the first step pays for warm-up
                peak_memory_mib=tr.peak_memory_mib, memory_kind=tr.memory_kind,
                final_train_loss=tr.final_loss, heldout_loss=loss["loss"],
            )
            model.save_pretrained(Path(scratch) / "adapter", save_embedding_layers=False)
            del model

        prompts = [product_prompt(p, c) for p, c in BLOG_PROMPTS[:2]]
        timed = {
            "base": lambda: load_model(spec, "none", device, compute),
            "base + adapter (unmerged)": lambda: load_adapter_model(spec, Path(scratch) / "adapter", "none", device, compute),
            "merged": lambda: merge_adapter(load_adapter_model(spec, Path(scratch) / "adapter", "none", device, compute)),
        }
        for name, make in (timed.items() if latency else ()):
            model = make()
            result.latency[name] = measure_latency(model, tokenizer, prompts, latency_tokens, latency_repeats).to_dict()
            del model
    return result


def environment() -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def save(result: BenchResult, out_dir: str | Path) -> Path:
    """<out_dir>/<experiment>[-random].json, with the environment it ran in."""
    from .results import write_json

    out = Path(out_dir) / f"{result.experiment}{'-random' if result.random_weights else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {**result.to_dict(), "environment": environment()})
    return out


# --------------------------------------------------------------------------- arithmetic
# Dense 16-bit peak of common training GPUs, FLOP/s (vendor figures, no sparsity).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "T4": 65e12, "V100": 125e12}


def compute_parameters(model_name: str) -> int:
    """Parameters that do matrix work per token: all but the embedding lookup table.

    lm_head's product is real work even when its weight is tied to the embedding.
    """
    from .model import architecture_config, count_parameters, meta_model

    cfg = architecture_config(model_name)
    embedding = cfg.vocab_size * cfg.hidden_size
    total = count_parameters(meta_model(model_name))
    return total if cfg.tie_word_embeddings else total - embedding


def lora_training_flops_per_token(model_name: str) -> float:
    """About 4 N FLOPs per token: 2 N forward, 2 N backward for input gradients only.

    A frozen base needs no weight gradients (full fine-tuning would be 6 N);
    LoRA's own matrices and the attention scores add a few percent, left out.
    """
    return 4.0 * compute_parameters(model_name)


def device_peak_flops() -> tuple[float, str]:
    """The device's peak FLOP/s and how it was obtained."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                return peak, f"{name}: dense 16-bit peak {peak / 1e12:.0f} TFLOP/s"
        raise CourseError(f"No peak FLOP/s known for {name}: add it to GPU_PEAK_FLOPS in lora_course/bench.py.")
    import os
    import re

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", info)] or [2000.0]
    # fp32 FLOPs per cycle per core: 2 FMA units x 16 lanes x 2 (AVX-512), else 2 x 8 x 2 (AVX2).
    per_cycle = 64 if "avx512f" in info else 32
    cores = len(os.sched_getaffinity(0))
    peak = cores * max(mhz) * 1e6 * per_cycle
    return peak, f"{cores} cores x {max(mhz):.0f} MHz x {per_cycle} fp32 FLOPs/cycle = {peak / 1e9:.0f} GFLOP/s"
