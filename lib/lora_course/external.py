"""A reader's own model: a local folder written by `save_pretrained`, or a Hugging Face hub id.

    config.external_spec(name) a ModelSpec for a folder or an "owner/name" hub id (registered names come first)
    model.causal_lm_config(spec) its transformers config, checked to have a causal-LM head
    write_tiny_checkpoint(...) a tiny random model and tokenizer saved to a folder, as a reader's own would be

The registered models (`catalogue.MODELS`) stay shortcuts; anything else that names
a folder or a hub id works wherever the library takes a model. Their shapes come
from their own config.json, so counting parameters needs no weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from .catalogue import get_model_spec
from .data import build_instruction, load_table
from .model import _smoke_corpus, _train_tokenizer, no_progress_bar
from .presets import get_profile
from .targets import TINY_ARCHITECTURES, tiny_model


def write_tiny_checkpoint(kind: str, out, seed: int = 0) -> Path:
    """Save a tiny random causal LM of architecture `kind` and a small BPE tokenizer to the folder `out`.

    The reader's-own-model path end to end without a download: the folder is
    exactly what `save_pretrained` writes for a real model. The tokenizer is the
    smoke model's (trained in-process on the course's sentences), with <pad>,
    <s> and </s> as ids 0, 1 and 2, as the tiny configs say.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(_smoke_corpus(), TINY_ARCHITECTURES[kind]["vocab_size"], out)
    with no_progress_bar():  # a bar for writing a 1 MB file is noise
        tiny_model(kind, device="cpu", seed=seed).save_pretrained(out)
    return out


# --------------------------------------------------------------------------- the book's end-to-end example
def alpaca_from_sample(n_rows: int | None = None):
    """The course's sample rewritten as Alpaca rows: the post's instruction, no input, the description as output."""
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
    profile = get_profile(profile) if isinstance(profile, str) else profile
    changes = dict(data, **({"source": source} if source is not None else {}),
                   **({"columns": columns} if columns is not None else {}))
    settings = dataclasses.replace(profile.data, **changes) if changes else profile.data
    return dataclasses.replace(profile, model=get_model_spec(model).name, data=settings)
