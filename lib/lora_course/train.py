"""Training: TRL's SFTTrainer on a LoRA-wrapped model, measured.

    run_experiment(config)    data -> model -> LoRA -> train -> results folder
    train_model(...)          the SFTTrainer part alone, for a model you already hold
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, TrainSettings
from .errors import CourseError


# --------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of a block of code, in MiB.

    On a GPU: `torch.cuda.max_memory_allocated` (tensors only). On the CPU: the
    process's peak resident set (VmHWM), reset at the start of the block through
    /proc/self/clear_refs, so it includes Python, libraries and weights.
    """

    def __init__(self, device: str):
        self.device = device
        self.kind = "cuda_max_allocated" if device == "cuda" else "process_peak_rss"
        self.peak_mib = float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass  # peak then covers the whole process lifetime; still an upper bound
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak_mib = _vm_hwm_kib() / 1024


def _vm_hwm_kib() -> float:
    try:
        m = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
        return float(m.group(1)) if m else float("nan")
    except OSError:
        import resource

        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# --------------------------------------------------------------------------- 4-bit guard
@contextmanager
def trainable_4bit(model):
    """Make 4-bit layers safe to train on the CPU, whatever ran on the model before.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight on its first
    eval-mode forward (e.g. generate()); gradients then no longer flow through
    that layer and LoRA training silently stalls. Here every repacked weight is
    unpacked again and repacking is switched off for the duration (the trainer's
    own evaluation runs in eval mode too); the setting is restored afterwards.
    """
    saved = []
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:
        yield model
        return
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w = module.weight
            if getattr(w.quant_state, "packing_format_for_cpu", False):
                w.data, w.quant_state = _convert_weight_packed_for_cpu_inverse(w.data, w.quant_state)
                module.quant_state = w.quant_state
            saved.append((module, module.support_avx512bf16_for_cpu))
            module.support_avx512bf16_for_cpu = False
    try:
        yield model
    finally:
        for module, flag in saved:
            module.support_avx512bf16_for_cpu = flag


# --------------------------------------------------------------------------- trainer
def sft_config(settings: TrainSettings, output_dir: str | Path, seed: int, has_eval: bool, device: str):
    from trl import SFTConfig

    eval_kwargs: dict[str, Any] = {"eval_strategy": "no"}
    if has_eval and settings.eval_each_epoch:
        eval_kwargs = {"eval_strategy": "epoch", "per_device_eval_batch_size": settings.micro_batch_size}
    return SFTConfig(
        output_dir=str(output_dir),
        seed=seed,
        learning_rate=settings.lr,
        per_device_train_batch_size=settings.micro_batch_size,
        gradient_accumulation_steps=settings.grad_accum_steps,
        max_steps=settings.max_steps,
        num_train_epochs=settings.num_epochs,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a ratio of the total steps
        max_grad_norm=settings.max_grad_norm,
        optim=settings.optim,
        fp16=settings.precision == "fp16",
        bf16=settings.precision == "bf16",
        # transformers 5 spells the blog's group_by_length=True as a sampling strategy.
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        activation_checkpointing=settings.gradient_checkpointing,
        max_length=settings.max_length,
        packing=settings.packing,
        packing_strategy=settings.packing_strategy,
        padding_free=settings.padding_free,
        pad_to_multiple_of=settings.max_length if settings.pad_to_max_length else None,
        dataset_text_field="text",
        logging_steps=settings.logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=device == "cpu",
        dataloader_pin_memory=device == "cuda",
        **eval_kwargs,
    )


def _make_trainer_class():
    """SFTTrainer, extended to train a LoRA adapter on lm_head and to count tokens.

    TRL 1.x computes the loss with a fused LM head that multiplies the hidden
    states by `lm_head.weight` directly, which would skip an adapter on lm_head,
    so it refuses such a model. The blog's all-linear experiments adapt lm_head;
    for them this trainer computes the loss from the model's full logits (the
    model's own forward, through the adapter) instead. Other models keep TRL's
    fused path untouched.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import Trainer
    from trl import SFTTrainer

    class CourseSFTTrainer(SFTTrainer):
        def __init__(self, model, *args, **kwargs):
            self.full_logits_loss = isinstance(model.get_output_embeddings(), BaseTunerLayer)
            self.tokens_seen = 0  # non-padding tokens in the training batches
            if self.full_logits_loss:
                # Hide the adapted head from TRL's check only; nothing else reads it here.
                model.get_output_embeddings = lambda: None
                try:
                    super().__init__(model, *args, **kwargs)
                finally:
                    del model.get_output_embeddings
            else:
                super().__init__(model, *args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                mask = inputs.get("attention_mask")
                self.tokens_seen += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            if not self.full_logits_loss:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return CourseSFTTrainer


class GradientProbe:
    """Trainer callback: the norm of every LoRA matrix's gradient before each optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        probe = self

        class _Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                probe.norms = {
                    n: float(p.grad.norm()) if p.grad is not None else 0.0
                    for n, p in model.named_parameters()
                    if "lora_A" in n or "lora_B" in n
                }

        self.norms: dict[str, float] = {}
        self.callback = _Callback()

    def zero_grad_matrices(self) -> list[str]:
        return sorted(n for n, v in self.norms.items() if not v > 0)


