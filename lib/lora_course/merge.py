"""Merge: fold a LoRA adapter into a float base, check it, and see what 4-bit merging loses.

Two float bases: a float reload of the original weights (`merge_and_check`), or, for an adapter
trained on NF4, the NF4 base dequantised to float (`merge_dequantised`, the QLoRA recipe), which
gives back the very model that was trained and scored.

Merging computes W' = W + (lora_alpha / r) * B @ A. Into float weights that is
exact up to rounding. Into 4-bit weights, W' is quantised again to 16 levels per
block: an update much smaller than the gap between two levels rounds back to
the old weight, and the fine-tune is lost (`nf4_merge_loss` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModelForCausalLM

from .catalogue import ModelSpec
from .errors import CourseError
from .generate import cut_response, generation_config, time_generation
from .lora import cast_adapter
from .model import dequantised_weight, device_map, load_model, load_tokenizer, no_progress_bar, precision_of
from .precision import Precision
from .results import LatencyRow, LatencyTable, atomic_dir, check_replaceable
from .settings import Profile


def load_adapter_model(model: str | ModelSpec | Profile, adapter_dir: str | Path, quantization: str = "none",
                       precision: Precision | None = None):
    """The base model (in the given quantisation) with a saved adapter on top, unmerged, in eval mode.

    The adapter is held in the resolved adapter dtype, as it was trained, so a
    reloaded adapter computes exactly what the trained one did (`load_adapters` with one adapter).
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise CourseError(
            f"No adapter in {adapter_dir}: train the experiment first (python -m lora_course train ...)."
        )
    return load_adapters(model, {"default": adapter_dir}, quantization, precision)


def untie_lm_head(peft_model) -> bool:
    """Give lm_head its own weight when it shares the embedding's (SmolLM2 ties them).

    An adapter on lm_head changes only the output projection. Merged into a
    weight that is also the input embedding, it would change the embedding too,
    and the merged model would no longer compute what the adapter model did.
    Returns True when a weight was untied.
    """
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
    """PEFT's merge_and_unload(): a plain transformers model with the adapter folded in.

    lm_head is untied from the embedding first when an adapter sits on it.
    """
    head = peft_model.get_base_model().get_output_embeddings()
    if hasattr(head, "lora_A"):
        untie_lm_head(peft_model)
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged


@torch.no_grad()
def _logits(model, tokenizer, texts: list[str]) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    return [model(**tokenizer(t, return_tensors="pt").to(device)).logits[0].float() for t in texts]


@torch.no_grad()
def max_logit_difference(model_a, model_b, tokenizer, texts: list[str]) -> float:
    """Largest |logit_a - logit_b| over every position of every text."""
    return max(float((a - b).abs().max()) for a, b in zip(_logits(model_a, tokenizer, texts),
                                                         _logits(model_b, tokenizer, texts)))


@torch.no_grad()
def greedy_tokens(model, tokenizer, texts: list[str]) -> list[torch.Tensor]:
    """The token each position of each text would predict next (its argmax), text by text."""
    return [logits.argmax(-1) for logits in _logits(model, tokenizer, texts)]


def agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Share of positions where two models' greedy predictions (from `greedy_tokens`) are the same."""
    same = sum(int((x == y).sum()) for x, y in zip(a, b))
    return same / sum(x.numel() for x in a)


def logit_tolerance(dtype: torch.dtype, logit_scale: float) -> float:
    """The largest logit difference that rounding alone explains when a merge is done in `dtype`.

    fp32: 1e-3 (measured differences are about 1e-6). 16-bit: W + s B A is rounded to
    the dtype's step in every merged weight (bf16 keeps 8 significant bits: a relative
    step of 2^-7), and the logits carry that rounding: 4 steps at the size of the largest
    logit. With logits up to 10 in bf16 that is 4 x 0.0078 x 10 = 0.31; measured ~0.06.
    """
    if dtype == torch.float32:
        return 1e-3
    return max(1e-3, 4 * torch.finfo(dtype).eps * logit_scale)


@dataclass
class MergeReport:
    max_abs_logit_diff: float
    tolerance: float  # what rounding in the merge's dtype explains (logit_tolerance)
    merged_model: object
    reference_model: object
    tokenizer: object


def merge_and_check(model: str | ModelSpec | Profile, adapter_dir: str | Path, texts: list[str],
                    quantization: str = "none", precision: Precision | None = None) -> MergeReport:
    """Attach the adapter to a fresh load of the base, merge it, and compare with the unmerged model.

    With quantization "none" (the right way) the base is reloaded in float and
    the difference is float rounding only. With "nf4" or "int8" the update is
    folded into quantised weights and quantised again. The unmerged reference is
    a second, separate load in the same quantisation.
    """
    tokenizer = load_tokenizer(model)
    reference = load_adapter_model(model, adapter_dir, quantization, precision)
    merged = merge_adapter(load_adapter_model(model, adapter_dir, quantization, precision))
    return MergeReport(*merge_difference(reference, merged, tokenizer, texts), merged, reference, tokenizer)


