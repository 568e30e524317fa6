"""Precision and the trainer contract: no bf16 math on a CPU at the CPU profiles, fp32 adapters that move,
the gpu profile's exact trainer, checkpoints and resume, determinism, and a pinned loss."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lora_course import PROFILES, RunConfig
from lora_course.pipeline import prepare, run
from lora_course.precision import for_profile, resolve_precision
from lora_course.results import newest_checkpoint
from lora_course.settings import PrecisionSettings
from lora_course.train import trainer_arguments

# Moving data between dtypes is not computing in one (TRL casts the adapter of a quantised
# model to bf16 at construction; the course puts the exact fp32 values back).
CONVERSIONS = {"aten._to_copy.default", "aten.detach.default", "aten.copy_.default", "aten.clone.default"}


class Bf16Recorder(TorchDispatchMode):
    """Every op that computes with a bf16 tensor (read or written) while the mode is on, by name."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = tree_flatten((args, kwargs, out))[0]
        if str(func) not in CONVERSIONS and any(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16
                                                for t in tensors):
            self.ops[str(func)] += 1
        return out


PROMPTS = ["Q: a desk lamp\nA:", "### Instruction:\n\nDescribe a kettle.\n\n### Response:\n"]


def _forward(model, tokenizer):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        model(**enc)


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_cpu_profiles_resolve_to_fp32_everywhere(profile):
    p = for_profile(PROFILES[profile])
    assert (p.weights, p.compute, p.adapter, p.mixed_precision) == (torch.float32,) * 3 + ("no",)
    assert not p.uses_bf16


def test_gpu_profile_keeps_the_posts_bf16_compute_and_fp32_adapters():
    p = resolve_precision(PROFILES["gpu"].precision, "cuda", bf16_supported=True)
    assert (p.compute, p.weights, p.adapter, p.mixed_precision) == (torch.bfloat16, torch.bfloat16, torch.float32, "fp16")
    assert p.notes == ()


def test_a_gpu_without_bf16_falls_back_to_fp16_with_one_notice():
    p = resolve_precision(PROFILES["gpu"].precision, "cuda", bf16_supported=False)
    assert (p.compute, p.weights, p.adapter) == (torch.float16, torch.float16, torch.float32)
    assert len(p.notes) == 1 and "no bfloat16" in p.notes[0] and "float16" in p.notes[0]


def test_gpu_quantisation_config_is_the_posts():
    from lora_course.model import bnb_config

    q = bnb_config("nf4", resolve_precision(PROFILES["gpu"].precision, "cuda", bf16_supported=True))
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    t4 = bnb_config("nf4", resolve_precision(PROFILES["gpu"].precision, "cuda", bf16_supported=False))
    assert t4.bnb_4bit_compute_dtype == torch.float16
    assert bnb_config("int8", for_profile(PROFILES["gpu"])).load_in_8bit


def test_fsdp_storage_puts_4bit_and_float_weights_in_one_dtype():
    settings = PrecisionSettings(compute_dtype="bf16", mixed_precision="fp16", quant_storage="fp32")
    p = resolve_precision(settings, "cuda", bf16_supported=True)
    assert p.quant_storage == p.weights == torch.float32


# --------------------------------------------------------------------------- no bf16 on the CPU


@pytest.fixture(scope="module")
def smoke_adapter(tmp_path_factory):
    return run(RunConfig.create("qlora-r8-all", "smoke", results_dir=tmp_path_factory.mktemp("dtype")))


@pytest.mark.parametrize("experiment", ["qlora-r8-all", "lora8bit-r8-all", "lora-r8-all"])
def test_no_bf16_while_training_at_smoke_defaults(experiment, tmp_path):
    p = prepare(RunConfig.create(experiment, "smoke", results_dir=tmp_path, max_steps=1))
    assert {str(t.dtype) for n, t in p.trainer.model.named_parameters() if t.requires_grad} == {"torch.float32"}
    with Bf16Recorder() as rec:
        p.trainer.train()
        _forward(p.trainer.model, p.tokenizer)
    assert rec.ops == Counter()


