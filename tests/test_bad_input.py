"""The trial of bad command-line input: each refused before any model loads, in one sentence, losing nothing."""

from __future__ import annotations

import math
import typing

import pytest

from lora_course import CourseError, RunConfig
from lora_course.cli import _parse_sets, main
from lora_course.settings import DataSettings, LoraSettings, Optimizer, Scheduler, TrainSettings

TRAIN = ["train", "--experiment", "qlora-r8-qv", "--profile", "smoke"]


def _one_sentence(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


def _refused(argv, tmp_path, capsys) -> str:
    """Run the command line; assert exit 2, one sentence on stderr and no results folder; return the sentence."""
    root = tmp_path / "results"
    try:
        code = main([*argv, "--results", str(root)])
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and _one_sentence(err), err
    assert not root.exists() or not any(root.rglob("*")), sorted(root.rglob("*"))
    return err


# --------------------------------------------------------------------------- --set, by the field's type


@pytest.mark.parametrize("item, message", [
    ("learning_rate=abc", "--set learning_rate=abc is not a finite number: write e.g. --set learning_rate=0.0002."),
    ("learning_rate=NaN", "--set learning_rate=NaN is not a finite number"),
    ("learning_rate=inf", "--set learning_rate=inf is not a finite number"),
    ("learning_rate=-1e-3", "learning_rate must be a positive number, got -0.001: set it to e.g. learning_rate=0.0002."),
    ("lora_alpha=abc", "--set lora_alpha=abc is not a whole number: write e.g. --set lora_alpha=8."),
    ("lora_alpha=0", "lora_alpha must be positive, got 0"),
    ("max_length=0", "max_length must be a positive whole number, got 0: set it to e.g. max_length=256."),
    ("per_device_train_batch_size=0", "per_device_train_batch_size must be a positive whole number, got 0"),
    ("gradient_accumulation_steps=-2", "gradient_accumulation_steps must be a positive whole number, got -2"),
    ("optim=bogus", "--set optim=bogus is not one of 'adamw_torch', 'adamw_torch_fused'"),
    ("eval_strategy=bogus", "--set eval_strategy=bogus is not one of 'no', 'epoch', 'steps'"),
    ("lr_scheduler_type=cosin", "--set lr_scheduler_type=cosin is not one of 'linear', 'cosine'"),
    ("packing=maybe", "--set packing=maybe is not true or false: write e.g. --set packing=false."),
    ("warmup_steps=-1", "warmup_steps must be zero or more, got -1.0"),
    ("target_modules=q_proj,,v_proj", "target_modules must be 'all-linear' or a list of module names, got 'q_proj,,v_proj'"),
])
def test_set_values_are_parsed_by_type_and_checked(item, message, tmp_path, capsys):
    err = _refused([*TRAIN, "--set", item], tmp_path, capsys)
    assert message in err, err


def test_set_values_take_their_fields_types():
    train, lora, _ = _parse_sets(["learning_rate=1e-4", "max_length=128", "packing=true", "pad_to_multiple_of=none",
                                  "optim=sgd", "target_modules=q_proj", "lora_alpha=16", "lora_dropout=0"])
    assert train == {"learning_rate": 1e-4, "max_length": 128, "packing": True, "pad_to_multiple_of": None,
                     "optim": "sgd"}
    assert lora == {"target_modules": ("q_proj",), "lora_alpha": 16, "lora_dropout": 0.0}
    assert _parse_sets(["target_modules=q_proj, k_proj"])[1] == {"target_modules": ("q_proj", "k_proj")}
    assert _parse_sets(["target_modules=all-linear"])[1] == {"target_modules": "all-linear"}
    assert isinstance(_parse_sets(["warmup_steps=3"])[0]["warmup_steps"], float)


def test_max_steps_zero_is_refused(tmp_path, capsys):
    err = _refused([*TRAIN, "--max-steps", "0"], tmp_path, capsys)
    assert "max_steps must be a positive step count, or -1 to train num_train_epochs (1.0), got 0" in err


@pytest.mark.parametrize("kwargs, message", [
    ({"n_rows": 0}, "n_rows must be a positive row count"),
    ({"test_size": 0}, "test_size must be a share between 0 and 1 or a whole row count from 1 up, got 0"),
    ({"test_size": 2.5}, "test_size must be a share between 0 and 1 or a whole row count from 1 up, got 2.5"),
    ({"test_size": math.nan}, "test_size must be a finite number, got nan"),
    ({"overlong": "cut"}, "overlong must be one of 'truncate', 'drop', got 'cut'"),
    ({"source": " "}, "source must be a text, got ' '"),
])
def test_data_settings_check_themselves(kwargs, message):
    with pytest.raises(CourseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DataSettings(**kwargs)


def test_lora_settings_check_target_modules():
    assert LoraSettings(target_modules=["q_proj"]).target_modules == ("q_proj",)  # a list, as LoraConfig takes
    with pytest.raises(CourseError, match="target_modules must be 'all-linear' or a list of module names, got 'q_proj'"):
        LoraSettings(target_modules="q_proj")
    with pytest.raises(CourseError, match="bias must be 'none', 'all' or 'lora_only'"):
        LoraSettings(bias="some")


def test_every_profile_and_saved_config_passes_its_own_checks():
    from lora_course.presets import PROFILES

    for name in PROFILES:
        cfg = RunConfig.create("qlora-r8-all", name)
        assert RunConfig.from_json(cfg.to_json()) == cfg


def test_the_trainers_choices_are_the_installed_transformers_ones():
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    assert set(typing.get_args(Optimizer)) == {o.value for o in OptimizerNames}
    assert set(typing.get_args(Scheduler)) == {s.value for s in SchedulerType}
    assert TrainSettings().optim in typing.get_args(Optimizer)


# --------------------------------------------------------------------------- the rest of the trial


def test_the_base_model_experiment_has_nothing_to_train(tmp_path, capsys):
    err = _refused(["train", "--experiment", "baseline", "--profile", "smoke"], tmp_path, capsys)
    assert "The experiment 'baseline' is the untuned base model: it has nothing to train" in err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--experiment", "qlora-r8-qv", "--profile", "smoke", "--base", "--max-new-tokens", "-5"],
     "argument --max-new-tokens: got -5; give 1 or more"),
    (["generate", "--experiment", "qlora-r8-qv", "--profile", "smoke", "--base", "--max-new-tokens", "0"],
     "argument --max-new-tokens: got 0; give 1 or more"),
    (["bench", "--profile", "smoke", "--repeats", "0"], "argument --repeats: got 0; give 1 or more"),
    (["bench", "--profile", "smoke", "--rows", "0"], "argument --rows: got 0; give 1 or more"),
    (["bench", "--profile", "smoke", "--rows", "many"], "argument --rows: 'many' is not a whole number; give 1 or more"),
    (["train-check", "--profile", "smoke", "--steps", "0", "--out", "x.json"], "argument --steps: got 0; give 1 or more"),
])
def test_counts_must_be_one_or_more(argv, message, tmp_path, capsys):
    err = _refused(argv, tmp_path, capsys)
    assert message in err, err


