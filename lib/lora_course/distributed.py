"""Data-parallel training with Accelerate, checked on CPU processes.

    launch_command(n, train_args)        `accelerate launch` for n processes of `python -m lora_course train`
    compare_process_counts(profile, ...)  1 process x accumulation k against k processes x accumulation 1

On a machine without GPUs, `accelerate launch --multi_gpu --num_processes 2`
starts two processes through torchrun; the trainer, told to use the CPU, joins
them with the gloo backend. Each process trains on its own shard of every
global batch; gradients are averaged before each optimizer step, so k
processes with accumulation 1 take the same steps as one process with
accumulation k, up to the order of floating-point sums (dropout is switched
off for the comparison: each process draws its own dropout masks).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import CourseError


def launch_command(processes: int, train_args: list[str]) -> list[str]:
    """The command line that trains with `processes` data-parallel processes on this machine."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "lora_course", "train", *train_args]


@dataclass
class ProcessComparison:
    processes: int
    steps: int
    losses_one: list[float]  # one process, accumulation = processes
    losses_many: list[float]  # `processes` processes, accumulation 1
    seconds_one: float  # training time, from the trainers' own measurement
    seconds_many: float

    @property
    def max_abs_difference(self) -> float:
        return max(abs(a - b) for a, b in zip(self.losses_one, self.losses_many))


def compare_process_counts(profile: str, results_dir: str | Path, processes: int = 2, steps: int = 5,
                           experiment: str = "qlora-r8-qv") -> ProcessComparison:
    """Train the same rows with one process (accumulation = processes, in this process) and with
    `processes` processes launched by accelerate (accumulation 1).

    `steps` should stay within the first epoch of the profile's training rows:
    past it, the processes' data shards are padded differently from one process's batches.
    """
    from .config import RunConfig, get_experiment
    from .pipeline import run

    results_dir = Path(results_dir)
    exp = get_experiment(experiment).with_lora(lora_dropout=0.0)
    one = RunConfig.create(exp, profile, results_dir=results_dir, name=ONE, max_steps=steps,
                           gradient_accumulation_steps=processes)
    run(one, retrain=True)
    cmd = launch_command(processes, ["--experiment", experiment, "--profile", profile, "--results", str(results_dir),
                                     "--retrain", "--max-steps", str(steps), "--set", "lora_dropout=0",
                                     "--set", f"gradient_accumulation_steps={processes}", "--keep-global-batch",
                                     "--name", MANY.format(processes)])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CourseError(f"The {processes}-process run failed (exit {proc.returncode}): {_last_error(proc.stderr)}")
    return load_comparison(results_dir, profile, processes)


ONE, MANY = "ddp/one-process", "ddp/{}-processes"  # run folders under results/<profile>/


def load_comparison(results_dir: str | Path, profile: str, processes: int = 2) -> ProcessComparison:
    """The comparison from the two finished runs on disk; times are the trainers' own training time."""
    folder = Path(results_dir) / profile
    runs = {}
    for label, name in (("one", ONE), ("many", MANY.format(processes))):
        if not (folder / name / "config.json").exists():
            raise CourseError(f"No finished run {name!r} in {folder}: run compare_process_counts first.")
        losses = [x["loss"] for x in json.loads((folder / name / "losses.json").read_text())["train"]]
        wall = json.loads((folder / name / "metrics.json").read_text())["wall_time_s"]
        runs[label] = (losses, wall)
    return ProcessComparison(processes, len(runs["one"][0]), runs["one"][0], runs["many"][0],
                             runs["one"][1], runs["many"][1])


def _last_error(stderr: str) -> str:
    """The most telling line of a failed launch: the last 'error:' or exception line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error:" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"