def test_no_bf16_in_reload_merge_and_benchmark_settings(smoke_adapter, smoke_tokenizer, tmp_path):
    from lora_course.bench import TRAINER_SETTINGS, setting_config
    from lora_course.merge import load_adapter_model, merge_and_check

    profile = PROFILES["smoke"]
    with Bf16Recorder() as rec:
        for quantization in ("nf4", "none"):
            _forward(load_adapter_model(profile, smoke_adapter.adapter_dir, quantization), smoke_tokenizer)
        _forward(merge_and_check(profile, smoke_adapter.adapter_dir, PROMPTS).merged_model, smoke_tokenizer)
        for setting in TRAINER_SETTINGS:
            prepare(setting_config(profile, "qlora-r8-qv", setting, 8, tmp_path)).trainer.train()
    assert rec.ops == Counter()


def test_no_bf16_at_the_cpu_profile_with_its_real_model(tmp_path):
    # One step of 4 rows cut at 64 tokens: the dtypes of every op are those of a full step, at a fraction of it.
    p = prepare(RunConfig.create("qlora-r8-qv", "cpu", results_dir=tmp_path, max_steps=1, max_length=64,
                                 data={"train_rows": 4}))
    with Bf16Recorder() as rec:
        p.trainer.train()
        _forward(p.model.eval(), p.tokenizer)  # eval mode: where bitsandbytes' bf16 kernel would swap in
    assert rec.ops == Counter()


def test_an_explicit_bf16_adapter_is_seen(tmp_path):
    """The recorder is not blind: opting in to a bf16 adapter by name shows bf16 ops."""
    p = prepare(RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path, max_steps=1,
                                 precision={"adapter_dtype": "bf16"}))
    with Bf16Recorder() as rec:
        p.trainer.train()
    assert sum(rec.ops.values()) > 0


# --------------------------------------------------------------------------- the frozen adapter


@pytest.mark.parametrize("experiment", ["qlora-r8-all", "lora8bit-r8-all"])
def test_fp32_adapters_move_at_the_posts_learning_rate_and_bf16_ones_freeze(experiment, tmp_path):
    moved = {}
    for dtype in ("fp32", "bf16"):
        cfg = RunConfig.create(experiment, "smoke", results_dir=tmp_path, name=f"{experiment}-{dtype}",
                               precision={"adapter_dtype": dtype}, learning_rate=1e-5, max_steps=3)
        result = run(cfg).result
        assert result.adapter_dtype == {"fp32": "float32", "bf16": "bfloat16"}[dtype]
        moved[dtype] = result.moved_share
    assert moved["fp32"]["lora_A"] >= 0.99 and moved["fp32"]["lora_B"] >= 0.99
    assert moved["bf16"]["lora_A"] < 0.5  # the freeze, reproduced: most A entries never change
    assert moved["bf16"]["lora_B"] > 0.9  # B starts at zero, where bf16 is fine-grained


# --------------------------------------------------------------------------- the gpu profile's trainer


def test_gpu_trainer_arguments_are_the_companion_codes():
    from trl import SFTConfig

    from lora_course.post import TRAINER_NAMES

    gpu = PROFILES["gpu"]
    precision = resolve_precision(gpu.precision, "cuda", bf16_supported=True)
    kw = trainer_arguments(gpu.train, precision, "/tmp/out", 42)
    expected = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4, "learning_rate": 1e-5,
                "max_grad_norm": 0.3, "warmup_steps": 0.03, "lr_scheduler_type": "linear", "num_train_epochs": 3,
                "fp16": True, "bf16": False, "train_sampling_strategy": "group_by_length", "max_length": 256,
                "packing": False, "eval_strategy": "epoch", "save_strategy": "epoch", "max_steps": -1,
                "activation_checkpointing": True, "use_cpu": False, "completion_only_loss": False}
    assert {k: kw[k] for k in expected} == expected
    # Every value the post set, under today's name, from one table of data.
    for _, _, field, value in TRAINER_NAMES:
        section, _, name = field.rpartition(".")
        source = gpu.precision if section == "precision" else gpu.train
        assert getattr(source, name) == value, field
    args = SFTConfig(**kw)  # TRL accepts every keyword, with no CUDA here
    assert args.train_sampling_strategy == "group_by_length" and args.fp16


