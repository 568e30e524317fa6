"""Benchmarks: what fine-tuning and serving cost, measured side by side. Each setting is a pipeline run.

    python -m lora_course bench --profile cpu --experiment qlora-r8-qv

For one profile and experiment, in one process:
  - training with two trainer settings on the same model, rows, token budget and
    dtypes (they differ in padding, packing, row order and accumulation):
      blog         what the post's trainer did: each batch padded to its own longest
                   row by the default collator, rows grouped by length, 4 x 4 accumulation
      recommended  examples packed end to end into full rows ("wrapped" packing),
                   4 rows a step, no accumulation, no padding at all
    per-step times give median and spread (the first, warm-up step left out);
  - held-out response loss after each, so speed is not bought with quality;
  - generation latency of the base, the unmerged adapter and the merged model.
Ratios are reported next to the absolute numbers. Speed is measured, never asserted in tests.

    train_check(profile, ...)   the gpu profile's trainer on random weights: loss, adapter movement, memory
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from .config import DEFAULT_SEED, RunConfig
from .data import BLOG_PROMPTS, prepare_data, product_prompt, token_lengths
from .errors import CourseError
from .generate import check_count
from .merge import measure_serving_latency
from .model import architecture_config, count_parameters, load_tokenizer, meta_model
from .pipeline import run
from .presets import get_experiment
from .results import LatencyTable, Results, write_json
from .settings import Profile
from .train import AdapterMovement

TRAINER_SETTINGS: dict[str, dict[str, Any]] = {
    # The companion code's trainer: the default collator pads each batch to its
    # longest row; group_by_length keeps rows of similar length together.
    "blog": dict(per_device_train_batch_size=4, gradient_accumulation_steps=4, train_sampling_strategy="group_by_length",
                 packing=False, packing_strategy="bfd", padding_free=False, pad_to_multiple_of=None),
    # Packed: examples laid end to end and cut into full rows of max_length tokens
    # (TRL's "wrapped" packing), 4 rows a step with no accumulation. No position
    # holds padding, and every row is a plain causal sequence. The price:
    # attention can cross from one example into the next one in the same row,
    # and an example may be split across rows. (TRL's "bfd" packing keeps
    # examples apart, but without FlashAttention it attends over the whole
    # flattened batch and measured slower than padding on a CPU.)
    "recommended": dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, train_sampling_strategy="random",
                        packing=True, packing_strategy="wrapped", padding_free=False, pad_to_multiple_of=None),
}


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
    device: str
    training: dict[str, TrainingBench] = field(default_factory=dict)
    latency: LatencyTable | None = None

    @property
    def speedup(self) -> float:
        """Non-padding tokens per second, recommended over blog."""
        return self.training["recommended"].tokens_per_second / self.training["blog"].tokens_per_second

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("training", "latency")}
        d["training"] = {k: v.to_dict() for k, v in self.training.items()}
        d["latency"] = self.latency.to_dict() if self.latency is not None else {}
        if {"blog", "recommended"} <= set(self.training):
            d["speedup_tokens_per_second"] = self.speedup
            d["heldout_loss_difference"] = self.training["recommended"].heldout_loss - self.training["blog"].heldout_loss
        return d

    def table(self) -> str:
        lines = [f"{'settings':12} {'tokens/s':>9} {'steps/s':>8} {'s/step (median [min, max])':>28} "
                 f"{'peak MiB':>9} {'held-out loss':>13}"]
        for name, t in self.training.items():
            s = t.step_seconds
            lines.append(f"{name:12} {t.tokens_per_second:9.0f} {t.steps_per_second:8.3f} "
                         f"{s['median']:10.2f} [{s['min']:.2f}, {s['max']:.2f}]{'':6} {t.peak_memory_mib:9.0f} "
                         f"{t.heldout_loss:13.3f}")
        if {"blog", "recommended"} <= set(self.training):
            lines.append(f"speed-up in non-padding tokens/s, recommended / blog: {self.speedup:.2f}x")
        if self.latency is not None:
            for key, label in LatencyTable.LABELS.items():
                lat = getattr(self.latency, key)
                lines.append(f"generate {label:28} median {lat.median_s:.2f} s [{lat.min_s:.2f}, {lat.max_s:.2f}]  "
                             f"{lat.tokens_per_second:.1f} tokens/s")
        return "\n".join(lines)


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements, the first (warm-up) one left out when there are others."""
    values = values[1:] or values
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def random_weights(profile: Profile) -> Profile:
    """The same profile on its model's architecture with random weights: its cost with no download."""
    return dataclasses.replace(profile, model=f"{profile.model}-random")


