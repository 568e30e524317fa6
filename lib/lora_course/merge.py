"""Merge: fold a LoRA adapter into a float reload of its base, and check the result.

Merging W' = W + (lora_alpha / r) * B @ A into 4-bit or 8-bit weights would
re-quantise W' and lose the small update; reloading the base in float first
keeps it exact up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelSpec, Profile
from .errors import CourseError


def load_adapter_model(model: str | ModelSpec | Profile, adapter_dir: str | Path, quantization: str = "none", device: str | None = None):
    """The base model (in the given precision) with a saved adapter on top, unmerged."""
    from peft import PeftModel

    from .model import load_model

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise CourseError(
            f"No adapter in {adapter_dir}: train the experiment first (python -m lora_course train ...)."
        )
    base = load_model(model, quantization, device)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir))
    if quantization != "none":
        # TRL keeps every adapter weight of a quantised model in bf16 (the QLoRA
        # recipe), lm_head's included; do the same here so that a reloaded adapter
        # computes exactly what the trained one did.
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.data = p.data.to(torch.bfloat16)
    peft_model.eval()
    return peft_model


def merge_adapter(peft_model):
    """merge_and_unload(): a plain transformers model with the adapter folded in."""
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged


@torch.no_grad()
def max_logit_difference(model_a, model_b, tokenizer, prompts: list[str]) -> float:
    """Largest |logit_a - logit_b| over every position of every prompt."""
    worst = 0.0
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(next(model_a.parameters()).device)
        a = model_a(**enc).logits.float()
        b = model_b(**enc).logits.float()
        worst = max(worst, float((a - b).abs().max()))
    return worst


@dataclass
class MergeReport:
    max_abs_logit_diff: float
    merged_model: object
    tokenizer: object


def merge_and_check(model: str | ModelSpec | Profile, adapter_dir: str | Path, prompts: list[str], device: str | None = None) -> MergeReport:
    """Reload the base in float, attach the adapter, merge, and compare logits.

    The comparison is adapter-on-float-base (unmerged) against merged, on the
    same prompts; the difference should be float rounding only (about 1e-6).
    """
    import copy

    from .model import load_tokenizer

    tokenizer = load_tokenizer(model)
    adapter_model = load_adapter_model(model, adapter_dir, "none", device)
    reference = copy.deepcopy(adapter_model)
    merged = merge_adapter(adapter_model)
    diff = max_logit_difference(reference, merged, tokenizer, prompts)
    return MergeReport(diff, merged, tokenizer)


def save_merged(merged_model, tokenizer, out_dir: str | Path) -> Path:
    """Save a merged model as a plain checkpoint that loads without PEFT."""
    from .results import atomic_dir

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        merged_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
