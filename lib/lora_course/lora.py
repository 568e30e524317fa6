"""LoRA: find the linear layers, build the LoraConfig, attach it, count what trains.

A LoRA adapter on a linear layer W (out x in) adds B @ A, with A (r x in) and
B (out x r), scaled by lora_alpha / r. It trains r * (in + out) parameters per
adapted matrix instead of in * out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from torch import nn

from .errors import CourseError
from .model import logical_numel
from .precision import Precision
from .settings import ALL_LINEAR, Experiment, LoraSettings
from .targets import leaf_names, linear_layers, matches, resolve_targets


def find_linear_names(model: nn.Module, include_lm_head: bool = True) -> list[str]:
    """Distinct leaf names of the linear layers (q_proj, ..., lm_head), sorted.

    Works on float and bitsandbytes-quantised models alike, and on GPT-2's
    Conv1D, because `targets.linear_layers` matches the class names of the
    linear types rather than `nn.Linear` alone; LoRA's own layers in a model
    already wrapped by PEFT are not counted as targets.
    """
    names = set(leaf_names(model))
    if not include_lm_head:
        names.discard("lm_head")
    if not names:
        raise CourseError("No linear layers found in this model: is it a causal LM with Linear projections?")
    return sorted(names)


def resolve_target_modules(model: nn.Module, target_modules: tuple[str, ...] | list[str] | str) -> list[str]:
    """Turn a target set ("all-linear", "attention-qv", ... see `targets`) or names into checked module names."""
    if target_modules == ALL_LINEAR:
        return find_linear_names(model)
    return resolve_targets(model, target_modules)


def lora_config(lora: LoraSettings, target_modules: list[str]):
    """PEFT's LoraConfig: every LoraSettings field under its own name, the targets resolved."""
    return LoraConfig(**{**asdict(lora), "target_modules": list(target_modules)}, task_type="CAUSAL_LM")


def cast_adapter(model: nn.Module, dtype: torch.dtype) -> int:
    """Put every LoRA weight (A, B, DoRA's magnitude) in `dtype`; returns how many tensors changed."""
    changed = 0
    for name, p in model.named_parameters():
        if "lora_" in name and p.dtype != dtype:
            p.data = p.data.to(dtype)
            changed += 1
    return changed


def attach_lora(model: nn.Module, experiment: Experiment, precision: Precision, activation_checkpointing: bool = False):
    """Wrap a (possibly quantised) model with a fresh LoRA adapter in `precision.adapter`; returns the PeftModel."""
    if experiment.lora is None:
        raise CourseError(f"Experiment {experiment.name!r} has no LoRA settings: there is no adapter to attach.")
    targets = resolve_target_modules(model, experiment.lora.target_modules)
    if experiment.quantization != "none":
        # Up-casts layer norms to fp32 and enables input gradients, as the post does.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=activation_checkpointing)
    elif activation_checkpointing:
        model.activation_checkpointing_enable()
        model.enable_input_require_grads()
    peft_model = get_peft_model(model, lora_config(experiment.lora, targets))
    cast_adapter(peft_model, precision.adapter)
    return peft_model


def trainable_percent(trainable: int, total: int) -> float:
    """The trainable share in percent, as PEFT's print_trainable_parameters reports it: of every
    parameter of the adapted model (base and adapter together). The one definition the book uses."""
    if total <= 0 or not 0 <= trainable <= total:
        raise CourseError(f"A trainable share needs 0 <= trainable <= total and total > 0, got {trainable:,} of "
                          f"{total:,}: pass the adapted model's counts.")
    return 100.0 * trainable / total


