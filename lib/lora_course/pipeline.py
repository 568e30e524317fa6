"""The one path from a config to results: data -> model -> LoRA -> train -> results (-> evaluation).

    run(config, evaluate="full")      train (or reuse) one run, evaluate it on the held-out rows
    run_all([(config, "full"), ...])  several runs, `profile.parallel_runs` at a time, each as run() would
    threads_per_run(parallel_runs)    the threads each of those runs gets
    finished(config, evaluate)        whether run() would only read what is on disk

Experiments, the untuned base model, seeds, sweep points and benchmark settings
are all this function with other configs. A finished run with the same config is
reused; so is its evaluation.

Under `accelerate launch` every process trains on its shard of the rows and only
the main process writes the results folder, the adapter and the MLflow run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import CancelledError, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from accelerate import PartialState
from transformers import TrainerCallback

from . import quiet
from .config import RunConfig
from .data import check_source, held_out, prepare_data
from .errors import CourseError
from .evaluate import cached_evaluation, evaluate_model
from .lora import attach_lora, parameter_report
from .merge import load_adapter_model
from .model import check_device, check_quantization, count_parameters, load_model, load_tokenizer
from .precision import for_profile
from .results import (
    CHECKPOINTS,
    Evaluation,
    Run,
    check_replaceable,
    check_writable,
    clear_dead_scratch,
    clear_stale,
    load_run,
    mark,
    newest_checkpoint,
    read_json,
    scratch_dir,
    write_json,
    write_run,
)
from .timing import TIMES_ENV, record, timed, totals
from .tracking import flatten, track_run
from .train import StepTimer, build_trainer, train

# The trainer's folder in the temp dir for a run that saves no checkpoints: lora_course_trainer_<pid>-<random>.
# One left by a killed process is removed by the next run.
SCRATCH_PREFIX = "lora_course_trainer_"


def _process_state(device: str):
    """(is_main, world_size, barrier): accelerate's view when launched by it, else a single process.

    On a CPU the processes talk through gloo: accelerate's state must be made
    with cpu=True before anything else creates it (the trainer asks the same).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        state = PartialState(cpu=device == "cpu")
        return state.is_main_process, state.num_processes, state.wait_for_everyone
    return True, 1, lambda: None


def run(config: RunConfig, *, evaluate: str = "none", retrain: bool = False, resume: bool = False,
        callbacks: Sequence = (), keep_model: bool = False) -> Run:
    """Train (or reuse) one run and write results/<profile>/<name>/; evaluate it when asked.

    evaluate   "none", "loss" (response loss on the held-out rows) or "full" (also generations and text metrics)
    retrain    train again even if a finished run with the same config is on disk
    resume     continue from the newest checkpoint in the run's folder (after a crash or a disconnect)
    keep_model return the run with its model and tokenizer still loaded
    """
    if evaluate not in ("none", "loss", "full"):
        raise CourseError(f"Unknown evaluation {evaluate!r}: use 'none', 'loss' or 'full'.")
    if resume and retrain:
        raise CourseError("--resume and --retrain contradict each other: resume continues a run, retrain starts afresh.")
    previous = None if resume else load_run(config.out_dir)
    if previous is not None and not retrain and previous.config.same_run_as(config):
        previous.reused = True
        return _evaluated(previous, config, evaluate, keep_model)
    check_run_folder(config)
    if previous is not None and not previous.config.same_run_as(config) and os.environ.get("RANK", "0") == "0":
        changed = _differences(previous.config, config)
        print(f"replacing the finished run in {config.out_dir}, trained with other settings ({changed}); "
              "a new name keeps both.")
    return _train(config, evaluate, resume, list(callbacks), keep_model)


# --------------------------------------------------------------------------- several runs at once
FAILURES = (CourseError, RuntimeError, ValueError)  # what a run reports as its own failure (bad settings, a crash)


