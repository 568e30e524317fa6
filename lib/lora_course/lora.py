"""LoRA: find the linear layers, build the LoraConfig, attach it, count what trains.

A LoRA adapter on a linear layer W (out x in) adds B @ A, with A (r x in) and
B (out x r), scaled by lora_alpha / r. It trains r * (in + out) parameters per
adapted matrix instead of in * out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .config import ALL_LINEAR, Experiment
from .errors import CourseError

# Linear layer classes by quantisation: float, bitsandbytes 8-bit, bitsandbytes 4-bit.
_LINEAR_CLASS_NAMES = {"Linear", "Linear8bitLt", "Linear4bit"}


def find_linear_names(model: nn.Module, include_lm_head: bool = True) -> list[str]:
    """Distinct leaf names of the linear layers (q_proj, ..., lm_head), sorted.

    Works on float and bitsandbytes-quantised models alike, because it matches
    the class names of all three linear types rather than `nn.Linear` alone
    (bitsandbytes' layers subclass it, but a model already wrapped by PEFT has
    LoRA linear layers that must not be counted as targets).
    """
    names = set()
    for full_name, module in model.named_modules():
        if type(module).__name__ in _LINEAR_CLASS_NAMES and isinstance(module, nn.Linear):
            if "lora_" in full_name:
                continue
            names.add(full_name.split(".")[-1])
    if not include_lm_head:
        names.discard("lm_head")
    if not names:
        raise CourseError("No linear layers found in this model: is it a causal LM with Linear projections?")
    return sorted(names)


def resolve_target_modules(model: nn.Module, target_modules: tuple[str, ...] | list[str] | str) -> list[str]:
    """Turn "all-linear" into the model's linear layer names; check explicit names exist."""
    available = find_linear_names(model)
    if target_modules == ALL_LINEAR:
        return available
    wanted = list(target_modules)
    missing = [t for t in wanted if t not in available]
    if missing:
        raise CourseError(
            f"Target module(s) {', '.join(missing)} not found in the model: its linear layers are {', '.join(available)}."
        )
    return wanted


def lora_config(experiment: Experiment, target_modules: list[str]):
    from peft import LoraConfig

    return LoraConfig(
        r=experiment.lora_r,
        lora_alpha=experiment.lora_alpha,
        lora_dropout=experiment.lora_dropout,
        bias=experiment.bias,
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
    )


def attach_lora(model: nn.Module, experiment: Experiment, gradient_checkpointing: bool = False):
    """Wrap a (possibly quantised) model with a fresh LoRA adapter; returns the PeftModel."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    targets = resolve_target_modules(model, experiment.target_modules)
    if experiment.quantization != "none":
        # Up-casts layer norms to fp32 and enables input gradients, as the blog does.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.activation_checkpointing_enable()
        model.enable_input_require_grads()
    return get_peft_model(model, lora_config(experiment, targets))


@dataclass(frozen=True)
class ParamReport:
    trainable: int
    total: int
    target_modules: tuple[str, ...]
    lora_r: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total

    def to_dict(self) -> dict:
        return {**asdict(self), "percent": self.percent}

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def parameter_report(peft_model: nn.Module) -> ParamReport:
    """Trainable and total parameter counts of a LoRA-wrapped model.

    Counts elements of the parameter tensors; a 4-bit weight packs two values in
    a byte, so its numel is doubled back to the logical count (as PEFT does).
    """
    trainable = total = 0
    for p in peft_model.parameters():
        n = p.numel()
        if n and type(p).__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    cfg = peft_model.peft_config["default"]
    return ParamReport(trainable, total, tuple(sorted(cfg.target_modules)), cfg.r)


def count_lora_parameters(model: nn.Module, lora_r: int, target_modules) -> ParamReport:
    """Trainable/total counts for a LoRA of rank `lora_r` on `model`, without changing it.

    Pure arithmetic over the linear layers' shapes: r * (in + out) per adapted
    matrix. Works on a `meta` model, so it needs no weights and no download.
    """
    targets = set(resolve_target_modules(model, target_modules))
    trainable = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets:
            trainable += lora_r * (module.in_features + module.out_features)
    base_total = sum(p.numel() for p in model.parameters())
    return ParamReport(trainable, base_total + trainable, tuple(sorted(targets)), lora_r)


def lora_matrices(peft_model: nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every LoRA A and B weight by name (for gradient checks)."""
    return {n: p for n, p in peft_model.named_parameters() if "lora_A" in n or "lora_B" in n}


# --------------------------------------------------------------------------- from scratch
class ScratchLoRALinear(nn.Module):
    """LoRA around a frozen linear layer, written out: y = W x + (lora_alpha / r) * B A dropout(x).

    The teaching twin of PEFT's `lora.Linear` (chapter 3 prints this class and
    checks it against PEFT's layer with the same A and B).
    """

    def __init__(self, base: nn.Linear, lora_r: int, lora_alpha: float, lora_dropout: float = 0.0):
        super().__init__()
        self.base = base.requires_grad_(False)  # W stays frozen
        self.lora_A = nn.Parameter(torch.empty(lora_r, base.in_features))  # r x in
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, lora_r))  # out x r: B A = 0 at the start
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)  # PEFT's default for A
        self.scaling = lora_alpha / lora_r
        self.dropout = nn.Dropout(lora_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)


def trainable_by_rank(model: nn.Module, ranks, target_sets: dict[str, object]):
    """Trainable LoRA parameters for each rank and target set: a DataFrame (rank x set)."""
    import pandas as pd

    return pd.DataFrame(
        {name: [count_lora_parameters(model, r, targets).trainable for r in ranks] for name, targets in target_sets.items()},
        index=pd.Index(list(ranks), name="lora_r"),
    )