@dataclass
class TrainResult:
    """What one training run measured."""

    losses: list[dict[str, float]]  # [{"step": 1, "loss": 3.2}, ...] per logged step
    eval_losses: list[dict[str, float]]
    wall_time_s: float
    peak_memory_mib: float
    memory_kind: str
    tokens_trained: int  # non-padding tokens seen by the model
    steps: int
    adapter_dir: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def first_loss(self) -> float:
        return self.losses[0]["loss"] if self.losses else math.nan

    @property
    def final_loss(self) -> float:
        return self.losses[-1]["loss"] if self.losses else math.nan

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_trained / self.wall_time_s if self.wall_time_s else math.nan

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(first_loss=self.first_loss, final_loss=self.final_loss, tokens_per_second=self.tokens_per_second)
        return d


def train_model(
    peft_model,
    tokenizer,
    train_dataset,
    settings: TrainSettings,
    *,
    eval_dataset=None,
    seed: int = 42,
    device: str = "cpu",
    callbacks: list | None = None,
    output_dir: str | Path | None = None,
) -> TrainResult:
    """Train a LoRA-wrapped model in place with SFTTrainer and measure the run."""
    keep = ["text"]
    train_dataset = train_dataset.select_columns(keep)
    if eval_dataset is not None:
        eval_dataset = eval_dataset.select_columns(keep)
    with tempfile.TemporaryDirectory(prefix="lora_course_trainer_") as scratch:
        args = sft_config(settings, output_dir or scratch, seed, eval_dataset is not None, device)
        with trainable_4bit(peft_model):
            trainer = _make_trainer_class()(
                model=peft_model,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=tokenizer,
                callbacks=callbacks,
            )
            # In a notebook the trainer would draw an HTML table of every logged loss;
            # chapters plot the losses instead, so that table is dropped there.
            from transformers.utils.notebook import NotebookProgressCallback

            trainer.remove_callback(NotebookProgressCallback)
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                trainer.train()
                wall = time.perf_counter() - start
    peft_model.eval()
    history = trainer.state.log_history
    losses = [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]
    eval_losses = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    return TrainResult(
        losses=losses,
        eval_losses=eval_losses,
        wall_time_s=wall,
        peak_memory_mib=mem.peak_mib,
        memory_kind=mem.kind,
        tokens_trained=trainer.tokens_seen,
        steps=trainer.state.global_step,
    )


# --------------------------------------------------------------------------- one experiment
@dataclass
class ExperimentRun:
    """A trained experiment: its config, measurements, and (if still held) model."""

    config: RunConfig
    result: TrainResult
    params: dict[str, Any]
    data_report: dict[str, Any]
    out_dir: Path
    model: Any = None
    tokenizer: Any = None

    @property
    def adapter_dir(self) -> Path:
        return self.out_dir / "adapter"


def run_experiment(config: RunConfig, *, retrain: bool = False, keep_model: bool = True) -> ExperimentRun:
    """Train one experiment and write results/<profile>/<experiment>/.

    If that folder already holds a finished run of the same config, it is
    reused (no training) unless `retrain=True`. The folder is written under a
    temporary name and renamed at the end, so a failed run leaves nothing behind.
    """
    from .data import prepare_data
    from .lora import attach_lora, parameter_report
    from .model import check_device, check_quantization, load_model, load_tokenizer
    from .results import load_run, write_run
    from .tracking import track_run

    out_dir = config.out_dir
    if not retrain:
        previous = load_run(out_dir)
        if previous is not None and previous.config.same_run_as(config):
            return previous

    check_device(config.profile.device)
    check_quantization(config.experiment.quantization)
    settings = config.profile.train
    tokenizer = load_tokenizer(config.profile)
    data = prepare_data(config.profile.data, tokenizer, settings.max_length)

    torch.manual_seed(config.seed)
    base = load_model(config.profile, config.experiment.quantization)
    model = attach_lora(base, config.experiment, settings.gradient_checkpointing)
    params = parameter_report(model)
    with track_run(config) as tracker:  # MLflow; never fails the run
        result = train_model(
            model,
            tokenizer,
            data.train,
            settings,
            eval_dataset=data.test if settings.eval_each_epoch else None,
            seed=config.seed,
            device=config.profile.device,
        )
        if not result.losses or not all(math.isfinite(x["loss"]) for x in result.losses):
            raise CourseError(
                f"Training {config.experiment.name} produced no finite loss: lower lr "
                f"(now {settings.lr}) or check the data."
            )
        run = ExperimentRun(config, result, params.to_dict(), data.report.to_dict(), out_dir, model, tokenizer)
        write_run(run)
        tracker.log_losses(result.losses)
        tracker.log_metrics({
            "wall_time_s": result.wall_time_s,
            "peak_memory_mib": result.peak_memory_mib,
            "tokens_trained": result.tokens_trained,
            "tokens_per_second": result.tokens_per_second,
            "final_loss": result.final_loss,
            "trainable_params": params.trainable,
        })
        for point in result.eval_losses:
            tracker.log_metrics({"eval_loss": point["eval_loss"]}, step=int(point["step"]))
        tracker.log_artifacts(run.adapter_dir, "adapter")
    if not keep_model:
        run.model = None
    return run
