"""Library tests on the smoke profile: counts, formats, gradients, the pipeline, save/load, merge."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from helpers import GradientProbe, lora_matrices, train_model
from lora_course import EXPERIMENTS, PROFILES, CourseError, RunConfig
from lora_course.data import format_example, prepare_data
from lora_course.generate import generate
from lora_course.lora import (
    attach_lora,
    count_lora_parameters,
    find_linear_names,
    parameter_report,
)
from lora_course.merge import load_adapter_model, max_logit_difference, merge_and_check
from lora_course.model import count_parameters, load_model, meta_model
from lora_course.pipeline import run
from lora_course.precision import CPU_FP32
from lora_course.presets import get_experiment
from lora_course.results import LatencyRow
from lora_course.settings import ALL_LINEAR, ATTENTION_QV, TrainSettings

# --------------------------------------------------------------------------- parameter counts


def test_open_llama_base_parameter_count_from_meta_shapes():
    model = meta_model("open_llama_3b_v2")
    assert count_parameters(model) == 3_426_473_600
    assert next(model.parameters()).device.type == "meta"


@pytest.mark.parametrize(
    "r, targets, expected",
    [(8, ATTENTION_QV, 2_662_400), (16, ATTENTION_QV, 5_324_800), (8, ALL_LINEAR, 12_994_560)],
)
def test_blog_trainable_counts(r, targets, expected):
    report = count_lora_parameters(meta_model("open_llama_3b_v2"), r, targets)
    assert report.trainable == expected
    assert report.total == 3_426_473_600 + expected


def test_dora_adds_one_magnitude_per_output():
    plain = count_lora_parameters(meta_model("open_llama_3b_v2"), 8, ATTENTION_QV).trainable
    dora = count_lora_parameters(meta_model("open_llama_3b_v2"), 8, ATTENTION_QV, use_dora=True).trainable
    assert dora - plain == 26 * 2 * 3200  # q and v: 3,200 outputs each, 26 blocks


def test_packed_4bit_weights_are_counted_unpacked():
    """A 4-bit weight stores two values per element: the count must match the float model's exactly."""
    float_total = count_parameters(load_model("smoke-llama"))
    nf4 = load_model("smoke-llama", "nf4")
    assert sum(p.numel() for p in nf4.parameters()) < float_total  # packed storage is smaller ...
    assert count_parameters(nf4) == float_total == count_parameters(meta_model("smoke-llama"))  # ... the count is not
    exp = get_experiment("qlora-r8-all")
    on_nf4 = count_lora_parameters(nf4, 8, ALL_LINEAR)
    assert on_nf4.total == float_total + on_nf4.trainable
    assert parameter_report(attach_lora(nf4, exp, CPU_FP32)).total == on_nf4.total


def test_arithmetic_count_matches_peft_on_a_real_model():
    model = load_model("smoke-llama")
    for exp in EXPERIMENTS.values():
        exp_none = dataclasses.replace(exp, quantization="none")
        expected = count_lora_parameters(model, exp.lora.r, exp.lora.target_modules)
        peft_model = attach_lora(load_model("smoke-llama"), exp_none, CPU_FP32)
        assert parameter_report(peft_model).trainable == expected.trainable


def test_all_linear_discovery_includes_lm_head_on_float_and_quantised_models():
    expected = ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj"]
    for quantization in ("none", "int8", "nf4"):
        assert find_linear_names(load_model("smoke-llama", quantization)) == expected
    assert find_linear_names(meta_model("open_llama_3b_v2")) == expected