def test_4750_rows_give_297_optimizer_steps_per_epoch_through_the_real_dataloader(tmp_path):
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from lora_course.model import load_model, load_tokenizer

    gpu = PROFILES["gpu"]
    kw = trainer_arguments(gpu.train, resolve_precision(gpu.precision, "cuda", bf16_supported=True), tmp_path, 42)
    # Only what a CPU cannot do changes: no fp16 autocast, the CPU as device. TRL's own
    # fields (max_length, packing, ...) do not shape the sampler or the step count.
    trl_only = {"max_length", "packing", "packing_strategy", "padding_free", "pad_to_multiple_of",
                "completion_only_loss", "dataset_text_field"}
    args = TrainingArguments(**{**{k: v for k, v in kw.items() if k not in trl_only}, "fp16": False, "use_cpu": True})
    rows = datasets.Dataset.from_dict({"input_ids": [[1] * (8 + i % 90) for i in range(4750)]})
    tok = load_tokenizer("smoke-llama")
    trainer = Trainer(model=load_model("smoke-llama"), args=args, train_dataset=rows, eval_dataset=rows,
                      data_collator=DataCollatorWithPadding(tok))
    loader = trainer.get_train_dataloader()
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    epochs, per_epoch, *_, max_steps = trainer.set_initial_training_values(args, loader)
    assert len(loader) == 1188  # 4,750 / 4 rows, the last batch short
    assert (per_epoch, max_steps, epochs) == (297, 891, 3)
    assert args.get_warmup_steps(891) == math.ceil(0.03 * 891) == 27


# --------------------------------------------------------------------------- checkpoints, resume, determinism


class _Crash(Exception):
    pass


def _crash_after_checkpoint(step: int):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Crash(f"process died after the checkpoint at step {step}")

    return Crash()


def test_a_run_stopped_after_a_checkpoint_resumes_to_the_same_result(tmp_path):
    from safetensors.torch import load_file

    def config(root):
        return RunConfig.create("qlora-r8-qv", "smoke", results_dir=root, save_strategy="steps", save_steps=2)

    whole = run(config(tmp_path / "whole"))
    stopped = config(tmp_path / "stopped")
    with pytest.raises(_Crash):
        run(stopped, callbacks=[_crash_after_checkpoint(4)])
    assert not (stopped.out_dir / "config.json").exists()  # not a finished run
    assert newest_checkpoint(stopped.out_dir).name == "checkpoint-4"
    resumed = run(stopped, resume=True)
    assert [x["step"] for x in resumed.result.losses] == [1, 2, 3, 4, 5, 6]
    assert [x["loss"] for x in resumed.result.losses] == pytest.approx([x["loss"] for x in whole.result.losses],
                                                                       abs=1e-6)
    a = load_file(whole.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not (resumed.out_dir / "checkpoints").exists()  # a finished run keeps its adapter, not its checkpoints


def test_resume_without_a_checkpoint_says_what_to_do(tmp_path):
    from lora_course import CourseError

    with pytest.raises(CourseError, match="Nothing to resume: no checkpoint in .*Run without --resume"):
        run(RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path), resume=True)


# The smoke run's training loss at each of its 6 steps (qlora-r8-qv, seed 42). A change in data,
# formatting, model building, LoRA or trainer moves these numbers; float summation order on
# another CPU moves them by far less than the tolerance.
PINNED_LOSSES = [6.252843, 6.243501, 6.234844, 6.221689, 6.20553, 6.184582]


def test_same_seed_same_loss_curve_and_the_pinned_values(tmp_path):
    a = run(RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path / "a")).result
    b = run(RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path / "b")).result
    assert [x["loss"] for x in a.losses] == [x["loss"] for x in b.losses]  # exact, on one machine
    assert [x["loss"] for x in a.losses] == pytest.approx(PINNED_LOSSES, abs=2e-4)
    metrics = json.loads((tmp_path / "a" / "smoke" / "qlora-r8-qv" / "metrics.json").read_text())
    assert metrics["tokens_trained"] == a.tokens_trained