def test_library_counts_are_checked_too(smoke_tokenizer):
    from lora_course.bench import bench
    from lora_course.generate import generate, time_generation
    from lora_course.presets import PROFILES

    with pytest.raises(CourseError, match="max_new_tokens must be a whole number of 1 or more, got 0"):
        generate(None, smoke_tokenizer, "a prompt", max_new_tokens=0)
    with pytest.raises(CourseError, match="repeats must be a whole number of 1 or more, got 0"):
        time_generation(None, smoke_tokenizer, ["a prompt"], repeats=0)
    with pytest.raises(CourseError, match="rows must be a whole number of 1 or more, got 0"):
        bench(PROFILES["smoke"], "qlora-r8-qv", rows=0)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_resume_on_a_machine_without_gpu_says_no_gpu(tmp_path, capsys):
    err = _refused(["train", "--experiment", "qlora-r8-qv", "--profile", "gpu", "--resume"], tmp_path, capsys)
    assert "needs a CUDA GPU and none is visible here" in err


def test_a_small_data_file_can_be_fitted_from_the_command_line(tmp_path, capsys):
    import pandas as pd

    rows = tmp_path / "ten.csv"
    pd.DataFrame({"product": [f"Lamp {i}" for i in range(10)], "category": ["Lamp"] * 10,
                  "description": [f"A lamp, model {i}." for i in range(10)]}).to_csv(rows, index=False)
    err = _refused([*TRAIN, "--data", str(rows)], tmp_path, capsys)
    assert "Asked for 48 rows but the dataset from" in err and "lower n_rows (--set n_rows=N" in err
    err = _refused([*TRAIN, "--data", str(rows), "--set", "n_rows=none", "--set", "test_size=20"], tmp_path, capsys)
    assert "A test split of 20 rows needs more than the 10 usable rows: lower test_size (--set test_size=N" in err
    train, lora, data = _parse_sets(["n_rows=none", "test_size=2", "overlong=drop"])
    assert data == {"n_rows": None, "test_size": 2.0, "overlong": "drop"} and not train and not lora
    assert RunConfig.create("qlora-r8-qv", "smoke", data=data).profile.data.test_size == 2


@pytest.mark.parametrize("name", ["notes.txt", "data/rows.txt", "./rows", "~/missing/rows.csv", "a/b/c"])
def test_a_missing_path_is_named_as_a_missing_file(name, tmp_path, capsys, monkeypatch):
    import lora_course.pipeline as pipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("a tokenizer or model was loaded before the data source was checked")

    monkeypatch.setattr(pipeline, "load_tokenizer", no_loading)
    monkeypatch.setattr(pipeline, "load_model", no_loading)
    monkeypatch.chdir(tmp_path)
    err = _refused([*TRAIN, "--data", name], tmp_path, capsys)
    assert "does not exist: check the path" in err and "model hub" not in err, err


def test_a_text_file_is_named_as_the_wrong_format(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("Lamp, a lamp\n")
    err = _refused([*TRAIN, "--data", str(notes)], tmp_path, capsys)
    assert "notes.txt is not a CSV, JSONL or parquet file (suffix '.txt')" in err


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, capsys, monkeypatch):
    import lora_course.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train", interrupted)
    code = main([*TRAIN, "--results", str(tmp_path / "results")])
    captured = capsys.readouterr()
    # Progress bars of the data preparation may stand before it; the interruption itself is one line.
    lines = [line for line in captured.err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 130 and lines[-1] == "interrupted: nothing was written.", captured.err
    assert "Traceback" not in captured.err and sum("interrupted" in line for line in lines) == 1, captured.err
    assert not (tmp_path / "results" / "smoke").exists() or not any((tmp_path / "results" / "smoke").iterdir())
