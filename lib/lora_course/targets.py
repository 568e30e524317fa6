"""Target sets by meaning: which matrices "attention q and v", "MLP", ... are in a given architecture.

The post adapts `q_proj` and `v_proj`, names that exist only in Llama-family
models. Other architectures name (and sometimes fuse) the same matrices
differently:

    architecture          q, k, v                  attention output   MLP
    Llama, Mistral, ...   q_proj, k_proj, v_proj   o_proj             gate_proj, up_proj, down_proj
    Phi-3                 qkv_proj (fused)         o_proj             gate_up_proj (fused), down_proj
    GPT-NeoX, Falcon      query_key_value (fused)  dense              dense_h_to_4h, dense_4h_to_h
    GPT-2                 c_attn (fused)           attn.c_proj        c_fc, mlp.c_proj

A target set is a name with a meaning:

    attention-qv          the query and value projections only (the post's experiment 1)
    attention             every attention matrix: q, k, v (or the fused qkv) and the output
    mlp                   every MLP matrix
    all-linear            every linear layer, the output head included (as in the post)
    all-linear-no-head    every linear layer but the output head

Where q, k and v are one fused matrix, "attention-qv" is NOT AVAILABLE: adapting
the whole fused matrix would also adapt k, so it would be a different experiment
under the same name. Asking for it there is a `CourseError` that names the fused
matrix and points to "attention". Explicit module names are still accepted
everywhere, so a reader who wants the fused matrix alone asks for it by name.

Names are given to PEFT as suffixes of the full module names ("attn.c_proj"
matches "transformer.h.0.attn.c_proj" but not "transformer.h.0.mlp.c_proj"),
which is how PEFT matches a list of target modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import CourseError

# torch, transformers and pandas are imported in the functions that use them (and torch here for the
# annotations only): the command line imports this module at start, for TARGET_SETS in --help.
if TYPE_CHECKING:
    from torch import nn

TARGET_SETS: dict[str, str] = {
    "attention-qv": "the query and value projections only (the post's experiment 1)",
    "attention": "every attention matrix: q, k, v (or the fused qkv) and the attention output",
    "mlp": "every MLP matrix",
    "all-linear": "every linear layer, the output head included (as in the post)",
    "all-linear-no-head": "every linear layer but the output head",
}

# The post's explicit pair: on a model that has neither name it means "attention-qv".
POST_QV: tuple[str, ...] = ("q_proj", "v_proj")

# Class names of the layers LoRA can adapt: float, bitsandbytes 8-bit and 4-bit
# linear layers, and GPT-2's Conv1D (a linear layer that stores W as in x out).
LINEAR_CLASS_NAMES = {"Linear", "Linear8bitLt", "Linear4bit", "Conv1D"}


@dataclass(frozen=True)
class Layout:
    """Where one architecture keeps its projections (suffixes of module names)."""

    family: str
    q: str | None = None  # separate projections: q, k, v
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # one fused matrix instead
    o: str = "o_proj"
    mlp: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")

    @property
    def fused(self) -> bool:
        return self.qkv is not None

    def attention(self) -> list[str]:
        return [self.qkv, self.o] if self.fused else [self.q, self.k, self.v, self.o]


LLAMA_LAYOUT = Layout("Llama-style", q="q_proj", k="k_proj", v="v_proj")

# Layouts by the config's `model_type`.
LAYOUTS: dict[str, Layout] = {
    **{t: LLAMA_LAYOUT for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2",
                                 "granite", "stablelm", "smollm3")},
    "phi": Layout("Phi", q="q_proj", k="k_proj", v="v_proj", o="dense", mlp=("fc1", "fc2")),
    "phi3": Layout("Phi-3", qkv="qkv_proj", mlp=("gate_up_proj", "down_proj")),
    "gpt_neox": Layout("GPT-NeoX", qkv="query_key_value", o="dense", mlp=("dense_h_to_4h", "dense_4h_to_h")),
    "falcon": Layout("Falcon", qkv="query_key_value", o="dense", mlp=("dense_h_to_4h", "dense_4h_to_h")),
    "gpt2": Layout("GPT-2", qkv="c_attn", o="attn.c_proj", mlp=("c_fc", "mlp.c_proj")),
}


# --------------------------------------------------------------------------- linear layers
def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a linear layer; GPT-2's Conv1D stores its weight as in x out."""
    if type(module).__name__ == "Conv1D":
        n_in, n_out = module.weight.shape
        return int(n_in), int(n_out)
    return int(module.in_features), int(module.out_features)


