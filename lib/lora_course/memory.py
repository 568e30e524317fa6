"""Memory: what QLoRA training holds, by arithmetic from a model's shapes, and weights measured as loaded.

    nf4_bits_per_weight(double_quant)      4 bits plus the block constants
    training_memory(model, r, targets, ...) bytes per component for one GPU, as a table
    sharded(table, gpus, strategy)          what DDP and FSDP (FSDP-QLoRA over a 4-bit base) leave on each GPU
    weights_footprint(profile, quantization, dtype)   bytes of the weights as loaded, measured
    nf4_round(weight), int8_round_rows(weight)   a whole weight as NF4 and as LLM.int8 store it, restored
    outlier_columns(model, tokenizer, texts)     LLM.int8's outlier feature columns on a small batch
    in_units(n_bytes, unit), size_text(n_bytes, unit)  bytes as MiB or GiB (2**20, 2**30), and with their label

The arithmetic, in bytes (b = micro-batch rows, s = sequence length, h = hidden
size, i = MLP width, L = layers, V = vocabulary):
    quantised linear weights    params x bits_per_weight / 8
    other weights (embeddings, lm_head, norms)   params x 4 (fp32 after prepare_model_for_kbit_training)
    adapter, its gradient       trainable x 4 each (fp32)
    AdamW state                 trainable x 8 (two fp32 moments; paged optimizers move them to the
                                CPU under pressure, they do not shrink them)
    activations, checkpointed   L x b x s x h x 2 (each block's input, 16-bit), plus one block
                                recomputed at a time: b x s x (6 h + 3 i) x 2
    logits                      b x s x V x 4 x 2 (fp32 logits and their gradient)
Attention scores are left out (SDPA kernels do not store them); allocator
overhead and the CUDA context (a few hundred MB) come on top.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from .errors import CourseError
from .lora import count_lora_parameters
from .model import architecture_config, count_parameters, load_model, meta_model
from .precision import resolve_precision
from .settings import LLM_INT8_THRESHOLD

NF4_BLOCK = 64  # weights per absmax constant
DOUBLE_QUANT_BLOCK = 256  # absmax constants per second-level constant
UNITS = {"MiB": 2**20, "GiB": 2**30}  # binary units: what memory tools and GPU specifications count in


def in_units(n_bytes, unit: str = "GiB"):
    """Bytes (a number, a Series or a DataFrame) in MiB or GiB."""
    if unit not in UNITS:
        raise CourseError(f"Unknown unit {unit!r}: use {' or '.join(UNITS)}.")
    return n_bytes / UNITS[unit]


def size_text(n_bytes: float, unit: str = "GiB", digits: int = 1) -> str:
    """Bytes as the page prints them, the number and its unit together ("10.6 GiB"), so a label cannot
    disagree with the division."""
    return f"{in_units(n_bytes, unit):,.{digits}f} {unit}"


def fp32_share_ideal(bits_per_weight: float) -> float:
    """The footprint of weights stored in `bits_per_weight` against fp32's 32 bits, if every weight were
    stored so (an eighth for 4 bits, a quarter for 8)."""
    return bits_per_weight / 32


def nf4_bits_per_weight(double_quant: bool = True) -> float:
    """4 bits per weight plus the block constants: 32 bits per 64 weights, or with double
    quantisation 8 bits per 64 weights and 32 bits per 256 blocks of them."""
    if double_quant:
        return 4 + 8 / NF4_BLOCK + 32 / (NF4_BLOCK * DOUBLE_QUANT_BLOCK)
    return 4 + 32 / NF4_BLOCK


def nf4_levels():
    """NF4's 16 values in [-1, 1], sorted, as fp32 on the CPU (bitsandbytes' own table)."""
    import bitsandbytes.functional as bnbf

    return bnbf.get_4bit_type("nf4", device="cpu").float().sort().values


def nf4_round_block(block):
    """One block of weights rounded as NF4 stores it: each weight / the block's absmax, to the
    nearest level, times absmax. Works in fp32 on the CPU, wherever the weights were loaded
    (a gpu profile's weights are bf16 on cuda:0; the levels are on the CPU). Returns
    (restored block, absmax), both fp32 on the CPU."""
    block = block.detach().float().cpu()
    levels = nf4_levels()
    absmax = block.abs().max()
    codes = ((block / absmax).unsqueeze(-1) - levels).abs().argmin(-1)
    return levels[codes] * absmax, absmax


def nf4_round(weight):
    """A whole weight rounded as NF4 stores it (blocks of 64 consecutive values, each to the nearest
    of the 16 levels times its block's absmax), restored to fp32 on the CPU, in the weight's shape."""
    w = weight.detach().float().cpu()
    if w.numel() % NF4_BLOCK:
        raise CourseError(f"A weight of {w.numel()} values does not split into blocks of {NF4_BLOCK}: "
                          "pass a weight whose size is a multiple of 64.")
    blocks = w.reshape(-1, NF4_BLOCK)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    levels = nf4_levels()
    codes = ((blocks / absmax).unsqueeze(-1) - levels).abs().argmin(-1)
    return (levels[codes] * absmax).reshape(w.shape)


def nf4_merge(absmax: float, weight: float, update: float) -> dict[str, float]:
    """One weight of an NF4 block (scale `absmax`) given an `update`: the value the block stores, the
    value after merging the update into the block (re-rounded to the nearest level), the value kept
    when the update stays in the adapter, and the gap to the nearest other level."""
    levels = [float(v) * float(absmax) for v in nf4_levels()]
    stored = min(levels, key=lambda v: abs(v - weight))
    merged = min(levels, key=lambda v: abs(v - (stored + update)))
    gap = min(abs(v - stored) for v in levels if v != stored)
    return {"stored": stored, "merged": merged, "kept": stored + update, "gap": gap}


def int8_round_rows(weight):
    """A weight rounded as LLM.int8 stores it: each row (one output) scaled by 127 / its absmax,
    rounded to an integer in [-127, 127], scaled back. fp32 on the CPU, in the weight's shape."""
    w = weight.detach().float().cpu()
    absmax = w.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    return (w * 127 / absmax).round().clamp(-127, 127) * absmax / 127


def outlier_columns(model, tokenizer, texts, threshold: float = LLM_INT8_THRESHOLD) -> pd.DataFrame:
    """LLM.int8's outlier features on a small batch: for every linear layer, the input columns (features)
    in which some token's value exceeds `threshold` in magnitude. Those columns are the ones its
    matmul keeps in 16-bit. One row per layer name: columns, outlier columns, their share, largest |x|."""
    if not texts:
        raise CourseError("outlier_columns got no texts: pass a few training texts.")
    seen: dict[str, list] = {}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1]).abs()
            col_max = x.amax(dim=0)
            if name in seen:
                seen[name] = torch.maximum(seen[name], col_max)
            else:
                seen[name] = col_max
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.split(".")[-1] != "lm_head"]
    try:
        with torch.no_grad():
            for text in texts:  # one at a time: no padding tokens among the activations
                batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=128)
                model(**{k: v.to(model.device) for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
    rows = [{"layer": n, "columns": int(c.numel()), "outlier columns": int((c > threshold).sum()),
             "largest |x|": float(c.max())} for n, c in seen.items()]
    table = pd.DataFrame(rows).set_index("layer")
    table["share"] = table["outlier columns"] / table["columns"]
    return table


@dataclass(frozen=True)
class Shapes:
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    linear_params: int  # weights of the blocks' linear layers (quantised by QLoRA)
    other_params: int  # embeddings, lm_head, norms (kept in float)


def shapes(model_name: str) -> Shapes:
    cfg = architecture_config(model_name)
    model = meta_model(model_name)
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and not n.endswith("lm_head"))
    total = count_parameters(model)
    return Shapes(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size, linear, total - linear)


def training_memory(model_name: str, r: int = 8, target_modules="all-linear", batch: int = 4, seq_len: int = 256,
                    activation_checkpointing: bool = True, quantization: str = "nf4") -> pd.Series:
    """Bytes per component of a LoRA run on one device, by the arithmetic in this module's docstring."""
    if quantization not in ("nf4", "int8", "none"):
        raise CourseError(f"Unknown quantization {quantization!r}: use nf4, int8 or none.")
    s = shapes(model_name)
    trainable = count_lora_parameters(meta_model(model_name), r, target_modules).trainable
    bits = {"nf4": nf4_bits_per_weight(True), "int8": 8 + 32 / 4096, "none": 16}[quantization]
    if activation_checkpointing:
        activations = s.layers * batch * seq_len * s.hidden * 2 + batch * seq_len * (6 * s.hidden + 3 * s.intermediate) * 2
    else:
        activations = s.layers * batch * seq_len * (6 * s.hidden + 3 * s.intermediate) * 2
    return pd.Series({
        "quantised linear weights" if quantization != "none" else "linear weights (16-bit)": s.linear_params * bits / 8,
        "other weights (fp32)": s.other_params * 4.0,
        "adapter (fp32)": trainable * 4.0,
        "adapter gradients": trainable * 4.0,
        "AdamW state": trainable * 8.0,
        "activations": float(activations),
        "logits and their gradient": batch * seq_len * s.vocab * 4.0 * 2,
    }, name=model_name)


STRATEGIES = ("ddp", "fsdp")
PER_GPU = ("activations", "logits and their gradient")  # each GPU's own rows, under every strategy


def sharded(memory: pd.Series, gpus: int, strategy: str) -> pd.Series:
    """Bytes per GPU under a data-parallel strategy, from `training_memory`'s table.

    ddp   every GPU holds a full copy of everything; each runs its own micro-batch
    fsdp  every weight, the adapter, its gradients and the optimizer state split across the GPUs;
          only activations and logits stay whole, per GPU. Over a float base this is plain FSDP.
          Over a 4-bit base it is FSDP-QLoRA, which launches only with the 4-bit weights packed in
          a float storage dtype (bnb_4bit_quant_storage) equal to the dtype the float weights are
          loaded in, since FSDP flattens a block's weights into one tensor of one float dtype;
          with bitsandbytes' default uint8 storage FSDP cannot wrap the model at all.
    A block's full weights are gathered while it computes; that transient is left out.
    """
    if strategy not in STRATEGIES:
        raise CourseError(f"Unknown strategy {strategy!r}: use {' or '.join(STRATEGIES)}.")
    per_gpu = memory.copy()
    if strategy == "fsdp":
        split = [k for k in per_gpu.index if k not in PER_GPU]
        per_gpu[split] = per_gpu[split] / gpus
    return per_gpu


def weights_footprint(profile, quantization: str, dtype: str = "fp32") -> int:
    """Bytes of a profile's model weights as loaded (transformers' get_memory_footprint), no compute.

    `dtype` is the float dtype of the unquantised weights; "bf16" here only
    stores them, it runs nothing.
    """
    settings = dataclasses.replace(profile.precision, compute_dtype=dtype)
    model = load_model(profile, quantization, resolve_precision(settings, profile.device))
    try:
        return int(model.get_memory_footprint())
    finally:
        del model
