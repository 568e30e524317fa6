"""Training: TRL's SFTTrainer on a LoRA-wrapped model, measured.

    trainer_arguments(settings, precision, output_dir, seed)   the SFTConfig keywords, as a dict
    build_trainer(model, tokenizer, rows, settings, precision, ...)
    train(trainer, resume_from=None)  -> TrainResult
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import Trainer, TrainerCallback
from trl import SFTConfig, SFTTrainer

from .errors import CourseError
from .lora import moved_share, moved_share_by_module, snapshot_adapter
from .precision import Precision
from .results import TrainResult
from .settings import TrainSettings


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
        import resource  # Unix only, as /proc is Linux only

        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# --------------------------------------------------------------------------- 4-bit guard
@contextmanager
def trainable_4bit(model):
    """Make 4-bit layers safe to train on the CPU, whatever ran on the model before.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight on its first
    eval-mode forward (e.g. generate()) unless the model was loaded by
    `model.load_model`; gradients then no longer flow through that layer and
    LoRA training silently stalls. Here every repacked weight is unpacked again
    and repacking is switched off for the duration (the trainer's own evaluation
    runs in eval mode too); the setting is restored afterwards.
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
def trainer_arguments(settings: TrainSettings, precision: Precision, output_dir: str | Path, seed: int) -> dict[str, Any]:
    """The keyword arguments of TRL's SFTConfig for one run: every TrainSettings field under its own
    name, the resolved mixed precision, and what the course fixes for every run."""
    return {
        **asdict(settings),
        "output_dir": str(output_dir),
        "seed": seed,
        "fp16": precision.mixed_precision == "fp16",
        "bf16": precision.mixed_precision == "bf16",
        "use_cpu": precision.device == "cpu",
        "dataloader_pin_memory": precision.device == "cuda",
        "dataset_text_field": "text",
        # MLflow logging is the course's own (tracking.py), one run per experiment.
        "report_to": "none",
        # Every LoRA weight gets a gradient, so DDP need not search for unused ones.
        "ddp_find_unused_parameters": False,
        # Evaluation during training keeps the loss only, not every position's logits.
        "prediction_loss_only": True,
    }


def _trainer_class():
    """SFTTrainer, extended to keep adapters in their dtype, train a LoRA on lm_head, and count tokens.

    - TRL casts every trainable weight of a quantised model to bf16 at
      construction; at the post's learning rate most lora_A entries then never
      change (chapter 3). The adapter's exact starting values are put back, in
      the resolved adapter dtype.
    - TRL computes the loss with a fused LM head that multiplies the hidden
      states by `lm_head.weight` directly, which would skip an adapter on
      lm_head, so it refuses such a model. This trainer computes the loss from
      the model's full logits for every run instead, one loss path for all
      experiments (and about 30% faster per step on a CPU than the fused head).
    """
    class CourseSFTTrainer(SFTTrainer):
        def __init__(self, model, *args, adapter_dtype: torch.dtype, **kwargs):
            self.tokens_seen = 0  # non-padding tokens in the training batches of this process
            # TRL rounds the adapter through bf16; keep the exact starting values to put back.
            start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            if isinstance(model.get_output_embeddings(), BaseTunerLayer):
                # Hide the adapted head from TRL's check only; nothing else reads it here.
                model.get_output_embeddings = lambda: None
                try:
                    super().__init__(model, *args, **kwargs)
                finally:
                    del model.get_output_embeddings
            else:
                super().__init__(model, *args, **kwargs)
            for n, p in self.model.named_parameters():
                if n in start:
                    p.data = start[n].to(adapter_dtype)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                mask = inputs.get("attention_mask")
                self.tokens_seen += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return CourseSFTTrainer


class StepTimer:
    """Trainer callback: wall time of every optimizer step."""

    def __init__(self):
        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.seconds.append(time.perf_counter() - timer._start)

        self.seconds: list[float] = []
        self._start = 0.0
        self.callback = _Callback()


