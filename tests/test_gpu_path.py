"""The gpu profile's path, checked on a CPU: its miniature profile, and the defects a CPU can show."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
from pathlib import Path

import pytest
import torch

from lora_course import CourseError
from lora_course.presets import GPU_DEVICE_DIFFERENCES, GPU_MINI_DIFFERENCES, PROFILES
from lora_course.settings import PrecisionSettings

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = {"name", "description"}  # a profile's own name and one-line description


def _flat(obj, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in (dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --------------------------------------------------------------------------- the miniature
@pytest.mark.parametrize("name, allowed", [("gpu-mini", GPU_MINI_DIFFERENCES), ("gpu-device", GPU_DEVICE_DIFFERENCES)])
def test_profile_is_the_gpu_profile_but_for_its_listed_differences(name, allowed):
    gpu, other = _flat(PROFILES["gpu"]), _flat(PROFILES[name])
    assert gpu.keys() == other.keys()
    differing = {k for k in gpu if gpu[k] != other[k]} - IDENTITY
    assert differing == set(allowed), f"unlisted: {differing - set(allowed)}; listed but equal: {set(allowed) - differing}"
    for path, (value, reason) in allowed.items():
        assert other[path] == value and len(reason) > 10


def test_gpu_mini_keeps_the_settings_that_break_on_a_gpu():
    """Not just 'equal where unlisted': the gpu settings this profile exists to exercise, spelled out."""
    t, p = PROFILES["gpu-mini"].train, PROFILES["gpu-mini"].precision
    assert (t.eval_strategy, t.save_strategy, t.train_sampling_strategy) == ("epoch", "epoch", "group_by_length")
    assert (t.warmup_steps, t.lr_scheduler_type, t.max_grad_norm, t.max_length) == (0.03, "linear", 0.3, 256)
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.num_train_epochs) == (4, 4, 3)
    assert t.activation_checkpointing and t.max_steps == -1 and t.optim == "adamw_torch"
    assert (p.compute_dtype, p.adapter_dtype) == ("bf16", "fp32")
    assert PROFILES["gpu-mini"].max_new_tokens == PROFILES["gpu"].max_new_tokens == 156
    # 48 rows, 8 held out: 40 train rows = 2 optimizer steps of 16 an epoch, 6 in all.
    from lora_course.precision import for_profile

    prec = for_profile(PROFILES["gpu-mini"])
    assert prec.weights == prec.compute == torch.bfloat16 and prec.adapter == torch.float32


def test_gpu_mini_tokenizer_is_sentencepiece_style_like_open_llama():
    from transformers import AutoTokenizer

    from lora_course.model import resolve_checkpoint

    folder = resolve_checkpoint(PROFILES["gpu-mini"].model)
    tok = AutoTokenizer.from_pretrained(folder)  # as saved, before load_tokenizer sets a pad token
    backend = json.loads(tok.backend_tokenizer.to_str())
    assert backend["pre_tokenizer"]["type"] == "Metaspace"
    assert backend["model"]["type"] == "BPE" and backend["model"]["byte_fallback"] is True
    assert tok.pad_token is None and (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    ids = tok("A lamp \u2603")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(ids)[-3:] == ["<0xE2>", "<0x98>", "<0x83>"]  # the snowman, byte by byte
    assert tok.decode(ids, skip_special_tokens=True) == "A lamp \u2603"
    # The trap of defect 6: a word tokenized alone starts with "\u2581", the same word after a newline does not.
    assert tok.convert_ids_to_tokens(tok("Lamp", add_special_tokens=False)["input_ids"])[0].startswith("\u2581")


# --------------------------------------------------------------------------- precision: the T4 fallback
def _stub_gpu(monkeypatch, major: int, minor: int) -> None:
    """A CUDA device of the given compute capability on which bf16 tensors can be made (emulated)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(major=major, minor=minor))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda d: True)
    monkeypatch.setattr(torch.version, "hip", None)


def test_t4_falls_back_to_fp16_although_torch_says_bf16_is_supported(monkeypatch):
    from lora_course.precision import resolve_precision

    _stub_gpu(monkeypatch, 7, 5)
    assert torch.cuda.is_bf16_supported()  # torch's default counts emulation: the trap
    p = resolve_precision(PROFILES["gpu"].precision, "cuda")
    assert p.compute == p.weights == torch.float16 and p.notes
    _stub_gpu(monkeypatch, 8, 0)  # A100
    p = resolve_precision(PROFILES["gpu"].precision, "cuda")
    assert p.compute == p.weights == torch.bfloat16 and not p.notes
    assert p.mixed_precision == "fp16" and p.adapter == torch.float32