def test_params_command_prints_the_blog_count(capsys):
    from lora_course.cli import main

    assert main(["params", "--model", "open_llama_3b_v2", "--r", "8", "--targets", "q_proj", "v_proj", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trainable"] == 2_662_400
    assert out["total"] - out["trainable"] == 3_426_473_600


# --------------------------------------------------------------------------- data format

BESEYE_TEXT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n"
    "\n"
    "### Instruction:\n"
    "\n"
    "Create a detailed description for the following product: Beseye Pro, belonging to category: "
    "Cloud-Based Home Security Camera\n"
    "\n"
    "### Response:\n"
    "A camera.\n"
    "### End"
)


def test_beseye_pro_prompt_is_the_blog_template():
    ex = format_example("Beseye Pro", "Cloud-Based Home Security Camera", "A camera.")
    assert ex["text"] == BESEYE_TEXT
    assert ex["prompt"] + ex["response"] == ex["text"]
    assert ex["response"] == "A camera.\n### End"


# --------------------------------------------------------------------------- presets


def test_experiments_are_the_blogs_four_with_fixed_knobs():
    assert list(EXPERIMENTS) == ["qlora-r8-qv", "qlora-r16-qv", "qlora-r8-all", "lora8bit-r8-all"]
    assert [e.quantization for e in EXPERIMENTS.values()] == ["nf4", "nf4", "nf4", "int8"]
    assert [e.lora.r for e in EXPERIMENTS.values()] == [8, 16, 8, 8]
    for e in EXPERIMENTS.values():
        assert (e.lora.lora_alpha, e.lora.lora_dropout, e.lora.bias) == (8, 0.05, "none")


def test_lora_config_receives_every_setting_under_its_own_name():
    from lora_course.lora import lora_config

    lora = get_experiment("qlora-r8-qv").lora.__class__(r=4, lora_alpha=16, use_rslora=True, use_dora=True)
    cfg = lora_config(lora, ["q_proj", "v_proj"])
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.bias, cfg.use_rslora, cfg.use_dora) == (4, 16, 0.05, "none",
                                                                                                True, True)
    assert set(cfg.target_modules) == {"q_proj", "v_proj"} and cfg.task_type == "CAUSAL_LM"
    assert lora.scaling == 16 / 2  # rsLoRA: alpha / sqrt(r)


def test_run_config_json_round_trip(tmp_path):
    cfg = RunConfig.create("qlora-r8-all", "smoke", results_dir=tmp_path, max_steps=3, precision={"adapter_dtype": "bf16"})
    back = RunConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.profile.train.max_steps == 3 and back.profile.precision.adapter_dtype == "bf16"
    assert back.out_dir == tmp_path / "smoke" / "qlora-r8-all"
    assert RunConfig.create("qlora-r8-all", "smoke", seed=7).name == "qlora-r8-all-seed7"


def test_quantization_is_one_field():
    with pytest.raises(CourseError, match="Unknown quantization 'int4'"):
        dataclasses.replace(get_experiment("qlora-r8-qv"), quantization="int4")


# --------------------------------------------------------------------------- gradients


def _tiny_train(model, tokenizer, steps=2):
    data = prepare_data(PROFILES["smoke"].data, tokenizer, 128)
    probe = GradientProbe()
    settings = TrainSettings(learning_rate=1e-2, per_device_train_batch_size=2, max_steps=steps, max_length=96)
    result = train_model(model, tokenizer, data.train.select(range(8)), settings, CPU_FP32, callbacks=[probe.callback])
    return result, probe


def _packed_4bit_layers(model) -> int:
    import bitsandbytes as bnb

    return sum(
        bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
        for m in model.modules()
        if isinstance(m, bnb.nn.Linear4bit)
    )


def _pack_4bit_like_avx512bf16(model) -> int:
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            w = m.weight
            if not getattr(w.quant_state, "packing_format_for_cpu", False):
                w.data, w.quant_state = _convert_weight_packed_for_cpu(w.data, w.quant_state)
                m.quant_state = w.quant_state
            n += 1
    return n