def merge_difference(reference, merged, tokenizer, texts: list[str]) -> tuple[float, float]:
    """(largest |logit difference| between an unmerged and a merged model, what rounding in the merged
    model's dtype explains: `logit_tolerance`)."""
    scale = max(float(x.abs().max()) for x in _logits(reference, tokenizer, texts))
    dtype = merged.get_input_embeddings().weight.dtype
    return max_logit_difference(reference, merged, tokenizer, texts), logit_tolerance(dtype, scale)


# --------------------------------------------------------------------------- the QLoRA merge: into the base training saw
@torch.no_grad()
def dequantised_base(model: str | ModelSpec | Profile, quantization: str = "nf4", precision: Precision | None = None):
    """The base as a quantised training run saw it, in float: a float load whose quantised layers hold
    the dequantised values of a `quantization` load (bitsandbytes' own dequantisation, in the
    compute dtype). Layers the quantised load keeps in float (embeddings, norms, lm_head) are the
    float load's own, which are the same weights.
    """
    import bitsandbytes as bnb

    if quantization != "nf4":
        raise CourseError(f"dequantised_base takes quantization 'nf4', not {quantization!r}: an 8-bit layer also "
                          "quantises its inputs, so no float weight computes what it does.")
    precision = precision_of(model, precision)
    plain = load_model(model, "none", precision)
    quantised = dict(load_model(model, quantization, precision).named_modules())
    replaced = 0
    for name, module in plain.named_modules():
        q = quantised.get(name)
        if isinstance(q, bnb.nn.Linear4bit):
            weight = dequantised_weight(q)
            if weight is None:
                raise CourseError(f"Layer {name} was repacked for bitsandbytes' bf16 kernel before it could be read: "
                                  "dequantise a freshly loaded model.")
            module.weight.data = weight.to(device=module.weight.device, dtype=module.weight.dtype)
            replaced += 1
    if replaced == 0:
        raise CourseError("The 4-bit load of this model has no 4-bit layer to dequantise.")
    return plain.eval()