def run_all(requests: Sequence[tuple[RunConfig, str]], *, retrain: bool = False, keep_going: bool = False) -> list:
    """`run(config, evaluate=...)` for every (config, evaluate) pair; the runs in the order given.

    With the profile's `parallel_runs` above 1, the runs still to train or evaluate go that
    many at a time, each in a process of its own with cores / parallel_runs threads (on 2
    cores, two runs on one thread each train 1.4x and generate 2.3x as fast as one run on
    two: `presets.PROFILES["cpu"]`). Each writes its folder as `run` does, and what it prints
    is printed here when it ends. The same run on one thread and on two differs only in
    float rounding.

    keep_going  a run that fails is returned as its exception, in its place, and the others go
                on; otherwise the first failure is raised once the runs under way have finished.
    """
    requests = [(config, evaluate) for config, evaluate in requests]
    workers = max((config.profile.parallel_runs for config, _ in requests), default=1)
    todo = [i for i, (config, evaluate) in enumerate(requests) if retrain or not finished(config, evaluate)]
    errors: dict[int, BaseException] = {}
    if workers > 1 and len(todo) > 1:
        todo.sort(key=lambda i: _longest_first(*requests[i]))
        errors = _run_elsewhere_all([requests[i] for i in todo], todo, workers, retrain, keep_going)
        retrain = False  # what the workers trained is the run now
    out: list = []
    for i, (config, evaluate) in enumerate(requests):
        if i in errors:
            if not keep_going:
                raise errors[i]
            out.append(errors[i])
            continue
        try:
            out.append(run(config, evaluate=evaluate, retrain=retrain and i in todo))
        except FAILURES as exc:
            if not keep_going:
                raise
            out.append(exc)
    return out