@pytest.mark.parametrize("quantization", ["nf4", "int8", "none"])
@pytest.mark.parametrize("generate_first", [False, True])
def test_every_lora_matrix_gets_a_gradient(quantization, generate_first, smoke_tokenizer):
    exp = dataclasses.replace(get_experiment("qlora-r8-all"), quantization=quantization)
    model = attach_lora(load_model("smoke-llama", quantization), exp, CPU_FP32)
    if generate_first:
        generate(model, smoke_tokenizer, "Q: a lamp\nA:", max_new_tokens=4)
        # On CPUs with AVX512-BF16 an eval-mode forward can repack every 4-bit weight,
        # after which no gradient flows through it. Put the weights in that state on
        # any CPU, so the test sees the trap whatever machine runs it.
        assert _pack_4bit_like_avx512bf16(model) == (14 if quantization == "nf4" else 0)
    result, probe = _tiny_train(model, smoke_tokenizer)
    assert _packed_4bit_layers(model) == 0
    n_matrices = len(lora_matrices(model))
    # 7 projections x 2 layers + lm_head = 15 adapted layers, an A and a B each.
    assert n_matrices == 30
    assert len(probe.norms) == n_matrices
    assert probe.zero_grad_matrices() == []
    assert result.losses[-1]["loss"] < result.losses[0]["loss"]


def test_loaded_4bit_model_never_repacks_into_bf16(smoke_tokenizer):
    """load_model keeps 4-bit matmuls in the compute dtype: no bf16 kernel swaps in on eval."""
    model = load_model("smoke-llama", "nf4")
    generate(model, smoke_tokenizer, "Q: a lamp\nA:", max_new_tokens=2)
    assert _packed_4bit_layers(model) == 0


# --------------------------------------------------------------------------- the pipeline, save, merge


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cfg = RunConfig.create("qlora-r8-all", "smoke", results_dir=tmp_path_factory.mktemp("results"))
    return run(cfg, evaluate="full", keep_model=True)


def test_smoke_training_loss_falls_and_results_are_written(smoke_run):
    r = smoke_run.result
    assert r.steps == PROFILES["smoke"].train.max_steps
    assert [x["step"] for x in r.losses] == list(range(1, r.steps + 1))
    assert r.final_loss < r.first_loss - 0.05
    assert len(r.step_seconds) == r.steps
    # Every non-padding token counted: the smoke rows' tokens, 6 steps of 4 rows.
    out = smoke_run.out_dir
    assert sorted(p.name for p in out.iterdir()) == [".lora_course", "adapter", "config.json", "eval.json", "losses.json",
                                                     "metrics.json"]
    assert RunConfig.from_json((out / "config.json").read_text()) == smoke_run.config
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tokens_trained"] == r.tokens_trained
    assert metrics["params"]["trainable"] == parameter_report(smoke_run.model).trainable == 24_064
    losses = json.loads((out / "losses.json").read_text())
    assert [x["loss"] for x in losses["train"]] == [x["loss"] for x in r.losses]
    # No temporary or checkpoint folders left beside or inside the result.
    assert [p.name for p in out.parent.iterdir()] == ["qlora-r8-all"]
    ev = smoke_run.evaluation
    assert ev.kind == "full" and len(ev.rows("response_loss")) == 6 and len(ev.prompt_generations) == 3


def test_finished_run_is_reused_not_retrained(smoke_run):
    again = run(smoke_run.config, evaluate="full")
    assert again.model is None  # loaded from disk
    assert again.result.losses == smoke_run.result.losses
    assert again.evaluation.loss == smoke_run.evaluation.loss  # the cached evaluation, not a new one


def test_adapter_save_load_gives_identical_logits(smoke_run, smoke_tokenizer):
    prompt = ["Q: Create a detailed description for the following product: Lamp\nA:"]
    trained = smoke_run.model
    trained.eval()
    reloaded = load_adapter_model("smoke-llama", smoke_run.adapter_dir, "nf4")
    assert {p.dtype for n, p in reloaded.named_parameters() if "lora_" in n} == {torch.float32}
    enc = smoke_tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        a = trained(**enc).logits
        b = reloaded(**enc).logits
    assert torch.equal(a, b)