def setting_config(profile: Profile, experiment: str, setting: str, rows: int, results_dir, seed: int = DEFAULT_SEED) -> RunConfig:
    """One trainer setting as a run: one pass over the first `rows` training rows, nothing else changed."""
    if setting not in TRAINER_SETTINGS:
        raise CourseError(f"Unknown trainer setting {setting!r}: choose from {', '.join(TRAINER_SETTINGS)}.")
    # Rows longer than max_length are dropped: padding truncates them and packing
    # would not, so keeping them would give the two settings different tokens.
    return RunConfig.create(experiment, profile, seed=seed, results_dir=results_dir,
                            name=f"bench/{experiment}/{setting}", data={"train_rows": rows, "overlong": "drop"},
                            max_steps=-1, num_train_epochs=1.0, logging_steps=1, eval_strategy="no",
                            save_strategy="no", **TRAINER_SETTINGS[setting])


def bench(profile: Profile, experiment: str, *, results_dir="results", rows: int | None = None,
          settings: tuple[str, ...] = ("blog", "recommended"), latency: bool = True, latency_tokens: int = 32,
          latency_repeats: int = 3, retrain: bool = False) -> BenchResult:
    """Measure training (per trainer setting) and generation latency for one experiment."""
    rows = profile.bench_rows if rows is None else rows
    check_count("rows", rows)
    if latency:
        check_count("latency_repeats", latency_repeats)
        check_count("latency_tokens", latency_tokens)
    result = BenchResult(profile.name, experiment, profile.model, profile.device)
    last = None
    for name in settings:
        config = setting_config(profile, experiment, name, rows, results_dir)
        r = run(config, evaluate="loss", retrain=retrain)
        t = r.result
        result.training[name] = TrainingBench(
            settings=name, train_settings=TRAINER_SETTINGS[name], steps=t.steps, rows=rows, tokens=t.tokens_trained,
            wall_time_s=t.wall_time_s, step_seconds=spread(t.step_seconds), peak_memory_mib=t.peak_memory_mib,
            memory_kind=t.memory_kind, final_train_loss=t.final_loss, heldout_loss=r.evaluation.loss["loss"],
        )
        last = r
    if latency and last is not None:
        prompts = [product_prompt(p, c) for p, c in BLOG_PROMPTS[:2]]
        result.latency = measure_serving_latency(profile, last.adapter_dir, prompts, latency_tokens, latency_repeats)
    return result


def environment() -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def save(result: BenchResult, results: Results) -> Path:
    """results/<profile>/bench/<experiment>.json, with the environment it ran in."""
    out = results.path("bench", f"{result.experiment}.json")
    write_json(out, {**result.to_dict(), "environment": environment()})
    return out


# --------------------------------------------------------------------------- padding, counted
@dataclass(frozen=True)
class PaddingWaste:
    """Share of the positions in padded training batches that hold padding, from the tokenised rows."""

    rows: int
    batch_size: int
    max_length: int
    grouped: float  # rows grouped by length (transformers' length-grouped order, as the post's trainer)
    random: float  # rows in random order

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def padded_share(lengths: list[int], order: list[int], batch_size: int) -> float:
    """Padding positions over all positions when rows are batched in `order` and each batch is padded to its
    longest row (the default collator)."""
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        padded += max(batch) * len(batch) - sum(batch)
        real += sum(batch)
    return padded / (padded + real)


def padding_waste(profile: Profile, seed: int = DEFAULT_SEED) -> PaddingWaste:
    """What padding costs the profile's training split at its batch size and max_length, counted, not trained.

    Each row's length is what the trainer sees: the text's tokens plus the EOS
    token the trainer appends, cut at max_length. Batches are padded to their
    longest row, in transformers' length-grouped order (`group_by_length`, the
    post's trainer) and in a random order, both drawn with `seed`. Every padded
    position costs a forward and a backward pass like a real one on a GPU.
    """
    train = profile.train
    data = prepare_data(profile.data, load_tokenizer(profile), train.max_length)
    lengths = [min(n + 1, train.max_length) for n in token_lengths(data.train["text"], load_tokenizer(profile))]
    batch = train.per_device_train_batch_size
    grouped = get_length_grouped_indices(lengths, batch, generator=torch.Generator().manual_seed(seed))
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    return PaddingWaste(len(lengths), batch, train.max_length, padded_share(lengths, grouped, batch),
                        padded_share(lengths, shuffled, batch))


# --------------------------------------------------------------------------- arithmetic
# Dense 16-bit peak of common training GPUs, FLOP/s (vendor figures, no sparsity).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "T4": 65e12, "V100": 125e12}


def compute_parameters(model_name: str) -> int:
    """Parameters that do matrix work per token: all but the embedding lookup table.

    lm_head's product is real work even when its weight is tied to the embedding.
    """
    cfg = architecture_config(model_name)
    embedding = cfg.vocab_size * cfg.hidden_size
    total = count_parameters(meta_model(model_name))
    return total if cfg.tie_word_embeddings else total - embedding


