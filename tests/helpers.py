"""Helpers only the tests use: the miniature book's profile, a gradient probe, training a model in hand, LoRA matrices."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from lora_course.precision import Precision
from lora_course.results import TrainResult
from lora_course.settings import TrainSettings
from lora_course.train import build_trainer, train

MINI = "gpu-mini"  # the gpu profile in miniature: every gpu branch of every chapter, on a CPU, in minutes


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


def train_model(peft_model, tokenizer, train_rows, settings: TrainSettings, precision: Precision, *, seed: int = 42,
                eval_rows=None, callbacks: list | None = None, output_dir: str | Path | None = None) -> TrainResult:
    """Train a LoRA-wrapped model in place and measure the run (checkpoints, if any, in a scratch folder)."""
    with tempfile.TemporaryDirectory(prefix="lora_course_trainer_") as scratch:
        trainer = build_trainer(peft_model, tokenizer, train_rows, settings, precision, output_dir=output_dir or scratch,
                                seed=seed, eval_rows=eval_rows, callbacks=callbacks)
        return train(trainer)


def lora_matrices(peft_model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every LoRA A and B weight by name (for gradient checks)."""
    return {n: p for n, p in peft_model.named_parameters() if "lora_A" in n or "lora_B" in n}