def test_merge_into_float_base_matches_adapter_model(smoke_run):
    prompts = ["Q: a desk lamp\nA:", "### Instruction:\n\nDescribe a kettle.\n\n### Response:\n"]
    report = merge_and_check("smoke-llama", smoke_run.adapter_dir, prompts)
    assert report.max_abs_logit_diff < 1e-4
    # The merged model is a plain transformers model: no LoRA modules left.
    assert not any("lora_" in n for n, _ in report.merged_model.named_parameters())
    # And the adapter did change the model: the merge is not a no-op.
    base = load_model("smoke-llama")
    assert max_logit_difference(base, report.merged_model, report.tokenizer, prompts) > 1e-3


def test_nf4_rounding_counts_codes_that_do_not_move(smoke_run):
    from lora_course.merge import float_adapted_layers, nf4_rounding, zero_update

    model = load_adapter_model("smoke-llama", smoke_run.adapter_dir, "nf4")
    # The 4-bit load keeps lm_head in float: its update is the one part a merge into NF4 keeps exactly.
    assert float_adapted_layers(model) == ["lm_head"]
    sizes = nf4_rounding(model)
    assert sizes["median_abs_update"] > 0 and sizes["median_nf4_step"] > sizes["median_abs_update"]
    zero_update(model)
    assert nf4_rounding(model)["unchanged_share"] == 1.0  # no update: every code stays
    with pytest.raises(CourseError, match="needs a LoRA model on an NF4 base"):
        nf4_rounding(load_adapter_model("smoke-llama", smoke_run.adapter_dir, "none"))


def test_adapter_on_disk_excludes_the_frozen_lm_head(smoke_run):
    from safetensors.torch import load_file

    weights = load_file(smoke_run.adapter_dir / "adapter_model.safetensors")
    assert all("lora_" in k for k in weights)
    assert sum(v.numel() for v in weights.values()) == smoke_run.params["trainable"]
    assert {v.dtype for v in weights.values()} == {torch.float32}


# --------------------------------------------------------------------------- teaching twins


def test_scratch_lora_matches_peft_with_the_same_a_and_b():
    from peft import LoraConfig, get_peft_model

    from lora_course.lora import ScratchLoRALinear

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(64, 32))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["0"]))
    layer = peft_model.base_model.model[0]
    torch.nn.init.normal_(layer.lora_B["default"].weight)  # B = 0 would hide a wrong formula
    scratch = ScratchLoRALinear(layer.base_layer, r=4, lora_alpha=8)
    with torch.no_grad():
        scratch.lora_A.copy_(layer.lora_A["default"].weight)
        scratch.lora_B.copy_(layer.lora_B["default"].weight)
    x = torch.randn(5, 64)
    assert torch.allclose(scratch(x), peft_model(x), atol=1e-6)
    assert not torch.allclose(scratch(x), layer.base_layer(x), atol=1e-3)  # the update is not zero
    # r * (in + out) trainable parameters.
    assert sum(p.numel() for p in scratch.parameters() if p.requires_grad) == 4 * (64 + 32)


def test_trainable_by_rank_is_linear_in_r():
    from lora_course.lora import trainable_by_rank

    table = trainable_by_rank(meta_model("open_llama_3b_v2"), [8, 16, 32], {"q,v": ATTENTION_QV, "all": ALL_LINEAR})
    assert table.loc[8, "q,v"] == 2_662_400 and table.loc[16, "q,v"] == 5_324_800
    assert table.loc[32, "all"] == 4 * 12_994_560


# --------------------------------------------------------------------------- serving