def linear_layers(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every adaptable linear layer by full module name: (in, out). LoRA's own layers are left out."""
    layers = {}
    for name, module in model.named_modules():
        if type(module).__name__ in LINEAR_CLASS_NAMES and hasattr(module, "weight") and "lora_" not in name:
            if name.endswith(".base_layer"):  # inside a PEFT wrapper: the wrapper's name is the target
                name = name[: -len(".base_layer")]
            layers[name] = linear_shape(module)
    return layers


def matches(full_name: str, targets) -> bool:
    """PEFT's rule: a target matches a module whose full name is it or ends with "." + it."""
    return any(full_name == t or full_name.endswith("." + t) for t in targets)


def head_name(model: nn.Module) -> str | None:
    """Leaf name of the output head (lm_head, embed_out, ...), or None when the model has no linear head."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    for name, module in model.named_modules():
        if module is head:
            return name.split(".")[-1]
    return None


def leaf_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the linear layers, sorted (what an error lists for the reader)."""
    return sorted({n.split(".")[-1] for n in linear_layers(model)})


# --------------------------------------------------------------------------- layouts
def model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", "") or ""


def layout_of(model: nn.Module) -> Layout:
    """The model's layout by its config's model_type, else by its own module names (Llama-style).

    A layout is only returned when the model really has those modules, so a
    registered model_type whose names changed upstream fails here, with the names
    it does have, rather than inside PEFT.
    """
    names = list(linear_layers(model))
    kind = model_type(model)
    layout = LAYOUTS.get(kind)
    if layout is None and all(any(matches(n, [s]) for n in names) for s in LLAMA_LAYOUT.attention()):
        layout = LLAMA_LAYOUT
    if layout is None:
        raise CourseError(
            f"The course does not know where architecture {kind or type(model).__name__!r} keeps its attention and "
            f"MLP matrices: name the target modules explicitly (its linear layers are {', '.join(leaf_names(model))})."
        )
    missing = [s for s in layout.attention() + list(layout.mlp) if not any(matches(n, [s]) for n in names)]
    if missing:
        raise CourseError(
            f"This {kind} model lacks the {layout.family} module(s) {', '.join(missing)}: name the target modules "
            f"explicitly (its linear layers are {', '.join(leaf_names(model))})."
        )
    return layout


def resolve_target_set(model: nn.Module, target_set: str) -> list[str]:
    """The module-name suffixes (sorted) that `target_set` means in this model."""
    if target_set not in TARGET_SETS:
        raise CourseError(f"Unknown target set {target_set!r}: use one of {', '.join(TARGET_SETS)}, or module names.")
    if target_set in ("all-linear", "all-linear-no-head"):
        names = leaf_names(model)
        if not names:
            raise CourseError("No linear layers found in this model: is it a causal LM with linear projections?")
        head = head_name(model)
        if target_set == "all-linear-no-head" and head is not None:
            # A leaf name shared by the head and a body layer cannot drop only the head; none of the layouts has one.
            names = [n for n in names if n != head]
        return names
    layout = layout_of(model)
    if target_set == "attention-qv":
        if layout.fused:
            raise CourseError(
                f"Target set 'attention-qv' is not available for {layout.family} models: q, k and v are one fused "
                f"matrix ({layout.qkv}), so adapting q and v alone is impossible; use 'attention' (or name "
                f"{layout.qkv!r} explicitly to adapt the whole fused matrix)."
            )
        return sorted([layout.q, layout.v])
    if target_set == "attention":
        return sorted(layout.attention())
    return sorted(layout.mlp)


def resolve_targets(model: nn.Module, targets) -> list[str]:
    """A target set's name, the post's ("q_proj", "v_proj"), or explicit names, checked against the model."""
    if isinstance(targets, str):
        if targets in TARGET_SETS:
            return resolve_target_set(model, targets)
        targets = [targets]
    wanted = list(targets)
    names = list(linear_layers(model))
    if tuple(wanted) == POST_QV and not any(matches(n, POST_QV) for n in names):
        return resolve_target_set(model, "attention-qv")
    missing = [t for t in wanted if not any(matches(n, [t]) for n in names)]
    if missing:
        raise CourseError(
            f"Target module(s) {', '.join(missing)} not found in the model: its linear layers are "
            f"{', '.join(leaf_names(model))} (or use a target set: {', '.join(TARGET_SETS)})."
        )
    return wanted


def target_table(models: dict[str, nn.Module]):
    """For each architecture, the module names each target set resolves to: a DataFrame (architecture x set)."""
    import pandas as pd

    rows = {}
    for label, model in models.items():
        row = {}
        for target_set in TARGET_SETS:
            try:
                row[target_set] = ", ".join(resolve_target_set(model, target_set))
            except CourseError:
                row[target_set] = "not available"
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- tiny models
# Tiny widths that bitsandbytes' CPU 4-bit kernel accepts: every input width a
# multiple of 64 (hidden 64, MLP 128) and every output width a multiple of 32.
_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
TINY_ARCHITECTURES: dict[str, dict] = {
    "llama": dict(_TINY, num_key_value_heads=2),
    "qwen2": dict(_TINY, num_key_value_heads=2),
    "mistral": dict(_TINY, num_key_value_heads=2, sliding_window=None),
    "gemma": dict(_TINY, num_key_value_heads=2, head_dim=16),
    "phi3": dict(_TINY, num_key_value_heads=4),
    "gpt_neox": dict(_TINY),
    "gpt2": dict(vocab_size=512, n_embd=64, n_inner=128, n_layer=2, n_head=4, n_positions=256,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2),
}


def tiny_config(kind: str):
    """A transformers config of architecture `kind` with tiny widths (for tests and the book's table)."""
    from transformers import AutoConfig

    if kind not in TINY_ARCHITECTURES:
        raise CourseError(f"No tiny config for architecture {kind!r}: use one of {', '.join(TINY_ARCHITECTURES)}.")
    return AutoConfig.for_model(kind, **TINY_ARCHITECTURES[kind])


def tiny_model(kind: str, device: str = "meta", seed: int = 0):
    """A causal LM of architecture `kind` with tiny widths: shapes only on "meta", random weights on "cpu"."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(kind)
    if device == "meta":
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return AutoModelForCausalLM.from_config(config)
    finally:
        torch.random.set_rng_state(state)
