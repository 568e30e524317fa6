"""Evaluation on a CPU dequantises the frozen 4-/8-bit weights once: same tokens, same losses, quantised model untouched."""

from __future__ import annotations

import pytest
import torch

from lora_course import evaluate as ev
from lora_course.data import RESPONSE_SUFFIX, prepare_data
from lora_course.generate import generate_detailed
from lora_course.lora import attach_lora
from lora_course.model import DequantisedLinear, dequantised, dequantised_weight, load_model, load_tokenizer
from lora_course.precision import for_profile
from lora_course.presets import get_experiment, get_profile

EXPERIMENT = {"nf4": "qlora-r8-all", "int8": "lora8bit-r8-all"}


def _quantised_layers(model) -> list:
    """bitsandbytes' own layers (PEFT's LoRA wrappers around them share their class names, not their classes)."""
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]


@pytest.fixture(scope="module")
def smoke():
    profile = get_profile("smoke")
    tok = load_tokenizer(profile)
    test = prepare_data(profile.data, tok, profile.train.max_length).test
    return profile, tok, test


def _adapted(profile, quantization: str):
    """The smoke model in `quantization` with an adapter on every linear layer whose B is not zero,
    so that the adapter changes what the model computes."""
    precision = for_profile(profile)
    torch.manual_seed(0)
    model = attach_lora(load_model(profile, quantization, precision), get_experiment(EXPERIMENT[quantization]), precision)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


def _evaluate(model, tok, profile, test):
    prompts, references = list(test["prompt"]), [d + RESPONSE_SUFFIX for d in test["description"]]
    loss = ev.response_loss(model, tok, prompts, references, max_length=profile.train.max_length)
    gens = generate_detailed(model, tok, prompts, 24, batch_size=len(prompts), dequantise=False)  # as it is
    return loss, [g.raw for g in gens]


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_dequantised_gives_the_same_tokens(smoke, quantization):
    profile, tok, test = smoke
    model = _adapted(profile, quantization)
    layers = _quantised_layers(model)
    assert len(layers) == 2 * 7  # 2 blocks x 7 projections (lm_head stays float)

    quant_loss, quant_raw = _evaluate(model, tok, profile, test)
    with dequantised(model, (quantization,)):
        assert _quantised_layers(model) == []
        dense = [m for m in model.modules() if isinstance(m, DequantisedLinear)]
        assert len(dense) == len(layers)
        assert all(m.weight.dtype == torch.float32 for m in dense)
        deq_loss, deq_raw = _evaluate(model, tok, profile, test)
    # The quantised layers are back, the very same objects.
    assert _quantised_layers(model) == layers

    assert deq_raw == quant_raw
    assert sum(len(r) for r in quant_raw) > 0
    assert deq_loss["row_tokens"] == quant_loss["row_tokens"]
    if quantization == "nf4":
        # bitsandbytes' CPU 4-bit matmul is itself "dequantise, then a float linear": float rounding only.
        assert deq_loss["row_losses"] == pytest.approx(quant_loss["row_losses"], rel=1e-6, abs=1e-7)
    else:
        # LLM.int8 also rounds the activations to 8 bits in eval mode: the float copy moves the losses by more
        # than float rounding, which is why evaluation leaves 8-bit layers as they are.
        diffs = [abs(a - b) for a, b in zip(deq_loss["row_losses"], quant_loss["row_losses"])]
        assert 1e-6 < max(diffs) < 1e-2


def test_dequantised_weights_are_what_the_layer_multiplies_by(smoke):
    profile, _, _ = smoke
    model = load_model(profile, "nf4", for_profile(profile))
    layer = _quantised_layers(model)[0]
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        expected = layer(x)
        weight = dequantised_weight(layer)
        assert weight.shape == (layer.out_features, layer.in_features)
        torch.testing.assert_close(x @ weight.T, expected, rtol=1e-5, atol=1e-6)


