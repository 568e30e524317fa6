"""Bad input: one clear sentence naming the problem and the fix, and no half-written results."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pandas as pd
import pytest
import torch

from lora_course import PROFILES, CourseError, RunConfig
from lora_course.cli import COMMANDS, build_parser, main
from lora_course.data import load_table
from lora_course.pipeline import run


def _no_results(root):
    """No run folder and no temporary folder anywhere under `root`.

    (An MLflow store, results/mlflow.db, may record a run that failed in training.)
    """
    if not root.exists():
        return True
    return not [p for p in root.rglob("*") if p.is_dir() and (p.parent.name in PROFILES or ".tmp" in p.name)]


def _one_sentence(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


# One bad input for every subcommand, and the sentence it must produce.
BAD = {
    "list": (["list", "--verbose"], "unrecognized arguments: --verbose"),
    "params": (["params", "--model", "gpt-5"], "Unknown model 'gpt-5': choose one of open_llama_3b_v2"),
    "train": (["train", "--experiment", "qlora-r4", "--profile", "smoke"], "Unknown experiment 'qlora-r4'"),
    "generate": (["generate", "--experiment", "qlora-r8-qv", "--profile", "smoke"], "No adapter in"),
    "merge": (["merge", "--experiment", "qlora-r8-qv", "--profile", "tpu"], "Unknown profile 'tpu': choose one of"),
    "bench": (["bench", "--experiment", "qlora-r8-qv", "--profile", "smoke", "--rows", "100000"],
              "Asked for a slice of 100000 training rows but the split has"),
    "sweep": (["sweep", "--profile", "tpu"], "Unknown profile 'tpu'"),
    "train-check": (["train-check", "--profile", "tpu", "--out", "x.json"], "Unknown profile 'tpu'"),
    "book": (["book", "--profile", "tpu"], "Unknown profile 'tpu'"),
    "check-book": (["check-book", "--html", "x"], "unrecognized arguments: --html x"),
    "device-run": (["device-run", "--profile", "tpu", "--out", "o", "--work", "w"], "Unknown profile 'tpu'"),
}


def test_every_subcommand_has_a_bad_input_case():
    assert set(BAD) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(BAD))
def test_every_subcommand_answers_bad_input_in_one_sentence(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, message = BAD[command]
    if command in ("train", "generate", "merge", "bench", "sweep", "train-check"):
        argv = argv + ["--results", str(tmp_path / "results")]
    with pytest.raises(SystemExit) as stop:
        raise SystemExit(main(argv))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and _one_sentence(err), err
    assert _no_results(tmp_path / "results")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([command, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m lora_course {command}")
    assert set(COMMANDS) == set(build_parser()._subparsers._group_actions[0].choices)


def test_the_module_entry_point_prints_help():
    out = subprocess.run([sys.executable, "-m", "lora_course", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m lora_course")


@pytest.mark.parametrize("r", ["0", "-4"])
def test_params_refuses_a_rank_below_one(r, capsys):
    assert main(["params", "--model", "open_llama_3b_v2", "--r", r]) == 2
    err = capsys.readouterr().err
    assert f"must be a positive integer, got {int(r)}: use r >= 1" in err and _one_sentence(err)


@pytest.mark.parametrize("field, argv", [("product", ["--product", "  "]), ("category", ["--category", ""])])
def test_generate_refuses_an_empty_product_or_category(field, argv, capsys, tmp_path):
    code = main(["generate", "--experiment", "qlora-r8-qv", "--profile", "smoke", "--base",
                 "--results", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and f"The {field} is empty: give a {field} name" in err and _one_sentence(err)


# --------------------------------------------------------------------------- bad files


def test_a_broken_jsonl_line_is_named_by_its_number(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"product": "Lamp", "category": "Lamp", "description": "A lamp."}\n'
                   '\n'
                   '{"product": "Fan", "category": "Fan", "description": "A fan.",\n')
    with pytest.raises(CourseError, match=r"rows.jsonl, line 3, is not valid JSON .*fix that line"):
        load_table(bad)
    not_objects = tmp_path / "list.jsonl"
    not_objects.write_text("[1, 2]\n")
    with pytest.raises(CourseError, match="line 1, holds a list, not an object"):
        load_table(not_objects)


def test_a_file_that_is_not_its_suffixs_format(tmp_path):
    fake = tmp_path / "rows.parquet"
    fake.write_text("product,category,description\nLamp,Lamp,A lamp.\n")
    with pytest.raises(CourseError, match="rows.parquet is not a parquet file .*give it the suffix of its real format"):
        load_table(fake)
    binary = tmp_path / "rows.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81\x82" * 20)
    with pytest.raises(CourseError, match="rows.csv is not a readable CSV file"):
        load_table(binary)


def test_an_unreadable_path(tmp_path, monkeypatch):
    folder = tmp_path / "rows.csv"
    folder.mkdir()
    with pytest.raises(CourseError, match="rows.csv is a folder, not a data file"):
        load_table(folder)
    locked = tmp_path / "locked.jsonl"
    locked.write_text("{}\n")
    real_open = open

    def no_permission(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_permission)
    with pytest.raises(CourseError, match="Cannot read .*locked.jsonl \\(Permission denied\\): check the file's permissions"):
        load_table(locked)


def test_bad_files_through_the_command_line_change_nothing(tmp_path, capsys):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"product": "Lamp"\n')
    code = main(["train", "--experiment", "qlora-r8-qv", "--profile", "smoke", "--data", str(bad),
                 "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and "line 1, is not valid JSON" in err and _one_sentence(err)
    assert _no_results(tmp_path / "results")


def test_dataset_without_required_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"product": ["Lamp"], "text": ["A lamp."]}).to_csv(bad, index=False)
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path / "results", data={"source": str(bad)})
    with pytest.raises(CourseError, match=r"lacks the column\(s\) category, description: it needs product, category, description"):
        run(cfg)
    assert _no_results(tmp_path / "results")


def test_dataset_with_only_empty_descriptions(tmp_path):
    bad = tmp_path / "empty.jsonl"
    pd.DataFrame({"product": ["Lamp", "Kettle"], "category": ["Desk Lamp", "Kettle"], "description": ["", "   "]}).to_json(
        bad, orient="records", lines=True
    )
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path / "results", data={"source": str(bad)})
    with pytest.raises(CourseError, match="no usable rows after cleaning"):
        run(cfg)
    assert _no_results(tmp_path / "results")


# --------------------------------------------------------------------------- settings and environment


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_profile_without_cuda_is_an_error(tmp_path, capsys):
    assert main(["train", "--experiment", "qlora-r8-qv", "--profile", "gpu", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU and none is visible here: use --profile cpu" in err and _one_sentence(err)
    assert _no_results(tmp_path)


def test_bitsandbytes_missing(monkeypatch, tmp_path):
    real = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        return None if name == "bitsandbytes" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path)
    with pytest.raises(CourseError, match=r"needs bitsandbytes, which is not installed: pip install bitsandbytes"):
        run(cfg)
    assert _no_results(tmp_path)
    # Float LoRA does not need it.
    from lora_course.model import check_quantization

    check_quantization("none")


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 8}, "Unknown training setting\\(s\\) batch_size: valid names are"),
    ({"data": {"rows": 3}}, "Unknown data setting\\(s\\) rows: valid names are"),
    ({"precision": {"compute_dtype": "fp8"}}, "Unknown compute_dtype 'fp8': use one of fp32, bf16, fp16"),
])
def test_unknown_settings(kwargs, message):
    with pytest.raises(CourseError, match=message):
        RunConfig.create("qlora-r8-qv", "smoke", **kwargs)


def test_set_names_a_setting_that_does_not_exist(capsys, tmp_path):
    assert main(["train", "--experiment", "qlora-r8-qv", "--profile", "smoke", "--set", "lr=1e-4",
                 "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--set lr: no trainer, LoRA or data setting has that name" in err and _one_sentence(err)


def test_failed_training_leaves_no_folder(tmp_path, monkeypatch):
    import lora_course.pipeline as pipeline

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during training")

    monkeypatch.setattr(pipeline, "train", boom)
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    assert _no_results(tmp_path)
