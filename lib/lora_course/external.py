"""A reader's own model: a local folder written by `save_pretrained`, or a Hugging Face hub id.

    external_spec(name)        a ModelSpec for a folder or an "owner/name" hub id (registered names come first)
    causal_lm_config(spec)     its transformers config, checked to have a causal-LM head

The registered models (`config.MODELS`) stay shortcuts; anything else that names
a folder or a hub id works wherever the library takes a model. Their shapes come
from their own config.json, so counting parameters needs no weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .config import ModelSpec
from .errors import CourseError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def check_causal_lm(model_type: str, where: str) -> None:
    """One sentence when transformers has no causal-LM head for `model_type` (e.g. BERT, T5's encoder)."""
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
        from .config import MODELS, RANDOM_SUFFIX

        raise CourseError(
            f"Unknown model {name!r}: it is neither a folder here nor a hub id (owner/name); choose a folder, a hub id, "
            f"or one of {', '.join(MODELS)} (or <name>{RANDOM_SUFFIX})."
        )
    return ModelSpec(name=name, source="hub", architecture={}, hub_id=name, description=f"{name} from the Hugging Face hub")


def causal_lm_config(spec: ModelSpec):
    """The transformers config of a folder or hub model, checked to have a causal-LM head."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(spec.hub_id)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CourseError(f"Could not read the config of model {spec.hub_id} ({first}): check the id, "
                          "the network, or use a local folder.") from None
    check_causal_lm(config.model_type, spec.hub_id)
    return config


def write_tiny_checkpoint(kind: str, out, seed: int = 0) -> Path:
    """Save a tiny random causal LM of architecture `kind` and a small BPE tokenizer to the folder `out`.

    The reader's-own-model path end to end without a download: the folder is
    exactly what `save_pretrained` writes for a real model. The tokenizer is the
    smoke model's (trained in-process on the course's sentences), with <pad>,
    <s> and </s> as ids 0, 1 and 2, as the tiny configs say.
    """
    from .model import _smoke_corpus, _train_tokenizer, no_progress_bar
    from .targets import TINY_ARCHITECTURES, tiny_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(_smoke_corpus(), TINY_ARCHITECTURES[kind]["vocab_size"], out)
    with no_progress_bar():  # a bar for writing a 1 MB file is noise
        tiny_model(kind, device="cpu", seed=seed).save_pretrained(out)
    return out


# --------------------------------------------------------------------------- the book's end-to-end example
def alpaca_from_sample(n_rows: int | None = None):
    """The course's sample rewritten as Alpaca rows: the post's instruction, no input, the description as output."""
    import pandas as pd

    from .data import build_instruction, load_table

    sample = load_table("sample")
    if n_rows is not None:
        sample = sample.head(n_rows)
    return pd.DataFrame({
        "instruction": [build_instruction(p, c) for p, c in zip(sample["product"], sample["category"])],
        "input": "",
        "output": sample["description"],
    })


def your_model_inputs(folder, kind: str = "qwen2", n_rows: int | None = None) -> tuple[Path, Path]:
    """A tiny `kind` checkpoint and an Alpaca JSONL file of the sample under `folder`: (model folder, data file).

    The checkpoint is written once; the data file is rewritten each time (it is small).
    """
    folder = Path(folder)
    model_dir = folder / f"tiny-{kind}"
    if not (model_dir / "config.json").exists():
        write_tiny_checkpoint(kind, model_dir)
    data_file = folder / "alpaca-sample.jsonl"
    alpaca_from_sample(n_rows).to_json(data_file, orient="records", lines=True, force_ascii=False)
    return model_dir, data_file


def with_model_and_data(profile, model: str, source: str | None = None, columns: dict[str, str] | None = None,
                        **data):
    """The profile with its model (a folder, a hub id or a name) and, if given, its data replaced (checked now)."""
    import dataclasses

    from .config import get_model_spec, get_profile

    profile = get_profile(profile) if isinstance(profile, str) else profile
    changes = dict(data, **({"source": source} if source is not None else {}),
                   **({"columns": columns} if columns is not None else {}))
    settings = dataclasses.replace(profile.data, **changes) if changes else profile.data
    return dataclasses.replace(profile, model=get_model_spec(model).name, data=settings)
