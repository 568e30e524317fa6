"""What the model is, what quantising the untuned base costs, and the QLoRA merge into the dequantised base."""

from __future__ import annotations

import pytest
import torch

from lora_course.errors import CourseError
from lora_course.presets import PROFILES, get_experiment


# --------------------------------------------------------------------------- model_facts
def test_the_cpu_model_is_an_instruction_tuned_model_stored_in_4_bit():
    from lora_course.model import model_facts

    facts = model_facts(PROFILES["cpu"])
    assert facts.name == "SmolLM2-135M-Instruct" and facts.file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert facts.parameters == 134_515_008 and facts.instruction_tuned
    assert (facts.weights, facts.stored_as, facts.stored_bits) == ("quantised", "Q4_1", 4)
    # The token embedding (49,152 x 576) is stored in Q8_0, the 61 norms (2 a layer and a final one) in F32,
    # every other weight in Q4_1.
    assert facts.stored_share == pytest.approx(1 - (49_152 * 576 + 61 * 576) / 134_515_008, rel=1e-9)
    assert facts.other_types == ("Q8_0", "F32")
    assert facts.scope() == "at 135M parameters, from weights already stored in 4-bit"
    assert "Q4_1" in facts.sentence() and "134,515,008" in facts.sentence() and "instruction-tuned" in facts.sentence()


def test_the_smoke_model_is_described_as_random_and_a_saved_float_checkpoint_as_float(tmp_path):
    from lora_course.model import load_model, load_tokenizer, model_facts

    smoke = model_facts(PROFILES["smoke"])
    assert smoke.weights == "random" and smoke.parameters == 164_160 and not smoke.instruction_tuned
    assert smoke.scope() == "at 0.2M parameters of random, untrained weights"
    # The same weights saved as a plain fp16 checkpoint: a float model, named by its folder.
    folder = tmp_path / "my-model"
    load_model(PROFILES["smoke"]).to(torch.float16).save_pretrained(folder)
    load_tokenizer(PROFILES["smoke"]).save_pretrained(folder)
    local = model_facts(str(folder))
    assert (local.name, local.weights, local.stored_as, local.stored_bits) == ("my-model", "float", "float16", 16)
    assert local.parameters == 164_160 and local.scope() == "at 0.2M parameters, from a float16 checkpoint"
    with pytest.raises(CourseError, match="shapes with no weights"):
        model_facts("llama-7b-shape")


# --------------------------------------------------------------------------- untuned penalties
@pytest.fixture(scope="module")
def smoke_rows(smoke_tokenizer):
    from lora_course.data import prepare_data

    profile = PROFILES["smoke"]
    return profile, prepare_data(profile.data, smoke_tokenizer, profile.train.max_length).test


def test_untuned_losses_are_paired_and_kept(smoke_rows, tmp_path, monkeypatch):
    from lora_course import evaluate as evaluate_module
    from lora_course.evaluate import untuned_losses
    from lora_course.evidence import describe_penalty, nats, penalty, penalty_table
    from lora_course.results import Results

    profile, test = smoke_rows
    results = Results(tmp_path, profile.name)
    evals = untuned_losses(profile, test, results)
    assert set(evals) == {"none", "int8", "nf4"}
    assert all(len(e.rows("response_loss")) == len(test) for e in evals.values())
    # The random smoke model is barely touched by int8, visibly by NF4.
    losses = {q: e.metric("response_loss") for q, e in evals.items()}
    assert abs(losses["int8"] - losses["none"]) < abs(losses["nf4"] - losses["none"])
    d = penalty(evals["none"], evals["nf4"])
    per_row = [q - f for f, q in zip(evals["none"].rows("response_loss"), evals["nf4"].rows("response_loss"))]
    assert d.mean == pytest.approx(sum(per_row) / len(per_row)) and d.n == len(test)
    table = penalty_table(evals)
    assert list(table.index) == ["int8", "nf4"]
    assert table.loc["nf4", "penalty (nats)"] == pytest.approx(d.mean, abs=1e-4)
    assert table.loc["nf4", "reference's"] == pytest.approx(losses["none"], abs=1e-4)
    assert table.loc["nf4", "rows worse"] == sum(x > 0 for x in per_row)
    assert describe_penalty(d).startswith(nats(d.mean)) and f"of {len(test)} rows" in describe_penalty(d)
    assert (nats(0.2634), nats(-0.00012)) == ("+0.263", "-1.2e-04")

    # Kept: a second call loads no model at all.
    def no_loading(*args, **kwargs):
        raise AssertionError("a kept measurement loaded a model")

    monkeypatch.setattr(evaluate_module, "load_model", no_loading)
    again = untuned_losses(profile, test, results)
    assert {q: e.metric("response_loss") for q, e in again.items()} == losses
    # An evaluation passed in is used as it is, not measured.
    assert untuned_losses(profile, test, results, ("nf4",), known={"nf4": evals["none"]})["nf4"] is evals["none"]


# --------------------------------------------------------------------------- the QLoRA merge
@pytest.fixture(scope="module")
def nf4_adapter_dir(tmp_path_factory):
    """An adapter on every linear layer of the NF4 smoke model, B drawn at random so that it changes the model."""
    from lora_course.lora import attach_lora
    from lora_course.model import load_model
    from lora_course.precision import for_profile

    profile = PROFILES["smoke"]
    precision = for_profile(profile)
    torch.manual_seed(0)
    model = attach_lora(load_model(profile, "nf4", precision), get_experiment("qlora-r8-all"), precision)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def test_merging_into_the_dequantised_base_gives_back_the_trained_model(nf4_adapter_dir, smoke_tokenizer):
    from lora_course.merge import load_adapter_model, max_logit_difference, merge_and_check, merge_dequantised

    profile = PROFILES["smoke"]
    texts = ["### Instruction:\nDescribe a lamp.\n\n### Response:\nA lamp", "The quick brown fox jumps"]
    trained = load_adapter_model(profile, nf4_adapter_dir, "nf4")
    merged = merge_dequantised(profile, nf4_adapter_dir)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())
    qlora_merge = max_logit_difference(trained, merged, smoke_tokenizer, texts)
    assert qlora_merge < 1e-4  # float rounding only
    # A float reload of the original weights is another model: NF4 rounded those weights in training.
    float_merge = max_logit_difference(trained, merge_and_check(profile, nf4_adapter_dir, texts).merged_model,
                                       smoke_tokenizer, texts)
    assert float_merge > 100 * max(qlora_merge, 1e-7)


def test_dequantised_base_refuses_int8():
    from lora_course.merge import dequantised_base

    with pytest.raises(CourseError, match="8-bit layer also quantises its inputs"):
        dequantised_base(PROFILES["smoke"], "int8")