def threads_per_run(parallel_runs: int) -> int:
    """Threads of each run when `run_all` trains `parallel_runs` at once: the machine's cores shared out."""
    return max(1, (os.cpu_count() or 1) // parallel_runs)


def _longest_first(config: RunConfig, evaluate: str) -> tuple:
    """Start the long runs first, so that the last one to start, which may run alone, is short: a full
    evaluation generates (the longest part of one), 8-bit layers are the slowest on a CPU, then more steps."""
    return (evaluate != "full", config.experiment.quantization != "int8", -_planned_steps(config))


def _planned_steps(config: RunConfig) -> float:
    """Optimizer steps the run will take: `max_steps`, or its epochs over `train_rows` (unknown rows: many)."""
    train, rows = config.profile.train, config.profile.data.train_rows
    if train.max_steps > 0:
        return train.max_steps
    if rows is None:
        return math.inf
    return math.ceil(rows / (train.per_device_train_batch_size * train.gradient_accumulation_steps)) * train.num_train_epochs


def finished(config: RunConfig, evaluate: str) -> bool:
    """True when the run's folder already holds it, evaluated as asked (`run` still checks the evaluation's rows)."""
    previous = load_run(config.out_dir)
    if previous is None or not previous.config.same_run_as(config):
        return False
    kind = previous.evaluation.kind if previous.evaluation is not None else None
    return evaluate == "none" or kind == "full" or kind == evaluate


def _run_elsewhere_all(requests: list[tuple[RunConfig, str]], index: list[int], workers: int,
                       retrain: bool, keep_going: bool) -> dict[int, BaseException]:
    """The requests in `workers` processes at once; their failures by request index. The chapter's time record
    gets the pool's wall time, split between training and evaluation as the workers spent theirs."""
    threads = threads_per_run(workers)
    errors: dict[int, BaseException] = {}
    spent = {"training": 0.0, "evaluation": 0.0}
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=min(workers, len(requests)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_start, initargs=(threads,)) as pool:
        futures = [pool.submit(_run_in_worker, config, evaluate, retrain) for config, evaluate in requests]
        try:
            for i, future in zip(index, futures):
                try:
                    printed, seconds, exc = future.result()
                except CancelledError:
                    break  # after a failure, without keep_going: the runs after it were not started
                print(printed, end="" if printed.endswith("\n") or not printed else "\n", flush=True)
                for kind in spent:
                    spent[kind] += seconds.get(kind, 0.0)
                if exc is not None:
                    errors[i] = exc
                    if not keep_going:
                        for f in futures:
                            f.cancel()  # those not started; the ones under way finish and keep their results
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    busy = sum(spent.values())
    wall = time.perf_counter() - start
    for kind, seconds in spent.items():
        if busy > 0:
            record(kind, wall * seconds / busy)
    return errors


def _worker_start(threads: int) -> None:
    """A worker process: the chapters' quiet filters, and its share of the cores."""
    quiet.install()
    torch.set_num_threads(threads)


def _run_in_worker(config: RunConfig, evaluate: str, retrain: bool) -> tuple[str, dict[str, float], BaseException | None]:
    """One run in a worker: what it printed (progress bars at their last state), its seconds of training and
    evaluation, and its failure if it failed."""
    fd, name = tempfile.mkstemp(prefix="lora_course_times_", suffix=".jsonl")
    os.close(fd)
    os.environ[TIMES_ENV] = name
    printed, failure = io.StringIO(), None
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            run(config, evaluate=evaluate, retrain=retrain)
    except FAILURES as exc:
        failure = exc
    finally:
        seconds = totals(Path(name))
        Path(name).unlink(missing_ok=True)
    text = "\n".join(line.rsplit("\r", 1)[-1] for line in printed.getvalue().split("\n"))
    return text, seconds, failure


def _differences(old: RunConfig, new: RunConfig, limit: int = 4) -> str:
    """The settings two configs differ in, as "name old -> new" (the first `limit` of them)."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    names = [k for k in sorted(set(a) | set(b)) if k != "results_dir" and a.get(k) != b.get(k)]
    shown = [f"{k.rsplit('.', 1)[-1]} {a.get(k)} -> {b.get(k)}" for k in names[:limit]]
    return ", ".join(shown) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_run_folder(config: RunConfig) -> None:
    """Before anything loads: the results folder can be written, and the run's folder is absent,
    empty, or a run folder the course wrote (so replacing it loses nothing of the user's)."""
    check_device(config.profile.device)  # "no GPU" comes before anything about the run's folder
    check_quantization(config.experiment.quantization)
    check_source(config.profile.data.source)
    check_writable(config.results_dir)
    check_replaceable(config.out_dir, "run", f"choose another run name than {config.name!r} or move that folder away")
    for folder in {config.out_dir.parent, Path(config.results_dir) / config.profile.name}:
        clear_dead_scratch(folder)  # a killed run's half-written folders (hundreds of MB each)


@dataclass
class Prepared:
    """Everything a run needs before training starts: what `run` trains, and what chapter 4's
    hand-written recipe is compared with."""

    precision: object
    tokenizer: object
    data: object
    model: object
    params: dict
    trainer: object | None  # None for a run without an adapter
    scratch: Path | None = None  # the trainer's folder when the run saves no checkpoints; removed after training

    def discard(self) -> None:
        """Remove the trainer's scratch folder: `run` does it after training; call it after `prepare` alone."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def prepare(config: RunConfig, callbacks: Sequence = ()) -> Prepared:
    """Steps 1-4 of the pipeline: data, model (quantised as the experiment says), LoRA, trainer."""
    profile, experiment, settings = config.profile, config.experiment, config.profile.train
    check_device(profile.device)
    check_quantization(experiment.quantization)
    precision = for_profile(profile)
    tokenizer = load_tokenizer(profile)
    data = prepare_data(profile.data, tokenizer, settings.max_length)
    torch.manual_seed(config.seed)
    model = load_model(profile, experiment.quantization, precision)
    if experiment.lora is None:  # the untuned base model: nothing to train
        params = {"trainable": 0, "total": count_parameters(model), "target_modules": [], "r": 0, "percent": 0.0}
        return Prepared(precision, tokenizer, data, model.eval(), params, None)
    model = attach_lora(model, experiment, precision, settings.activation_checkpointing)
    params = parameter_report(model).to_dict()
    eval_rows = None
    if settings.eval_strategy != "no":
        n = profile.data.eval_rows
        eval_rows = data.test if n is None else data.test.select(range(min(n, len(data.test))))
    # A run that saves checkpoints keeps them in its own folder, for --resume; any other run's
    # trainer works in a scratch folder, so that nothing appears under results before it finishes.
    scratch = None
    if settings.save_strategy == "no":
        scratch = scratch_dir(tempfile.gettempdir(), SCRATCH_PREFIX)
    output_dir = config.out_dir / CHECKPOINTS if scratch is None else scratch
    if scratch is None and not config.out_dir.exists():
        # The trainer makes its checkpoints folder as soon as it is built (before any training, and also
        # when `prepare` is called alone): the run's folder is made and claimed as the course's first, so
        # that the run, or a later one with the same name, may replace it.
        config.out_dir.mkdir(parents=True, exist_ok=True)
        mark(config.out_dir, "run")
    try:
        trainer = build_trainer(model, tokenizer, data.train, settings, precision, output_dir=output_dir,
                                seed=config.seed, eval_rows=eval_rows, callbacks=list(callbacks))
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    return Prepared(precision, tokenizer, data, model, params, trainer, scratch)


class Progress:
    """What a run measured up to each checkpoint (tokens, wall time, step times), saved in the checkpoint,
    so that a resumed run's metrics count the whole run and not only the steps after the resume.

    One file per process, `course_progress-rank<R>.json`: each process counts its own tokens.
    """

    def __init__(self):
        me = self
        self.trainer = None
        self.earlier = {"tokens": 0, "wall_time_s": 0.0, "step_seconds": []}
        self.steps = StepTimer()  # this call's steps; its callback runs before each save
        self._start = 0.0

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                me._start = time.perf_counter()

            def on_save(self, args, state, control, **kwargs):
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                folder.mkdir(parents=True, exist_ok=True)
                write_json(folder / me.file_name(args.process_index), {
                    "tokens": int(getattr(me.trainer, "tokens_seen", 0)),
                    "wall_time_s": me.earlier["wall_time_s"] + time.perf_counter() - me._start,
                    "step_seconds": me.earlier["step_seconds"] + me.steps.seconds,
                })

        self.callbacks = [self.steps.callback, _Callback()]

    @staticmethod
    def file_name(rank: int) -> str:
        return f"course_progress-rank{rank}.json"

    def restore(self, checkpoint: Path | None) -> None:
        """Start counting where the checkpoint's run left off (tokens go on in the trainer's own counter)."""
        if checkpoint is None:
            return
        path = Path(checkpoint) / self.file_name(self.trainer.args.process_index)
        if not path.exists():
            print(f"{checkpoint} has no record of the steps before it: metrics.json counts the resumed steps only.")
            return
        self.earlier = read_json(path)
        self.trainer.tokens_seen = int(self.earlier["tokens"])

    def whole_run(self, result):
        """The trainer's result with the steps before the resume counted in (losses already are)."""
        return dataclasses.replace(result, wall_time_s=self.earlier["wall_time_s"] + result.wall_time_s,
                                   step_seconds=self.earlier["step_seconds"] + result.step_seconds)


def _train(config: RunConfig, evaluate: str, resume: bool, callbacks: list, keep_model: bool) -> Run:
    is_main, world, barrier = _process_state(config.profile.device)
    out_dir = config.out_dir
    resume_from = newest_checkpoint(out_dir) if resume else None
    if resume and resume_from is None:
        raise CourseError(f"Nothing to resume: no checkpoint in {out_dir / CHECKPOINTS}. Run without --resume to "
                          "start afresh (a profile saves checkpoints when its save_strategy is not 'no').")
    # Only what this call creates may be removed if it fails: the run's folder when it was not
    # there before, else the checkpoints folder when that was not.
    created = out_dir if not out_dir.exists() else out_dir / CHECKPOINTS if not (out_dir / CHECKPOINTS).exists() else None
    if is_main:
        clear_stale(tempfile.gettempdir(), SCRATCH_PREFIX)
    result, p = None, None
    progress = Progress() if config.profile.train.save_strategy != "no" else None
    try:
        p = prepare(config, callbacks + (progress.callbacks if progress else []))
        if p.trainer is not None:
            if progress is not None:
                progress.trainer = p.trainer
                progress.restore(resume_from)
            with timed("training"):
                result = train(p.trainer, resume_from)
            if progress is not None:
                result = progress.whole_run(result)
    except BaseException as exc:
        if p is not None and p.scratch is not None:
            shutil.rmtree(p.scratch, ignore_errors=True)
        if is_main and load_run(out_dir) is None:
            if newest_checkpoint(out_dir) is None:
                if created is not None:
                    shutil.rmtree(created, ignore_errors=True)  # nothing worth keeping: leave no folder behind
            else:
                hint = (f"checkpoints kept in {out_dir / CHECKPOINTS}: rerun with --resume (or resume=True) "
                        "to continue from the newest one")
                if isinstance(exc, KeyboardInterrupt):
                    exc.add_note(hint)  # the command line prints it in its one line
                else:
                    print(f"training stopped; {hint}.")
        raise
    if p.scratch is not None:
        shutil.rmtree(p.scratch, ignore_errors=True)
    if result is not None:
        if not result.losses or not all(math.isfinite(x["loss"]) for x in result.losses):
            raise CourseError(f"Training {config.name} produced no finite loss: lower learning_rate "
                              f"(now {config.profile.train.learning_rate}) or check the data.")
    run = Run(config, result, p.params, p.data.report.to_dict(), out_dir, None, p.model, p.tokenizer)
    if is_main:
        write_run(run)  # replaces the folder, checkpoints included, all at once
        if result is not None:
            _track(config, run)
    barrier()
    return _evaluated(run, config, evaluate, keep_model, p.data.test)


def _track(config: RunConfig, run: Run) -> None:
    result = run.result
    with track_run(config) as tracker:  # MLflow; never fails the run
        tracker.log_losses(result.losses)
        tracker.log_metrics({
            "wall_time_s": result.wall_time_s,
            "median_step_seconds": result.median_step_seconds,
            "peak_memory_mib": result.peak_memory_mib,
            "tokens_trained": result.tokens_trained,
            "tokens_per_second": result.tokens_per_second,
            "final_loss": result.final_loss,
            "trainable_params": run.params["trainable"],
        })
        for point in result.eval_losses:
            tracker.log_metrics({"eval_loss": point["eval_loss"]}, step=int(point["step"]))
        tracker.log_artifacts(run.adapter_dir, "adapter")


def _evaluated(run: Run, config: RunConfig, evaluate: str, keep_model: bool, test=None) -> Run:
    """The run with its evaluation (cached, or made now on the main process); the model released unless kept."""
    is_main, _, barrier = _process_state(config.profile.device)
    if evaluate != "none" and is_main:
        if test is None:
            run.tokenizer = run.tokenizer or load_tokenizer(config.profile)
            test = held_out(config.profile, run.tokenizer)
        evaluation = cached_evaluation(run.out_dir, config.profile, test, evaluate)
        if evaluation is None:
            model = run.model if run.model is not None else load_run_model(run)
            evaluation = evaluate_model(model, run.tokenizer, config.profile, test, config.name, evaluate, run.out_dir)
            _track_evaluation(config, evaluation)
            run.model = model
        run.evaluation = evaluation
    barrier()
    if keep_model and run.model is None:
        run.model = load_run_model(run)
    if not keep_model:
        run.model = None
    return run


def load_run_model(run: Run):
    """A finished run's model, loaded as it was trained: the base in the run's quantisation, the adapter on top."""
    config = run.config
    run.tokenizer = run.tokenizer or load_tokenizer(config.profile)
    if config.experiment.lora is None:
        return load_model(config.profile, config.experiment.quantization).eval()
    return load_adapter_model(config.profile, run.adapter_dir, config.experiment.quantization)


def _track_evaluation(config: RunConfig, evaluation: Evaluation) -> None:
    with track_run(config, run_name=f"{config.name}/eval") as tracker:
        tracker.log_metrics({"heldout_response_loss": evaluation.loss["loss"],
                             "heldout_perplexity": evaluation.loss["perplexity"]})
        if evaluation.heldout is not None:
            tracker.log_metrics({f"heldout_{m}": float(r["mean"]) for m, r in evaluation.heldout.summary.iterrows()})
            tracker.log_dict(evaluation.prompt_generations, "prompt_generations.json")