# --------------------------------------------------------------------------- loading
def test_each_process_loads_onto_its_own_gpu(monkeypatch):
    from lora_course.model import device_map
    from lora_course.precision import resolve_precision

    gpu = resolve_precision(PrecisionSettings(), "cuda", bf16_supported=True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert device_map(gpu) == {"": 0}
    monkeypatch.setenv("LOCAL_RANK", "3")  # set by accelerate launch / torchrun for the 4th process
    assert device_map(gpu) == {"": 3}
    assert device_map(resolve_precision(PrecisionSettings(compute_dtype="fp32"), "cpu")) == {"": "cpu"}


def test_random_weights_are_made_in_their_target_dtype_without_a_cast(monkeypatch):
    from lora_course.catalogue import get_model_spec
    from lora_course.model import random_model

    def no_cast(self, *args, **kwargs):
        raise AssertionError("cast after building: an fp32 copy existed")

    monkeypatch.setattr(torch.nn.Module, "to", no_cast)
    model = random_model(get_model_spec("smoke-llama-random"), torch.bfloat16, "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # restored


# --------------------------------------------------------------------------- measurement
def test_unknown_gpu_reports_utilisation_as_unknown(monkeypatch):
    from lora_course.bench import describe_utilisation, device_peak_flops, utilisation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA B300 Imaginary")
    peak, text = device_peak_flops()
    assert peak is None and "unknown" in text
    assert utilisation(1e12, peak) is None and describe_utilisation(None).startswith("unknown")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    assert device_peak_flops()[0] == 989e12 and utilisation(989e11, 989e12) == pytest.approx(0.1)


def test_a_frozen_lm_head_adapter_fails_the_check_though_the_pooled_share_passes():
    from lora_course.lora import moved_share, moved_share_by_module, snapshot_adapter

    # 3B-like proportions: 99.56% of lora_A entries in the blocks, 0.44% in lm_head.
    model = torch.nn.Module()
    model.blocks = torch.nn.Module()
    model.blocks.lora_A = torch.nn.Parameter(torch.zeros(9956))
    model.lm_head = torch.nn.Module()
    model.lm_head.lora_A = torch.nn.Parameter(torch.zeros(44))
    before = snapshot_adapter(model)
    with torch.no_grad():
        model.blocks.lora_A += 1  # every block entry moved, lm_head's none
    assert moved_share(before, model, "lora_A") == pytest.approx(0.9956)  # pooled: passes 0.99
    by_module = moved_share_by_module(before, model, "lora_A")
    assert by_module == {"blocks": 1.0, "lm_head": 0.0}
    from lora_course.train import AdapterMovement

    watch = AdapterMovement()
    watch.moved_by_module = by_module
    assert watch.frozen_modules(0.99) == ["lm_head"]


# --------------------------------------------------------------------------- chapter 3 and 5 arithmetic
def test_nf4_block_rounding_matches_bitsandbytes_for_a_bf16_block():
    import bitsandbytes.functional as bnbf

    from lora_course.memory import nf4_round_block

    torch.manual_seed(0)
    block = (torch.randn(64) * 0.02).to(torch.bfloat16)  # a gpu profile's weights are bf16
    restored, absmax = nf4_round_block(block)
    assert restored.dtype == torch.float32 and restored.device.type == "cpu"
    packed, state = bnbf.quantize_4bit(block.float(), blocksize=64, quant_type="nf4")
    theirs = bnbf.dequantize_4bit(packed, state, quant_type="nf4", blocksize=64).flatten()
    assert torch.allclose(restored, theirs, atol=1e-6)
    assert float(absmax) == pytest.approx(float(block.float().abs().max()))


def test_merge_tolerance_follows_the_dtype():
    from lora_course.merge import logit_tolerance

    assert logit_tolerance(torch.float32, 12.0) == 1e-3
    # bf16: 4 steps of 2^-7 at logits of 12: 0.375, above the ~0.06 a bf16 merge differs by.
    assert logit_tolerance(torch.bfloat16, 12.0) == pytest.approx(4 * 2**-7 * 12)
    assert logit_tolerance(torch.bfloat16, 0.01) == 1e-3


# --------------------------------------------------------------------------- chapters and set-up
TRAINING_CALL = re.compile(r"(?<![.\w])(run|run_sweep|bench|train_check|compare_process_counts)\(")
READ = re.compile(r'chapter="(chapter \d)"')
REQUIRE = re.compile(r'\.require\(\s*"(chapter \d)"')


@pytest.mark.parametrize("path", sorted((ROOT / "chapters").glob("*.ipynb")), ids=lambda p: p.stem[:2])
def test_a_chapter_checks_other_chapters_results_before_it_trains(path):
    """A page run alone must stop before its first training call, not hours into it at gpu: every
    read of another chapter's result after that call was checked by a `require` before it."""
    nb = json.loads(path.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    first = next((m.start() for m in TRAINING_CALL.finditer(code)), len(code))
    checked = {m.group(1) for m in REQUIRE.finditer(code) if m.start() < first}
    late = sorted({m.group(1) for m in READ.finditer(code) if m.start() > first} - checked)
    assert not late, f"{path.name} reads results of {late} after training starts, unchecked before it"


def test_results_require_names_everything_missing(tmp_path):
    from lora_course.results import Results

    res = Results(tmp_path, "gpu-mini")
    with pytest.raises(CourseError, match=r"run 'qlora-r8-qv', evaluation 'baseline', the latency table from chapter 4"):
        res.require("chapter 4", runs=["qlora-r8-qv"], evaluations=["baseline"], latency=True)
    res.require("chapter 4")  # nothing needed: no error


def test_setups_install_what_open_llamas_tokenizer_needs():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras["gpu"]) == set(PROFILES["gpu"].model_spec.packages)
    assert {"sentencepiece>=0.2", "protobuf>=4"} <= set(extras["gpu"])
    install_line = next(ln for ln in (ROOT / "Makefile").read_text().splitlines() if "pip install" in ln and "-e" in ln)
    assert "gpu" in re.search(r'\.\[([^\]]+)\]', install_line).group(1).split(",")
    env = (ROOT / "environment.yml").read_text()
    assert "gpu" in re.search(r'-e \.\[([^\]]+)\]', env).group(1).split(",")


def test_the_repository_address_has_one_source(tmp_path):
    from lora_course.book import REPOSITORY_PLACEHOLDER, copy_book_sources
    from lora_course.install import REPOSITORY

    source = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert REPOSITORY == source
    assert source not in (ROOT / "_config.yml").read_text() and REPOSITORY_PLACEHOLDER in (ROOT / "_config.yml").read_text()
    copy_book_sources(tmp_path)
    assert f"url: {source}" in (tmp_path / "_config.yml").read_text()
    # The Colab cell runs before the course exists on the machine, so it must carry the address:
    # every chapter's cell carries exactly the one in pyproject.toml, and nothing else that looks like one.
    for nb in sorted((ROOT / "chapters").glob("*.ipynb")):
        urls = set(re.findall(r"https://github\.com/[\w./-]+", nb.read_text()))
        assert urls == {source}, nb.name
    assert set(re.findall(r"https://github\.com/[\w./-]+", (ROOT / "book" / "running.md").read_text())) == {source}


# --------------------------------------------------------------------------- the device run, in miniature
@pytest.mark.book  # it executes chapter 1 at gpu-mini
def test_device_run_script_runs_the_check_and_chapters_at_the_miniature(tmp_path):
    """scripts/gpu_device_run.sh on a CPU: the smoke check (3 steps) and chapter 1 at gpu-mini."""
    import os
    import subprocess
    import sys
    import tarfile

    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "PROFILE": "gpu-mini", "CHECK_PROFILE": "smoke",
           "CHECK_STEPS": "3", "CHAPTERS": "01", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_device_run.sh"), "", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["chapters.tar.gz", "device-run.json", "device-run.log", "train-check.json"]
    report = json.loads((out / "device-run.json").read_text())
    assert report["ok"] is True and report["profile"] == "gpu-mini"
    assert report["stages"]["train_check"]["status"] == "ok"
    assert report["chapters"] == {"01-data-formatting": {"status": "ok", "seconds": report["chapters"]["01-data-formatting"]["seconds"]}}
    assert set(report["train_check"]) == {"qlora-r8-all", "lora8bit-r8-all"}
    for r in report["train_check"].values():
        assert r["least_moved_module"][1] >= 0.99 and r["loss_first"] > 0
    with tarfile.open(out / "chapters.tar.gz") as tar:
        assert tar.getnames() == ["01-data-formatting.ipynb"]
    assert "exit status 0" in (out / "device-run.log").read_text()


def test_chapter_4_recipe_builds_its_trainer_at_the_gpu_settings(tmp_path):
    """eval_strategy="epoch" (gpu's) with no eval_dataset: transformers refuses to build the trainer."""
    from lora_course.page import glue_text, guard, say, setup_chapter

    nb = json.loads((ROOT / "chapters" / "04-experiments.ipynb").read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"
             and {"recipe", "recipe-check"} & set(c["metadata"].get("tags", []))]
    source = "\n\n".join("".join(c["source"]) for c in cells)
    namespace = {"SEED": 42, "glue_text": glue_text, "guard": guard, "say": say,
                 "ctx": setup_chapter("gpu-mini", 42, tmp_path)}
    exec(compile(source, "chapter-4-recipe", "exec"), namespace)  # its own check cell raises if the twins part
    trainer_args = namespace["args"]
    assert trainer_args.eval_strategy == "epoch" and trainer_args.save_strategy == "epoch"
    assert namespace["n_trainable"] > 0
