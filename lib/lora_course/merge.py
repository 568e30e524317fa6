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


def load_adapter_model(model: str | ModelSpec | Profile, adapter_dir: str | Path, quantization: str = "none",
                       device: str | None = None, compute_dtype: str | None = None):
    """The base model (in the given precision) with a saved adapter on top, unmerged."""
    from peft import PeftModel

    from .model import load_model

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise CourseError(
            f"No adapter in {adapter_dir}: train the experiment first (python -m lora_course train ...)."
        )
    base = load_model(model, quantization, device, compute_dtype)
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


def untie_lm_head(peft_model) -> bool:
    """Give lm_head its own weight when it shares the embedding's (SmolLM2 ties them).

    An adapter on lm_head changes only the output projection. Merged into a
    weight that is also the input embedding, it would change the embedding too,
    and the merged model would no longer compute what the adapter model did.
    Returns True when a weight was untied.
    """
    from torch import nn

    base = peft_model.get_base_model()
    head = base.get_output_embeddings()
    head = getattr(head, "base_layer", head)  # inside PEFT's LoRA wrapper
    embedding = base.get_input_embeddings()
    if head.weight.data_ptr() != embedding.weight.data_ptr():
        return False
    head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=False)
    base.config.tie_word_embeddings = False
    if hasattr(base.config, "get_text_config"):
        base.config.get_text_config().tie_word_embeddings = False
    return True


def merge_adapter(peft_model):
    """merge_and_unload(): a plain transformers model with the adapter folded in.

    lm_head is untied from the embedding first when an adapter sits on it.
    """
    head = peft_model.get_base_model().get_output_embeddings()
    if hasattr(head, "lora_A"):
        untie_lm_head(peft_model)
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


def merge_and_check(model: str | ModelSpec | Profile, adapter_dir: str | Path, prompts: list[str],
                    quantization: str = "none", device: str | None = None) -> MergeReport:
    """Attach the adapter to a fresh load of the base, merge it, and compare with the unmerged model.

    With quantization "none" (the right way) the base is reloaded in float and
    the difference is float rounding only. With "nf4" or "int8" the update is
    folded into quantised weights and re-quantised: the difference shows what
    that loses. The unmerged reference is a second, separate load.
    """
    from .model import load_tokenizer

    tokenizer = load_tokenizer(model)
    reference = load_adapter_model(model, adapter_dir, quantization, device)
    merged = merge_adapter(load_adapter_model(model, adapter_dir, quantization, device))
    diff = max_logit_difference(reference, merged, tokenizer, prompts)
    return MergeReport(diff, merged, tokenizer)


def save_merged(merged_model, tokenizer, out_dir: str | Path) -> Path:
    """Save a merged model as a plain checkpoint that loads without PEFT."""
    from .model import no_progress_bar
    from .results import atomic_dir

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp, no_progress_bar():
        merged_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def load_merged(folder: str | Path):
    """A saved merged model, loaded as a plain transformers model (no PEFT involved)."""
    from transformers import AutoModelForCausalLM

    from .model import no_progress_bar

    with no_progress_bar():
        return AutoModelForCausalLM.from_pretrained(folder).eval()


# --------------------------------------------------------------------------- many adapters, one base
def load_adapters(model: str | ModelSpec | Profile, adapters: dict[str, str | Path], quantization: str = "none",
                  device: str | None = None):
    """One base model carrying several named adapters (none merged)."""
    from peft import PeftModel

    from .model import load_model

    names = list(adapters)
    for name, folder in adapters.items():
        if not (Path(folder) / "adapter_config.json").exists():
            raise CourseError(f"No adapter in {folder} for {name!r}: train that experiment first.")
    base = load_model(model, quantization, device)
    multi = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        multi.load_adapter(str(adapters[name]), adapter_name=name)
    multi.eval()
    return multi


@torch.no_grad()
def generate_mixed(multi_model, tokenizer, prompts: list[str], adapter_names: list[str], max_new_tokens: int = 64) -> list[str]:
    """One batch where row i uses adapter `adapter_names[i]` ("__base__" for no adapter)."""
    from .generate import cut_response, generation_config

    if len(prompts) != len(adapter_names):
        raise CourseError(f"{len(prompts)} prompts but {len(adapter_names)} adapter names: give one name per prompt.")
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(next(multi_model.parameters()).device)
        ids = multi_model.generate(**enc, adapter_names=list(adapter_names),
                                   generation_config=generation_config(tokenizer, max_new_tokens, stop_strings=()))
    finally:
        tokenizer.padding_side = side
    new = ids[:, enc["input_ids"].shape[1]:]
    return [cut_response(tokenizer.decode(row, skip_special_tokens=True)) for row in new]


def folder_size_mb(folder: str | Path) -> float:
    """Bytes of every file under `folder`, in MB (10^6 bytes)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
