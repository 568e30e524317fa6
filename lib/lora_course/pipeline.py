"""The one path from a config to results: data -> model -> LoRA -> train -> results (-> evaluation).

    run(config, evaluate="full")      train (or reuse) one run, evaluate it on the held-out rows

Experiments, the untuned base model, seeds, sweep points and benchmark settings
are all this function with other configs. A finished run with the same config is
reused; so is its evaluation.

Under `accelerate launch` every process trains on its shard of the rows and only
the main process writes the results folder, the adapter and the MLflow run.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .config import RunConfig
from .errors import CourseError
from .results import Evaluation, Run, load_run, write_run

CHECKPOINTS = "checkpoints"  # inside an unfinished run's folder; removed when the run finishes


def _process_state(device: str):
    """(is_main, world_size, barrier): accelerate's view when launched by it, else a single process.

    On a CPU the processes talk through gloo: accelerate's state must be made
    with cpu=True before anything else creates it (the trainer asks the same).
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu")
        return state.is_main_process, state.num_processes, state.wait_for_everyone
    return True, 1, lambda: None


def newest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint with the highest step in out_dir/checkpoints, or None."""
    folder = Path(out_dir) / CHECKPOINTS
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


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
    if not retrain and not resume:
        previous = load_run(config.out_dir)
        if previous is not None and previous.config.same_run_as(config):
            return _evaluated(previous, config, evaluate, keep_model)
    return _train(config, evaluate, resume, list(callbacks), keep_model)


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


def prepare(config: RunConfig, callbacks: Sequence = ()) -> Prepared:
    """Steps 1-4 of the pipeline: data, model (quantised as the experiment says), LoRA, trainer."""
    from .data import prepare_data
    from .lora import attach_lora, parameter_report
    from .model import check_device, check_quantization, count_parameters, load_model, load_tokenizer
    from .precision import for_profile
    from .train import build_trainer

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
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="lora_course_trainer_"))
    output_dir = config.out_dir / CHECKPOINTS if scratch is None else scratch
    trainer = build_trainer(model, tokenizer, data.train, settings, precision, output_dir=output_dir,
                            seed=config.seed, eval_rows=eval_rows, callbacks=list(callbacks))
    return Prepared(precision, tokenizer, data, model, params, trainer, scratch)


def _train(config: RunConfig, evaluate: str, resume: bool, callbacks: list, keep_model: bool) -> Run:
    from .timing import timed
    from .train import train

    is_main, world, barrier = _process_state(config.profile.device)
    out_dir = config.out_dir
    resume_from = newest_checkpoint(out_dir) if resume else None
    if resume and resume_from is None:
        raise CourseError(f"Nothing to resume: no checkpoint in {out_dir / CHECKPOINTS}. Run without --resume to "
                          "start afresh (a profile saves checkpoints when its save_strategy is not 'no').")
    result, p = None, None
    try:
        p = prepare(config, callbacks)
        if p.trainer is not None:
            with timed("training"):
                result = train(p.trainer, resume_from)
    except BaseException:
        if p is not None and p.scratch is not None:
            shutil.rmtree(p.scratch, ignore_errors=True)
        if is_main and newest_checkpoint(out_dir) is None and load_run(out_dir) is None:
            shutil.rmtree(out_dir, ignore_errors=True)  # nothing worth keeping: leave no folder behind
        elif is_main and load_run(out_dir) is None:
            print(f"training stopped; checkpoints kept in {out_dir / CHECKPOINTS}: rerun with --resume "
                  "(or resume=True) to continue from the newest one.")
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
    from .tracking import track_run

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
    from .evaluate import cached_evaluation, evaluate_model

    is_main, _, barrier = _process_state(config.profile.device)
    if evaluate != "none" and is_main:
        if test is None:
            from .data import prepare_data
            from .model import load_tokenizer

            run.tokenizer = run.tokenizer or load_tokenizer(config.profile)
            test = prepare_data(config.profile.data, run.tokenizer, config.profile.train.max_length).test
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
    from .merge import load_adapter_model
    from .model import load_model, load_tokenizer

    config = run.config
    run.tokenizer = run.tokenizer or load_tokenizer(config.profile)
    if config.experiment.lora is None:
        return load_model(config.profile, config.experiment.quantization).eval()
    return load_adapter_model(config.profile, run.adapter_dir, config.experiment.quantization)


def _track_evaluation(config: RunConfig, evaluation: Evaluation) -> None:
    from .tracking import track_run

    with track_run(config, run_name=f"{config.name}/eval") as tracker:
        tracker.log_metrics({"heldout_response_loss": evaluation.loss["loss"],
                             "heldout_perplexity": evaluation.loss["perplexity"]})
        if evaluation.heldout is not None:
            tracker.log_metrics({f"heldout_{m}": float(r["mean"]) for m, r in evaluation.heldout.summary.iterrows()})
            tracker.log_dict(evaluation.prompt_generations, "prompt_generations.json")