@dataclass(frozen=True)
class ParamReport:
    trainable: int
    total: int
    target_modules: tuple[str, ...]
    r: int

    @property
    def percent(self) -> float:
        return trainable_percent(self.trainable, self.total)

    def to_dict(self) -> dict:
        return {**asdict(self), "percent": self.percent}

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def parameter_report(peft_model: nn.Module) -> ParamReport:
    """Trainable and total parameter counts of a LoRA-wrapped model, 4-bit weights unpacked."""
    trainable = total = 0
    for p in peft_model.parameters():
        n = logical_numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    cfg = peft_model.peft_config["default"]
    return ParamReport(trainable, total, tuple(sorted(cfg.target_modules)), cfg.r)


def count_lora_parameters(model: nn.Module, r: int, target_modules, use_dora: bool = False) -> ParamReport:
    """Trainable/total counts for a LoRA of rank `r` on `model`, without changing it.

    Pure arithmetic over the linear layers' shapes: r * (in + out) per adapted
    matrix, plus `out` for DoRA's magnitude vector. Works on a `meta` model (no
    weights, no download) and on a quantised one (4-bit weights unpacked).
    """
    LoraSettings(r=r)  # the same check a run makes: r must be a positive integer
    targets = set(resolve_target_modules(model, target_modules))
    trainable = 0
    for name, (n_in, n_out) in linear_layers(model).items():
        if matches(name, targets):
            trainable += r * (n_in + n_out) + (n_out if use_dora else 0)
    base_total = sum(logical_numel(p) for p in model.parameters())
    return ParamReport(trainable, base_total + trainable, tuple(sorted(targets)), r)


def moved_share(before: dict[str, torch.Tensor], model: nn.Module, which: str) -> float:
    """Share of the entries of every `which` ("lora_A" or "lora_B") matrix that differ from `before`."""
    moved = total = 0
    for name, p in model.named_parameters():
        if which in name and name in before:
            moved += int((p.detach().float() != before[name].float()).sum())
            total += p.numel()
    if total == 0:
        raise CourseError(f"No {which} weights found to compare: is this a LoRA model?")
    return moved / total


def moved_share_by_module(before: dict[str, torch.Tensor], model: nn.Module, which: str = "lora_A") -> dict[str, float]:
    """`moved_share` per adapted module ("...layers.0.self_attn.q_proj", "lm_head"): a pooled share
    hides a small module that froze (lm_head's lora_A is 0.44% of the 3B model's lora_A entries)."""
    moved: dict[str, int] = {}
    total: dict[str, int] = {}
    for name, p in model.named_parameters():
        if which in name and name in before:
            module = name.split("." + which)[0]
            moved[module] = moved.get(module, 0) + int((p.detach().float() != before[name].float()).sum())
            total[module] = total.get(module, 0) + p.numel()
    if not total:
        raise CourseError(f"No {which} weights found to compare: is this a LoRA model?")
    return {m: moved[m] / total[m] for m in sorted(total)}


def snapshot_adapter(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every LoRA weight, to see later which entries moved."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


# --------------------------------------------------------------------------- from scratch
class ScratchLoRALinear(nn.Module):
    """LoRA around a frozen linear layer: y = W x + (lora_alpha / r) B A dropout(x).

    The teaching twin of PEFT's `lora.Linear` (chapter 3 prints this class
    and checks it against PEFT's layer with the same A and B).
    """

    def __init__(self, base: nn.Linear, r: int, lora_alpha: float, lora_dropout=0.0):
        super().__init__()
        self.base = base.requires_grad_(False)  # W stays frozen
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))  # r x in
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))  # out x r
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)  # PEFT's default for A
        self.scaling = lora_alpha / r  # B = 0 at the start, so B A = 0
        self.dropout = nn.Dropout(lora_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_A.T @ self.lora_B.T
        return self.base(x) + self.scaling * update


def trainable_by_rank(model: nn.Module, ranks, target_sets: dict[str, object]):
    """Trainable LoRA parameters for each rank and target set: a DataFrame (rank x set)."""
    return pd.DataFrame(
        {name: [count_lora_parameters(model, r, targets).trainable for r in ranks] for name, targets in target_sets.items()},
        index=pd.Index(list(ranks), name="r"),
    )