def merge_dequantised(model: str | ModelSpec | Profile, adapter_dir: str | Path, precision: Precision | None = None):
    """The standard QLoRA merge: the NF4 base dequantised to float (`dequantised_base`), the adapter
    attached and merged there. The merged model computes what the adapter on the 4-bit base did,
    up to rounding in the float dtype; returns a plain transformers model."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise CourseError(f"No adapter in {adapter_dir}: train the experiment first (python -m lora_course train ...).")
    precision = precision_of(model, precision)
    peft_model = PeftModel.from_pretrained(dequantised_base(model, "nf4", precision), str(adapter_dir))
    cast_adapter(peft_model, precision.adapter)
    return merge_adapter(peft_model.eval())


# --------------------------------------------------------------------------- what a 4-bit merge loses
def float_adapted_layers(peft_model) -> list[str]:
    """Names (last part) of the adapted layers whose base weight is not 4-bit, e.g. a tied lm_head.

    A merge into the 4-bit model adds their updates to a float weight, exactly.
    """
    import bitsandbytes as bnb

    return sorted({name.rsplit(".", 1)[-1] for name, module in peft_model.named_modules()
                   if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")
                   and not isinstance(module.base_layer, bnb.nn.Linear4bit)})


@torch.no_grad()
def nf4_rounding(peft_model) -> dict[str, float]:
    """For every adapter on a 4-bit layer: how the update compares with the 4-bit grid it is merged into.

    Returns medians over all adapted weights of |dW| (the update, scaling * B A),
    |W| (the dequantised base weight) and the NF4 step (gap to the nearest other
    level, times the block's absmax), and the share of weights whose 4-bit code
    is the same after merging as after re-quantising W alone: the share of the update rounded away.
    """
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    deltas, weights, steps, unchanged, count = [], [], [], 0, 0
    for module in peft_model.modules():
        base = getattr(module, "base_layer", None)
        if not isinstance(base, bnb.nn.Linear4bit) or not hasattr(module, "get_delta_weight"):
            continue
        state = base.weight.quant_state
        w = F.dequantize_4bit(base.weight.data, state).float()
        dw = module.get_delta_weight("default").float()

        def codes(x):
            """The 4-bit level index of every weight, as a merge into NF4 would store it."""
            packed, _ = F.quantize_4bit(x.to(state.dtype), blocksize=state.blocksize,
                                        compress_statistics=state.nested, quant_type=state.quant_type)
            packed = packed.flatten()
            return torch.stack([packed >> 4, packed & 0xF], dim=-1).flatten()

        # Re-quantising recomputes the block scales, so compare with a bare round trip of W itself.
        unchanged += int((codes(w + dw) == codes(w)).sum())
        count += w.numel()
        levels = F.get_4bit_type(state.quant_type, device=w.device).float().sort().values
        gap = levels[1:] - levels[:-1]
        inf = levels.new_tensor([float("inf")])
        nearest_gap = torch.minimum(torch.cat([gap, inf]), torch.cat([inf, gap]))  # per level
        blocks = w.reshape(-1, state.blocksize)[::13]  # a sample of blocks keeps this small for 3B weights
        absmax = blocks.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        code = ((blocks / absmax).unsqueeze(-1) - levels).abs().argmin(-1)
        steps.append((nearest_gap[code] * absmax).flatten().cpu())
        deltas.append(dw.abs().flatten()[::13].cpu())
        weights.append(w.abs().flatten()[::13].cpu())
    if count == 0:
        raise CourseError("No adapter sits on a 4-bit layer here: nf4_rounding needs a LoRA model on an NF4 base.")
    return {"median_abs_update": float(torch.cat(deltas).median()), "median_abs_weight": float(torch.cat(weights).median()),
            "median_nf4_step": float(torch.cat(steps).median()), "unchanged_share": unchanged / count}


def zero_update(peft_model) -> None:
    """Set every lora_B to zero: the adapter then adds nothing, and a merge is a bare quantisation round trip."""
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.zeros_(p)


# --------------------------------------------------------------------------- saving
MERGED_FIX = "give --out a new or empty folder (an earlier merged model there is replaced)"


def check_merged_out(out_dir: str | Path) -> None:
    """Refuse, before any model loads, an output folder that holds anything but an earlier merged model."""
    check_replaceable(out_dir, "merged", MERGED_FIX)


def save_merged(merged_model, tokenizer, out_dir: str | Path) -> Path:
    """Save a merged model as a plain checkpoint that loads without PEFT.

    `out_dir` must be new, empty or an earlier merged model (which is replaced); files are
    written with the process's umask, so a shared folder stays readable by others.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, "merged", MERGED_FIX) as tmp, no_progress_bar():
        merged_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def load_merged(folder: str | Path, precision: Precision | None = None):
    """A saved merged model, loaded as a plain transformers model (no PEFT involved), in the dtype
    it was saved in; with `precision`, straight onto its device (a 3B model is 6.9 GB in bf16:
    a CPU copy on the way would not fit beside the others in Colab's RAM)."""
    kwargs = {"dtype": "auto"}
    if precision is not None:
        kwargs["device_map"] = device_map(precision)
    with no_progress_bar():
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()


# --------------------------------------------------------------------------- many adapters, one base
def load_adapters(model: str | ModelSpec | Profile, adapters: dict[str, str | Path], quantization: str = "none",
                  precision: Precision | None = None):
    """One base model carrying several named adapters (none merged)."""
    names = list(adapters)
    for name, folder in adapters.items():
        if not (Path(folder) / "adapter_config.json").exists():
            raise CourseError(f"No adapter in {folder} for {name!r}: train that experiment first.")
    precision = precision_of(model, precision)
    base = load_model(model, quantization, precision)
    multi = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        multi.load_adapter(str(adapters[name]), adapter_name=name)
    cast_adapter(multi, precision.adapter)
    multi.eval()
    return multi


@torch.no_grad()
def generate_mixed(multi_model, tokenizer, prompts: list[str], adapter_names: list[str], max_new_tokens: int = 64) -> list[str]:
    """One batch where row i uses adapter `adapter_names[i]` ("__base__" for no adapter)."""
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


# --------------------------------------------------------------------------- latency
def measure_serving_latency(profile: Profile, adapter_dir: str | Path, prompts: list[str], new_tokens: int = 32,
                            repeats: int = 5) -> LatencyTable:
    """Generation latency of the base, the base with the adapter unmerged, and the merged model.

    All three in float on the profile's device, one at a time (one model in
    memory), the same prompts and exactly `new_tokens` new tokens each (see
    `generate.time_generation`). The base is timed first and again last, and
    its row pools both: a machine whose speed drifts during the measurement
    widens the base's spread instead of favouring whichever model ran first.
    """
    tokenizer = load_tokenizer(profile)
    makers = {
        "base": lambda: load_model(profile, "none"),
        "unmerged": lambda: load_adapter_model(profile, adapter_dir, "none"),
        "merged": lambda: merge_adapter(load_adapter_model(profile, adapter_dir, "none")),
    }
    times: dict[str, list[float]] = {key: [] for key in makers}
    for key in ("base", "unmerged", "merged", "base"):
        model = makers[key]()
        times[key] += time_generation(model, tokenizer, prompts, new_tokens, repeats)
        del model
    return LatencyTable(**{key: LatencyRow.from_times(t, new_tokens, len(prompts)) for key, t in times.items()})