def test_evaluate_model_generates_on_the_dequantised_nf4_model(smoke, monkeypatch):
    profile, tok, test = smoke
    model = _adapted(profile, "nf4")
    seen = []
    real = generate_detailed

    def spy(m, *args, **kwargs):
        seen.append(len(_quantised_layers(m)))
        return real(m, *args, **kwargs)

    monkeypatch.setattr(ev, "generate_detailed", spy)
    ev.evaluate_model(model, tok, profile, test.select(range(2)), "nf4-check", kind="full")
    assert seen == [0]  # one generation pass, with no quantised layer left in it
    assert len(_quantised_layers(model)) == 2 * 7  # and the model handed back quantised

    int8 = _adapted(profile, "int8")
    ev.evaluate_model(int8, tok, profile, test.select(range(2)), "int8-check", kind="full")
    assert seen == [0, 2 * 7]  # 8-bit layers are evaluated as they are


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_a_static_cache_gives_the_same_tokens(smoke, quantization):
    """The held-out pass generates with a cache allocated once (`cache_implementation="static"`): the same
    greedy tokens as transformers' growing cache, for a padded batch of prompts of different lengths,
    and again after a longer generation has left a larger cache size on the model."""
    profile, tok, test = smoke
    model = _adapted(profile, quantization)
    prompts = list(test["prompt"])
    assert len({len(tok(p)["input_ids"]) for p in prompts}) > 1  # the batch is padded
    with dequantised(model, (quantization,)):
        growing = [g.raw for g in generate_detailed(model, tok, prompts, 24, batch_size=len(prompts))]
        static = [g.raw for g in generate_detailed(model, tok, prompts, 24, batch_size=len(prompts),
                                                   cache_implementation="static")]
        generate_detailed(model, tok, prompts, 40, batch_size=len(prompts), cache_implementation="static")
        after_longer = [g.raw for g in generate_detailed(model, tok, prompts, 24, batch_size=len(prompts),
                                                         cache_implementation="static")]
    assert sum(len(r) for r in growing) > 0
    assert static == growing and after_longer == growing


def test_the_held_out_pass_asks_for_a_static_cache(smoke, monkeypatch):
    profile, tok, test = smoke
    asked = []
    real = generate_detailed

    def spy(m, *args, **kwargs):
        asked.append(kwargs.get("cache_implementation"))
        return real(m, *args, **kwargs)

    monkeypatch.setattr(ev, "generate_detailed", spy)
    ev.evaluate_model(_adapted(profile, "nf4"), tok, profile, test.select(range(2)), "static-check", kind="full")
    # Not with 8-bit layers: their rounding of activations turned the cache's float rounding into other
    # tokens on the cpu profile (one 8-bit run's held-out answers changed).
    ev.evaluate_model(_adapted(profile, "int8"), tok, profile, test.select(range(2)), "int8-check", kind="full")
    assert asked == ["static", None]