def training_rows(rows, settings: TrainSettings):
    """The columns the trainer reads: whole texts, or prompt and completion for a loss on the response only."""
    if settings.completion_only_loss:
        return rows.select_columns(["prompt", "response"]).rename_column("response", "completion")
    return rows.select_columns(["text"])


def build_trainer(model, tokenizer, train_rows, settings: TrainSettings, precision: Precision, *, output_dir,
                  seed: int, eval_rows=None, callbacks: list | None = None):
    """A CourseSFTTrainer for a LoRA-wrapped model, with the run's rows and settings."""
    if settings.eval_strategy != "no" and eval_rows is None:
        raise CourseError(f"eval_strategy={settings.eval_strategy!r} needs held-out rows: pass eval_rows.")
    args = trainer_arguments(settings, precision, output_dir, seed)

    trainer = _trainer_class()(
        model=model,
        args=SFTConfig(**args),
        train_dataset=training_rows(train_rows, settings),
        eval_dataset=training_rows(eval_rows, settings) if eval_rows is not None else None,
        processing_class=tokenizer,
        callbacks=callbacks,
        adapter_dtype=precision.adapter,
    )
    # In a notebook the trainer would draw an HTML table of every logged loss;
    # chapters plot the losses instead, so that table is dropped there.
    from transformers.utils.notebook import NotebookProgressCallback  # imports IPython (the book extra)

    trainer.remove_callback(NotebookProgressCallback)
    return trainer


def train(trainer, resume_from: str | Path | None = None) -> TrainResult:
    """Run the trainer (from a checkpoint when given) and measure the run."""
    timer, watch = StepTimer(), AdapterMovement()
    trainer.add_callback(timer.callback)
    trainer.add_callback(watch.callback)
    device = "cuda" if trainer.args.device.type == "cuda" else "cpu"
    with trainable_4bit(trainer.model), PeakMemory(device) as mem:
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        wall = time.perf_counter() - start
    trainer.model.eval()
    history = trainer.state.log_history
    losses = [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]
    eval_losses = [{"step": h["step"], "epoch": h.get("epoch"), "eval_loss": h["eval_loss"]}
                   for h in history if "eval_loss" in h]
    tokens = trainer.tokens_seen
    world = trainer.accelerator.num_processes
    if world > 1:
        tokens = int(trainer.accelerator.reduce(torch.tensor(tokens, device=trainer.args.device), reduction="sum"))
    return TrainResult(
        losses=losses,
        eval_losses=eval_losses,
        wall_time_s=wall,
        step_seconds=timer.seconds,
        peak_memory_mib=mem.peak_mib,
        memory_kind=mem.kind,
        tokens_trained=tokens,
        steps=trainer.state.global_step,
        world_size=world,
        moved_share=watch.moved,
        adapter_dtype=",".join(watch.dtypes),
    )


class AdapterMovement:
    """Trainer callback: which LoRA entries changed between the start and the end of training."""

    def __init__(self):
        watch = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                watch.before = snapshot_adapter(model)
                watch.dtypes = sorted({str(p.dtype).replace("torch.", "") for p in watch.before.values()})

            def on_train_end(self, args, state, control, model=None, **kwargs):
                watch.moved = {which: moved_share(watch.before, model, which) for which in ("lora_A", "lora_B")}
                watch.moved_by_module = moved_share_by_module(watch.before, model, "lora_A")

        self.before: dict = {}
        self.dtypes: list[str] = []
        self.moved: dict[str, float] = {}
        self.moved_by_module: dict[str, float] = {}  # lora_A's moved share per adapted module
        self.callback = _Callback()

    def frozen_modules(self, at_least: float = 0.99) -> list[str]:
        """Adapted modules whose lora_A moved in under `at_least` of its entries."""
        return [m for m, share in self.moved_by_module.items() if share < at_least]