def test_mixed_batch_matches_single_adapter_answers(tmp_path_factory, smoke_run, smoke_tokenizer):
    from lora_course.merge import generate_mixed, load_adapters

    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path_factory.mktemp("r2"), learning_rate=2e-2)
    other = run(cfg)
    adapters = {"all": smoke_run.adapter_dir, "qv": other.adapter_dir}
    multi = load_adapters("smoke-llama", adapters)
    prompts = ["Q: a desk lamp\nA:", "Q: a kettle\nA:", "Q: a chair\nA:"]
    routes = ["all", "qv", "__base__"]
    mixed = generate_mixed(multi, smoke_tokenizer, prompts, routes, max_new_tokens=8)
    single = {name: generate_mixed(multi, smoke_tokenizer, prompts, [name] * 3, max_new_tokens=8) for name in set(routes)}
    assert mixed == [single[name][i] for i, name in enumerate(routes)]
    # The adapters really differ, so the routing is what made the rows match.
    assert len({single[n][0] for n in routes}) > 1


def test_timed_generations_give_the_median_of_repeats(monkeypatch, smoke_tokenizer):
    import lora_course.generate as gen

    clock = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0, 30.0, 37.0])  # warm-up 1 s, then runs of 3, 2 and 7 s
    monkeypatch.setattr(gen, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(gen, "generate_detailed", lambda *a, **k: [])
    times = gen.time_generation(None, smoke_tokenizer, ["a", "b"], new_tokens=10, repeats=3, warmup=1)
    lat = LatencyRow.from_times(times, 10, 2)
    assert (lat.median_s, lat.min_s, lat.max_s, lat.repeats) == (3.0, 2.0, 7.0, 3)
    assert lat.tokens_per_second == pytest.approx(10 * 2 / 3.0)


def test_training_run_is_logged_to_mlflow(smoke_run):
    from mlflow.tracking import MlflowClient

    from lora_course.tracking import tracking_uri

    client = MlflowClient(tracking_uri(smoke_run.config.results_dir))
    experiment = client.get_experiment_by_name("lora-course/smoke")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.experiment = 'qlora-r8-all'")
    train_run = next(r for r in runs if r.info.run_name == "qlora-r8-all")
    assert train_run.info.status == "FINISHED"
    assert train_run.data.params["experiment.lora.r"] == "8"
    assert train_run.data.params["experiment.quantization"] == "nf4"
    history = client.get_metric_history(train_run.info.run_id, "loss")
    assert [m.step for m in history] == [x["step"] for x in smoke_run.result.losses]
    assert [m.value for m in history] == pytest.approx([x["loss"] for x in smoke_run.result.losses])
    assert train_run.data.metrics["tokens_trained"] == smoke_run.result.tokens_trained
    artifacts = [a.path for a in client.list_artifacts(train_run.info.run_id, "adapter")]
    assert "adapter/adapter_config.json" in artifacts
    eval_run = next(r for r in runs if r.info.run_name == "qlora-r8-all/eval")
    assert eval_run.data.metrics["heldout_response_loss"] == pytest.approx(smoke_run.evaluation.loss["loss"])


def test_merge_unties_a_shared_lm_head_first(smoke_tokenizer):
    """With lm_head tied to the embedding, merging an lm_head adapter must not change the embedding."""
    from lora_course.merge import merge_adapter

    base = load_model("smoke-llama")
    base.lm_head.weight = base.model.embed_tokens.weight  # tie them, as SmolLM2 does
    base.config.tie_word_embeddings = True
    embedding_before = base.model.embed_tokens.weight.detach().clone()
    model = attach_lora(base, dataclasses.replace(get_experiment("qlora-r8-all"), quantization="none"), CPU_FP32)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    enc = smoke_tokenizer(["Q: a lamp\nA:"], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model(**enc).logits
    merged = merge_adapter(model)
    assert torch.equal(merged.model.embed_tokens.weight, embedding_before)
    assert merged.lm_head.weight.data_ptr() != merged.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert (merged(**enc).logits - expected).abs().max() < 1e-4