def lora_training_flops_per_token(model_name: str, activation_checkpointing: bool = False) -> float:
    """FLOPs per trained token with a frozen base: 4 N, or 6 N with activation checkpointing.

    Forward 2 N; backward 2 N for the input gradients only (a frozen weight needs
    no gradient of its own; full fine-tuning would add another 2 N). Activation
    checkpointing runs the forward a second time during the backward pass: +2 N.
    LoRA's own matrices and the attention scores add a few percent, left out.
    """
    return (6.0 if activation_checkpointing else 4.0) * compute_parameters(model_name)


def device_peak_flops() -> tuple[float | None, str]:
    """The device's peak FLOP/s and how it was obtained; None for a GPU not in GPU_PEAK_FLOPS."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                return peak, f"{name}: dense 16-bit peak {peak / 1e12:.0f} TFLOP/s"
        return None, f"{name}: peak unknown (not in lora_course.bench.GPU_PEAK_FLOPS)"
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", info)] or [2000.0]
    # fp32 FLOPs per cycle per core: 2 FMA units x 16 lanes x 2 (AVX-512), else 2 x 8 x 2 (AVX2).
    # From the CPU's flags, not torch's kernel choice: the BLAS behind the matmuls picks its
    # own instructions (ATEN_CPU_CAPABILITY=avx2 does not stop it using AVX-512).
    per_cycle = 64 if "avx512f" in info else 32
    cores = len(os.sched_getaffinity(0))
    peak = cores * max(mhz) * 1e6 * per_cycle
    return peak, f"{cores} cores x {max(mhz):.0f} MHz x {per_cycle} fp32 FLOPs/cycle = {peak / 1e9:.0f} GFLOP/s"


def utilisation(flops_per_second: float, peak: float | None) -> float | None:
    """Achieved over peak FLOP/s; None when the device's peak is unknown."""
    return None if peak is None else flops_per_second / peak


def describe_utilisation(share: float | None) -> str:
    return "unknown (no peak known for this device)" if share is None else f"{share:.1%}"


# --------------------------------------------------------------------------- the gpu profile's trainer, checked
def train_check(profile: Profile, experiments: tuple[str, ...] = ("qlora-r8-all", "lora8bit-r8-all"), *,
                steps: int = 40, results_dir="results", data_source: str = "sample") -> dict[str, Any]:
    """The profile's trainer settings on its architecture with random weights, for `steps` optimizer steps.

    Per experiment: loss per step, the share of lora_A / lora_B entries that
    moved, peak memory, non-padding tokens/s and utilisation. `ok` is False when
    an adapter froze (in some adapted module under 99% of its lora_A entries moved) or a loss is not finite.
    """
    prof = random_weights(profile)
    # Random weights, offline data: every row of the sample, the profile's split and trainer settings.
    prof = dataclasses.replace(prof, data=dataclasses.replace(prof.data, source=data_source, n_rows=None))
    peak, peak_text = device_peak_flops()
    report: dict[str, Any] = {"profile": profile.name, "model": prof.model, "steps": steps, "peak_flops": peak,
                              "peak_flops_text": peak_text, "environment": environment(), "runs": {}}
    ok = True
    for name in experiments:
        watch = AdapterMovement()
        config = RunConfig.create(get_experiment(name), prof, results_dir=results_dir, name=f"train-check/{name}",
                                  max_steps=steps, logging_steps=1)
        r = run(config, callbacks=[watch.callback], retrain=True)
        t = r.result
        losses = [x["loss"] for x in t.losses]
        finite = all(math.isfinite(x) for x in losses)
        k = max(1, len(losses) // 5)
        flops = lora_training_flops_per_token(profile.model, config.profile.train.activation_checkpointing)
        # Per adapted module: a pooled share would pass with lm_head's adapter frozen.
        frozen = watch.frozen_modules(0.99)
        run_ok = finite and bool(watch.moved_by_module) and not frozen
        ok &= run_ok
        report["runs"][name] = {
            "losses": losses, "finite": finite, "falling": finite and sum(losses[-k:]) / k < sum(losses[:k]) / k,
            "adapter_dtypes": watch.dtypes, "moved_share": watch.moved,
            "least_moved_module": min(watch.moved_by_module.items(), key=lambda kv: kv[1]) if watch.moved_by_module else None,
            "frozen_modules": frozen, "peak_memory_mib": t.peak_memory_mib,
            "memory_kind": t.memory_kind, "tokens_per_second": t.tokens_per_second,
            "flops_per_token": flops, "utilisation": utilisation(flops * t.tokens_per_second, peak), "wall_time_s": t.wall_time_s,
            "median_step_seconds": t.median_step_seconds, "ok": run_ok,
        }
    report["ok"] = ok
    return report
