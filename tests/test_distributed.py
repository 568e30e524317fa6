"""Data-parallel training under `accelerate launch`, on two CPU processes joined by gloo."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from lora_course.distributed import MANY, launch_command, load_comparison

# Two processes x accumulation 1 must take the same optimizer steps as one process x
# accumulation 2 on the same rows: the gradients are the same sums, in another order.
LOSS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def compared(mini_book):
    """Chapter 9's comparison, run by the miniature book at the smoke profile (fp32, so the sums agree to
    float rounding, whatever the page's profile): one process with accumulation 2, then two launched by
    accelerate with accumulation 1 (compare_process_counts)."""
    out, failed = mini_book
    assert not [c for c in failed if c.startswith("09")]
    root = out / "results"
    return load_comparison(root, "smoke", processes=2), root


def test_two_processes_take_the_same_steps_as_one_with_accumulation(compared):
    cmp, _ = compared
    assert len(cmp.losses_one) == len(cmp.losses_many) == 5
    assert cmp.max_abs_difference < LOSS_TOLERANCE
    assert cmp.losses_many[-1] < cmp.losses_many[0]  # and they trained


def test_one_results_folder_written_once_by_the_main_process(compared):
    from lora_course.merge import load_adapter_model

    _, root = compared
    folder = root / "smoke" / MANY.format(2)
    assert sorted(p.name for p in folder.iterdir()) == [".lora_course", "adapter", "config.json", "losses.json",
                                                        "metrics.json"]
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".ddp-")] == []  # no leftover scratch folder
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 5
    config = json.loads((folder / "config.json").read_text())
    assert config["profile"]["train"]["gradient_accumulation_steps"] == 1  # 2 // 2 processes: --keep-global-batch
    model = load_adapter_model("smoke-llama", folder / "adapter", "nf4")
    assert sum("lora_A" in n for n, _ in model.named_parameters()) == 4  # q and v in 2 layers


def test_a_failing_process_fails_the_launch_with_its_error(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    # Python imports sitecustomize at start-up: on rank 1 only, training raises.
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import lora_course.train as t\n"
        "    def boom(*a, **k):\n"
        "        raise RuntimeError('simulated failure on rank 1')\n"
        "    t.train = boom\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = launch_command(2, ["--experiment", "qlora-r8-qv", "--profile", "smoke", "--results", str(tmp_path / "r"),
                             "--set", "gradient_accumulation_steps=2", "--keep-global-batch"])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "simulated failure on rank 1" in proc.stderr  # the process's own traceback, then one line pointing at it
    assert proc.stderr.splitlines()[-1] == "error: Process 1 of 2 failed with exit status 1: its own output above says why."
    assert "ChildFailedError" not in proc.stderr and "torch/distributed/elastic" not in proc.stderr  # no launcher report
    assert not (tmp_path / "r" / "smoke" / "qlora-r8-qv" / "config.json").exists()
    leftovers = [p for p in (tmp_path / "r").rglob("*") if p.is_dir() and p.name not in ("smoke",)]
    assert leftovers == []  # no half-written run folder


def test_a_refusal_inside_the_processes_is_said_once(tmp_path):
    """Bad data is found by every process after the launch: one sentence, exit 2, no launcher report, no folder."""
    import pandas as pd

    rows = tmp_path / "ten.csv"
    pd.DataFrame({"product": [f"Lamp {i}" for i in range(10)], "category": ["Lamp"] * 10,
                  "description": [f"A lamp, model {i}." for i in range(10)]}).to_csv(rows, index=False)
    cmd = launch_command(2, ["--experiment", "qlora-r8-qv", "--profile", "smoke", "--results", str(tmp_path / "r"),
                             "--data", str(rows)])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"error: Asked for 48 rows but the dataset from {rows} has 10 usable rows: lower n_rows "
                           "(--set n_rows=N on the command line) or pass a larger dataset.\n")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*"))


def test_under_a_launcher_only_the_first_process_to_fail_speaks(tmp_path, capsys, monkeypatch):
    """Whichever process fails first (here rank 1) says the sentence; the others, failing after it, stay quiet."""
    from lora_course.cli import say_once

    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (1, 0):
        (tmp_path / "attempt_0" / str(rank)).mkdir(parents=True)
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "attempt_0" / str(rank) / "error.json"))
        say_once("error: the same refusal.")
    assert capsys.readouterr().err == "error: the same refusal.\n"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "attempt_1" / "0" / "error.json"))
    (tmp_path / "attempt_1" / "0").mkdir(parents=True)
    say_once("error: a restarted attempt says it again.")  # a new attempt, a new scratch folder
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")
    say_once("error: another launcher: each process says it.")
    say_once("error: another launcher: each process says it.")
    assert capsys.readouterr().err.splitlines() == ["error: a restarted attempt says it again."] + [
        "error: another launcher: each process says it."] * 2


def test_processes_is_taken_out_of_the_arguments_the_processes_get():
    from lora_course.cli import _without_processes

    args = ["--experiment", "qlora-r8-qv", "--processes", "2", "--name", "x", "--proc=3", "--keep-global-batch"]
    assert _without_processes(args) == ["--experiment", "qlora-r8-qv", "--name", "x", "--keep-global-batch"]


def test_keep_global_batch_needs_a_divisible_accumulation(capsys, monkeypatch):
    from lora_course.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--experiment", "qlora-r8-qv", "--profile", "smoke", "--keep-global-batch"]) == 2
    assert "needs gradient accumulation (1) divisible by the 2 processes" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")  # --processes 2 checks it before it launches anything
    assert main(["train", "--experiment", "qlora-r8-qv", "--profile", "smoke", "--processes", "2",
                 "--keep-global-batch"]) == 2
    assert "needs gradient accumulation (1) divisible by the 2 processes" in capsys.readouterr().err


def test_accelerate_reads_the_shipped_configs():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    ddp = load_config_from_file(str(root / "ddp.yaml"))
    fsdp = load_config_from_file(str(root / "fsdp-qlora.yaml"))
    assert ddp.distributed_type == "MULTI_GPU" and fsdp.distributed_type == "FSDP"
    assert fsdp.fsdp_config["fsdp_use_orig_params"] is False
    assert fsdp.fsdp_config["fsdp_cpu_ram_efficient_loading"] is True
    for path in root.glob("*.yaml"):
        assert "accelerate launch --config_file configs/accelerate/" + path.name in path.read_text()
