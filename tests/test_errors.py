"""Bad input: one clear error naming the problem and the fix, and no half-written results."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pandas as pd
import pytest
import torch

from lora_course import PROFILES, CourseError, RunConfig
from lora_course.cli import main
from lora_course.train import run_experiment


def _no_results(root):
    """No experiment folder and no temporary folder anywhere under `root`.

    (An MLflow store, results/mlflow.db, may record a run that failed in training.)
    """
    if not root.exists():
        return True
    return not [p for p in root.rglob("*") if p.is_dir() and (p.parent.name in PROFILES or ".tmp" in p.name)]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["params", "--model", "gpt-5"], "Unknown model 'gpt-5': choose one of open_llama_3b_v2"),
        (["train", "--experiment", "qlora-r4", "--profile", "smoke"], "Unknown experiment 'qlora-r4': choose one of qlora-r8-qv"),
        (["train", "--experiment", "qlora-r8-qv", "--profile", "tpu"], "Unknown profile 'tpu': choose one of smoke, cpu, gpu"),
    ],
)
def test_unknown_names(argv, message, capsys, tmp_path):
    assert main(argv + (["--results", str(tmp_path)] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1  # one sentence, no traceback
    assert _no_results(tmp_path)


def test_dataset_without_required_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"product": ["Lamp"], "text": ["A lamp."]}).to_csv(bad, index=False)
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path / "results", data_source=str(bad))
    with pytest.raises(CourseError, match=r"lacks the column\(s\) category, description: it needs product, category, description"):
        run_experiment(cfg)
    assert _no_results(tmp_path / "results")


def test_dataset_with_only_empty_descriptions(tmp_path):
    bad = tmp_path / "empty.jsonl"
    pd.DataFrame({"product": ["Lamp", "Kettle"], "category": ["Desk Lamp", "Kettle"], "description": ["", "   "]}).to_json(
        bad, orient="records", lines=True
    )
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path / "results", data_source=str(bad))
    with pytest.raises(CourseError, match="no usable rows after cleaning"):
        run_experiment(cfg)
    assert _no_results(tmp_path / "results")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_profile_without_cuda_is_an_error(tmp_path, capsys):
    assert main(["train", "--experiment", "qlora-r8-qv", "--profile", "gpu", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU and none is visible here: use --profile cpu" in err
    assert _no_results(tmp_path)


def test_bitsandbytes_missing(monkeypatch, tmp_path):
    real = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        return None if name == "bitsandbytes" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path)
    with pytest.raises(CourseError, match=r"needs bitsandbytes, which is not installed: pip install bitsandbytes"):
        run_experiment(cfg)
    assert _no_results(tmp_path)
    # Float LoRA does not need it.
    from lora_course.model import check_quantization

    check_quantization("none")


def test_unknown_training_setting():
    with pytest.raises(CourseError, match="Unknown training setting\\(s\\) batch_size: valid names are"):
        RunConfig.create("qlora-r8-qv", "smoke", batch_size=8)


def test_failed_training_leaves_no_folder(tmp_path, monkeypatch):
    import lora_course.train as train_mod

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during training")

    monkeypatch.setattr(train_mod, "train_model", boom)
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(cfg)
    assert _no_results(tmp_path)


def test_generate_without_trained_adapter(tmp_path, capsys):
    assert main(["generate", "--experiment", "qlora-r8-qv", "--profile", "smoke", "--results", str(tmp_path)]) == 2
    assert "No adapter in" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["params", "train", "generate", "merge", "list"])
def test_every_subcommand_has_help(command):
    out = subprocess.run([sys.executable, "-m", "lora_course", command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.startswith(f"usage: python -m lora_course {command}")