def test_generation_on_a_cpu_dequantises_nf4_once_for_the_call(smoke, monkeypatch):
    """Every generation (chapter 2's baseline prompts too), not only evaluation's: the NF4 layers are float
    while `generate` runs, the tokens are the 4-bit model's own, and the model comes back 4-bit. 8-bit
    layers stay as they are (LLM.int8 rounds activations), and a timing asks for the model as it is."""
    profile, tok, test = smoke
    prompts = list(test["prompt"])
    for quantization, float_while_generating in (("nf4", True), ("int8", False)):
        model = _adapted(profile, quantization)
        layers = _quantised_layers(model)
        as_is = [g.raw for g in generate_detailed(model, tok, prompts, 24, batch_size=4, dequantise=False)]
        seen = []
        real = model.generate

        def spy(*args, real=real, model=model, **kwargs):
            seen.append(len(_quantised_layers(model)))
            return real(*args, **kwargs)

        monkeypatch.setattr(model, "generate", spy)
        default = [g.raw for g in generate_detailed(model, tok, prompts, 24, batch_size=4)]
        assert default == as_is and sum(len(r) for r in as_is) > 0
        assert seen == [0 if float_while_generating else len(layers)] * -(-len(prompts) // 4)
        assert _quantised_layers(model) == layers  # handed back as it came


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_the_shared_opening_scored_once_gives_the_same_losses(smoke, quantization, monkeypatch):
    """`response_loss` runs the tokens every row opens with (the prompt template's start) through the model
    once and goes on from their keys and values: the same row losses as whole rows, to float rounding,
    on a plain model and on an adapter over a 4-bit base."""
    profile, tok, test = smoke
    if quantization == "none":
        torch.manual_seed(0)
        model = load_model(profile, "none", for_profile(profile)).eval()
    else:
        model = _adapted(profile, quantization)
    prompts, references = list(test["prompt"]), [d + RESPONSE_SUFFIX for d in test["description"]]
    rows = ev.scored_rows(tok, prompts, references, profile.train.max_length)
    shared = ev.shared_prefix(model, rows)
    first = rows[0][0]
    assert 8 <= shared < min(n for _, n in rows)  # an opening, short of every prompt's last token
    assert all(ids[:shared] == first[:shared] for ids, _ in rows)
    assert any(ids[shared] != first[shared] for ids, _ in rows) or shared == min(n for _, n in rows) - 1

    shapes = []  # what the embedding layer is given: (rows, positions) per forward
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    try:
        once = ev.response_loss(model, tok, prompts, references, batch_size=3, max_length=profile.train.max_length)
        n_once = len(shapes)
        monkeypatch.setattr(ev, "shared_prefix", lambda *args, **kwargs: 0)
        whole = ev.response_loss(model, tok, prompts, references, batch_size=3, max_length=profile.train.max_length)
    finally:
        hook.remove()
    assert shapes[0] == (1, shared)  # the opening once, ...
    longest = max(len(ids) for ids, _ in rows)
    assert max(w for _, w in shapes[1:n_once]) == longest - shared  # ... then the rows without it
    assert max(w for _, w in shapes[n_once:]) == longest
    assert once["row_tokens"] == whole["row_tokens"]
    assert once["row_losses"] == pytest.approx(whole["row_losses"], abs=1e-5)


def test_no_shared_opening_when_rows_differ_from_the_start_or_layers_are_8_bit(smoke):
    profile, tok, test = smoke
    model = load_model(profile, "none", for_profile(profile))
    rows = ev.scored_rows(tok, ["Q: a lamp?\nA:", "Describe a chair.\n"], [" Bright.", " Wooden."], 64)
    assert ev.shared_prefix(model, rows) == 0
    # LLM.int8 takes its outlier columns from the whole batch: on the cpu profile, scoring the opening
    # apart moved one 8-bit run's row losses by up to 0.05 nats. Its rows are scored whole.
    rows = ev.scored_rows(tok, list(test["prompt"]), list(test["description"]), profile.train.max_length)
    assert ev.shared_prefix(model, rows) >= 8
    assert ev.shared_prefix(_adapted(profile, "int8"), rows) == 0


def test_a_4bit_load_reads_the_saved_copy_and_gets_the_weights_a_fresh_rounding_gives(smoke, tmp_path, monkeypatch):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from lora_course import model as model_module

    monkeypatch.setenv("LORA_COURSE_CACHE", str(tmp_path))  # no copy saved yet
    profile, tok, _ = smoke
    precision = for_profile(profile)
    checkpoint = model_module.resolve_checkpoint(profile.model_spec)
    quant = model_module.bnb_config("nf4", precision)
    copy_dir = model_module._quantised_copy_dir(checkpoint, quant, precision)
    assert not copy_dir.exists()
    first = load_model(profile, "nf4", precision)  # rounds the weights once and saves them
    assert (copy_dir / "config.json").exists()
    saved = sorted(p.name for p in copy_dir.iterdir())
    again = load_model(profile, "nf4", precision)  # reads them back: nothing rounded, nothing rewritten
    assert sorted(p.name for p in copy_dir.iterdir()) == saved
    assert again.name_or_path == again.config._name_or_path == checkpoint  # what an adapter records as its base

    fresh = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=precision.weights, quantization_config=quant,
                                                 device_map=model_module.device_map(precision))
    model_module._keep_4bit_matmuls_in(fresh, precision.compute)  # as load_model does: no bf16 kernel swapped in
    for loaded in (first, again):
        state, expected = loaded.state_dict(), fresh.state_dict()
        assert state.keys() == expected.keys()
        assert all(state[k].dtype == expected[k].dtype and torch.equal(state[k], expected[k]) for k in state)
        layers = [m for m in loaded.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert layers and all(m.compute_dtype == precision.compute and not m.support_avx512bf16_for_cpu
                              for m in layers)
    ids = tok(["### Instruction:\nDescribe a lamp."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(again(ids).logits, fresh(ids).logits)
    # 8-bit and float loads round nothing ahead: no copy of theirs.
    load_model(profile, "int8", precision)
    assert [p.name for p in tmp_path.iterdir() if "4bit" in p.name] == [copy_dir.name]
