"""Data-parallel training under `accelerate launch`, on two CPU processes joined by gloo."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from lora_course.distributed import launch_command, load_comparison

# Two processes x accumulation 1 must take the same optimizer steps as one process x
# accumulation 2 on the same rows: the gradients are the same sums, in another order.
LOSS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def compared(smoke_book):
    """Chapter 9, run by the smoke book, launched one process and then two (compare_process_counts)."""
    out, failed = smoke_book
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
    folder = root / "smoke" / "ddp" / "2-processes"
    assert sorted(p.name for p in folder.iterdir()) == [".lora_course", "adapter", "config.json", "losses.json",
                                                        "metrics.json"]
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no leftover scratch folder
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
    assert proc.returncode != 0
    assert "simulated failure on rank 1" in proc.stderr
    assert not (tmp_path / "r" / "smoke" / "qlora-r8-qv" / "config.json").exists()
    leftovers = [p for p in (tmp_path / "r").rglob("*") if p.is_dir() and p.name not in ("smoke",)]
    assert leftovers == []  # no half-written run folder


def test_keep_global_batch_needs_a_divisible_accumulation(capsys, monkeypatch):
    from lora_course.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--experiment", "qlora-r8-qv", "--profile", "smoke", "--keep-global-batch"]) == 2
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
