"""Each tiny architecture, loaded from its own folder, trains three steps in NF4 and in fp32;
its adapter is saved, reloaded and merged, and every copy computes the same logits."""

import dataclasses

import pytest

from lora_course.config import RunConfig
from lora_course.external import write_tiny_checkpoint
from lora_course.merge import _logits, load_adapter_model, max_logit_difference, merge_adapter
from lora_course.pipeline import prepare
from lora_course.presets import get_profile
from lora_course.train import train

# One of each layout: Llama-style grouped-query attention (Qwen2 and Mistral share its names and are counted in
# test_targets), Gemma (tied head), Phi-3 (fused qkv and gate_up), GPT-NeoX (fused qkv), GPT-2 (Conv1D, tied head).
KINDS = ["llama", "gemma", "phi3", "gpt_neox", "gpt2"]
TEXTS = ["### Instruction:\nDescribe a lamp.\n\n### Response:\nA lamp", "Corelogic Smooth Mouse"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {kind: write_tiny_checkpoint(kind, root / kind) for kind in KINDS}


# Every layout in NF4 (the course's path); the unquantised base with two layouts, the Linear one (Llama) and the
# Conv1D one (GPT-2): without bitsandbytes the other layouts take the same code as Llama's.
CASES = [(kind, "qlora-r8-all") for kind in KINDS] + [("llama", "lora-r8-all"), ("gpt2", "lora-r8-all")]


@pytest.mark.parametrize(("kind", "experiment"), CASES)
def test_train_save_reload_merge(folders, tmp_path, kind, experiment):
    profile = dataclasses.replace(get_profile("smoke"), model=str(folders[kind]))
    # 16 rows, 2 per step, 64 tokens: three optimizer steps in well under a second each.
    config = RunConfig.create(experiment, profile, results_dir=tmp_path, max_steps=3, max_length=64,
                              per_device_train_batch_size=2, data={"n_rows": 16, "test_size": 2})
    prepared = prepare(config)
    result = train(prepared.trainer)
    assert result.steps == 3
    # Every LoRA A matrix moved: gradients reached the adapter through the (possibly 4-bit) base.
    assert result.moved_share["lora_A"] > 0.99
    adapter = tmp_path / "adapter"
    prepared.model.save_pretrained(adapter)
    quantization = config.experiment.quantization
    reloaded = load_adapter_model(profile, adapter, quantization)
    assert max_logit_difference(prepared.model.eval(), reloaded, prepared.tokenizer, TEXTS) < 1e-5
    # Merged into a float reload of the base: rounding only.
    on_float = load_adapter_model(profile, adapter, "none")
    before = _logits(on_float, prepared.tokenizer, TEXTS)
    after = _logits(merge_adapter(on_float), prepared.tokenizer, TEXTS)
    assert max(float((a - b).abs().max()) for a, b in zip(before, after)) < 1e-4
