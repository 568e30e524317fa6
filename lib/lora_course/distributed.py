"""Data-parallel training with Accelerate, checked on CPU processes.

    launch(n, train_args)                `accelerate launch` of n processes of `python -m lora_course train`, in this process
    launch_command(n, train_args)        the command line that does it (`python -m lora_course train --processes n ...`)
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

import logging
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch.distributed.run  # noqa: F401  (creates the launcher's loggers, which launch quietens)
from accelerate.commands.launch import launch_command as accelerate_launch
from accelerate.commands.launch import launch_command_parser
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from .config import RunConfig
from .errors import INTERRUPTED, REFUSED, CourseError
from .pipeline import run
from .presets import get_experiment
from .results import load_run


def launch_command(processes: int, train_args: list[str]) -> list[str]:
    """The command line that trains with `processes` data-parallel processes on this machine."""
    return [sys.executable, "-m", "lora_course", "train", "--processes", str(processes), *train_args]


def launch(processes: int, train_args: list[str]) -> int:
    """Run `accelerate launch` for `processes` processes of `python -m lora_course train train_args` and return
    the exit status; a failure is reported once, in one sentence, without the launcher's traceback.

    A process that refuses its input or is interrupted has said so itself (once for all of them, see
    cli.say_once) and exits 2 or 130: that status is returned as it is. Any other failure of a process
    (a crash, whose traceback that process printed, or a signal) becomes one CourseError here.
    """
    args = launch_command_parser().parse_args(
        ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "lora_course", "train", *train_args])
    # The launcher logs each failure (exit codes, the SIGTERM it sends the others): the processes say it better.
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("torch.distributed")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        accelerate_launch(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode in (REFUSED, INTERRUPTED):
            return failure.exitcode
        if failure.exitcode < 0:
            name = signal.Signals(-failure.exitcode).name
            raise CourseError(f"Process {rank} of {processes} was stopped by {name} (SIGKILL is often the system "
                              f"out of memory): run with fewer processes or rows.") from None
        raise CourseError(f"Process {rank} of {processes} failed with exit status {failure.exitcode}: its own "
                          f"output above says why.") from None
    except SignalException:  # Ctrl-C or a stop of the launcher: the processes, stopped too, have said what was kept
        return INTERRUPTED
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return 0


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


ONE, MANY = "ddp-one-process", "ddp-{}-processes"  # run folders under results/<profile>/, one name each


def load_comparison(results_dir: str | Path, profile: str, processes: int = 2) -> ProcessComparison:
    """The comparison from the two finished runs on disk; times are the trainers' own training time."""
    folder = Path(results_dir) / profile
    runs = {}
    for label, name in (("one", ONE), ("many", MANY.format(processes))):
        finished = load_run(folder / name)
        if finished is None:
            raise CourseError(f"No finished run {name!r} in {folder}: run compare_process_counts first.")
        runs[label] = ([x["loss"] for x in finished.result.losses], finished.result.wall_time_s)
    return ProcessComparison(processes, len(runs["one"][0]), runs["one"][0], runs["many"][0],
                             runs["one"][1], runs["many"][1])


def _last_error(stderr: str) -> str:
    """The most telling line of a failed launch: the course's sentence, else a process's exception, else the last."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(("error:", "interrupted:"))]
    if said and not said[-1].startswith("error: Process "):  # a refusal, not launch()'s pointer to the output
        return said[-1][:300]
    raised = [line for line in lines if "Error:" in line and not line.startswith("error:")]
    return (raised or said or lines or ["no output"])[-1][:300]
