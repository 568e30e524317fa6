"""QLoRA's memory arithmetic, checked against the shapes by hand, and the measured weight footprints."""

from __future__ import annotations

import pytest

from lora_course.errors import CourseError
from lora_course.memory import (
    fp32_share_ideal,
    in_units,
    nf4_bits_per_weight,
    shapes,
    sharded,
    size_text,
    training_memory,
    weights_footprint,
)
from lora_course.presets import PROFILES


def test_nf4_bits_per_weight():
    assert nf4_bits_per_weight(False) == 4.5  # 4 bits + a 32-bit absmax per 64 weights
    assert nf4_bits_per_weight(True) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))  # 4.127


def test_open_llama_shapes_by_hand():
    s = shapes("open_llama_3b_v2")
    per_block = 4 * 3200 * 3200 + 3 * 3200 * 8640  # q, k, v, o + gate, up, down
    assert s.linear_params == 26 * per_block
    assert s.other_params == 2 * 32000 * 3200 + 26 * 2 * 3200 + 3200  # embeddings, lm_head, norms
    assert s.linear_params + s.other_params == 3_426_473_600


def test_training_memory_components():
    m = training_memory("open_llama_3b_v2", r=8, target_modules="all-linear", batch=4, seq_len=256)
    s = shapes("open_llama_3b_v2")
    assert m["quantised linear weights"] == pytest.approx(s.linear_params * nf4_bits_per_weight() / 8)
    assert m["adapter (fp32)"] == 12_994_560 * 4 and m["AdamW state"] == 12_994_560 * 8
    assert m["activations"] == 26 * 4 * 256 * 3200 * 2 + 4 * 256 * (6 * 3200 + 3 * 8640) * 2
    assert m["logits and their gradient"] == 4 * 256 * 32000 * 4 * 2


def test_sharding_splits_what_each_strategy_splits():
    m = training_memory("llama-70b-shape")
    assert sharded(m, 8, "ddp").equals(m)
    fsdpq = sharded(m, 8, "fsdp")  # over a 4-bit base: FSDP-QLoRA, the 4-bit weights in a float storage dtype
    assert fsdpq["AdamW state"] == m["AdamW state"] / 8
    assert fsdpq["quantised linear weights"] == m["quantised linear weights"] / 8
    assert fsdpq["activations"] == m["activations"]  # every GPU keeps its own rows' activations
    assert fsdpq["logits and their gradient"] == m["logits and their gradient"]
    with pytest.raises(CourseError, match="fsdp-qlora"):
        sharded(m, 8, "fsdp-qlora")


def test_units_are_binary_and_printed_with_their_label():
    assert in_units(3 * 2**30) == 3.0 and in_units(5 * 2**20, "MiB") == 5.0
    assert size_text(1.5 * 2**30) == "1.5 GiB" and size_text(1234 * 2**20, "MiB", 0) == "1,234 MiB"
    with pytest.raises(CourseError, match="GB"):
        in_units(2**30, "GB")
    assert fp32_share_ideal(4) == 1 / 8 and fp32_share_ideal(8) == 1 / 4  # 4 bits: an eighth of fp32


def test_a_16bit_base_names_its_linear_weights_so():
    m = training_memory("open_llama_3b_v2", quantization="none")
    assert m["linear weights (16-bit)"] == shapes("open_llama_3b_v2").linear_params * 2
    assert "quantised linear weights" not in m


def test_weights_footprint_shrinks_with_the_storage_format():
    from lora_course.model import load_model

    smoke = PROFILES["smoke"]
    model = load_model("smoke-llama")
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # the rotary table, kept in fp32
    fp32 = weights_footprint(smoke, "none", "fp32")
    assert fp32 == 164_160 * 4 + buffers  # every weight in 4 bytes
    assert weights_footprint(smoke, "none", "bf16") == 164_160 * 2 + buffers
    nf4 = weights_footprint(smoke, "nf4")
    assert nf4 < weights_footprint(smoke, "int8") < fp32
