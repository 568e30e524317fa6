"""Sweeps: a list of runs that differ in one knob at a time, run by one function, each cached.

    SWEEP                     the sweep of chapter 7, as data (groups of SweepPoints)
    run_sweep(points, profile)  every point through the pipeline; a failed point is reported, never dropped

Every point trains `profile.sweep_steps` optimizer steps (fewer than chapter 4's
runs, so that about twenty points fit in the book's budget) and is scored by its
response loss on the profile's held-out rows. Results go to
results/<profile>/sweep/<point>/, and a finished point is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from .config import ALL_LINEAR, ATTENTION_QV, Experiment, LoraSettings, Profile, RunConfig, SweepPoint
from .errors import CourseError


def _exp(name: str, quantization: str = "nf4", **lora) -> Experiment:
    return Experiment(name, name, quantization, LoraSettings(**lora))


QV, ALL = dict(target_modules=ATTENTION_QV), dict(target_modules=ALL_LINEAR)
RANKS = (1, 8, 64)  # both ends of the usual range, and the post's r = 8
SMALL_RANK, LARGE_RANK = RANKS[0], RANKS[-1]  # where lora_alpha's rules are compared
LEARNING_RATES = (1e-5, 1e-4)  # and the profile's own, 1e-3 at the cpu profile
NOISE_SEEDS = (43, 44)  # with 42, the base point at three seeds

SWEEP: tuple[SweepPoint, ...] = (
    # lora_r on q/v and on every linear layer (+ lm_head), lora_alpha fixed at 8 as in the post
    *(SweepPoint("rank, q/v", _exp(f"qv-r{r}", r=r, **QV)) for r in RANKS),
    *(SweepPoint("rank, all linear", _exp(f"all-r{r}", r=r, **ALL)) for r in RANKS),
    # lora_alpha: fixed 8 (above) against 2r and against rsLoRA (alpha / sqrt(r)), small and large rank.
    # At r = 1 rsLoRA's scale alpha / sqrt(1) is the plain alpha / 1: that point is the rank point above.
    *(SweepPoint("alpha", _exp(f"qv-r{r}-alpha{2 * r}", r=r, lora_alpha=2 * r, **QV)) for r in (SMALL_RANK, LARGE_RANK)),
    SweepPoint("alpha", _exp(f"qv-r{LARGE_RANK}-rslora", r=LARGE_RANK, use_rslora=True, **QV)),
    # learning rate at r = 8 on q/v (the profile's own rate is the rank point above)
    *(SweepPoint("learning rate", _exp(f"qv-r8-lr{lr:g}", r=8, **QV), {"learning_rate": lr}) for lr in LEARNING_RATES),
    # DoRA at r = 8 on every linear layer, one extra point
    SweepPoint("DoRA", _exp("all-r8-dora", r=8, use_dora=True, **ALL)),
    # the noise floor: the base point at two more seeds
    *(SweepPoint("seed", _exp("qv-r8", r=8, **QV), seed=s) for s in NOISE_SEEDS),
)
BASE_POINT = "qv-r8"  # the point the noise seeds repeat


def point_config(point: SweepPoint, profile: Profile, results_dir) -> RunConfig:
    """A sweep point as a run: the profile's trainer with `sweep_steps` steps and the point's overrides."""
    return RunConfig.create(point.experiment, profile, seed=point.seed, results_dir=results_dir,
                            name=f"sweep/{point.name}", **{"max_steps": profile.sweep_steps, **point.train})


@dataclass
class PointResult:
    point: SweepPoint
    status: str  # "trained", "cached" or "failed: <reason>"
    trainable: int | None = None
    response_loss: float | None = None
    row_losses: list[float] | None = None
    losses: list[dict] | None = None
    seconds: float | None = None  # training wall time
    step_seconds: float | None = None  # median optimizer step
    learning_rate: float | None = None  # the point's own, or the profile's


def run_sweep(points: Sequence[SweepPoint], profile: Profile, results_dir="results") -> list[PointResult]:
    """Every point through the pipeline, in order; each is cached, and a failure is reported with its reason."""
    from .pipeline import run
    from .results import load_run

    out = []
    for point in points:
        config = point_config(point, profile, results_dir)
        previous = load_run(config.out_dir)
        cached = previous is not None and previous.config.same_run_as(config) and previous.evaluation is not None
        try:
            r = run(config, evaluate="loss")
        except (CourseError, RuntimeError, ValueError) as exc:  # one broken point must not hide the others
            out.append(PointResult(point, f"failed: {' '.join(str(exc).split())[:200]}",
                                   learning_rate=config.profile.train.learning_rate))
            continue
        out.append(PointResult(point, "cached" if cached else "trained", r.params["trainable"],
                               r.evaluation.loss["loss"], r.evaluation.loss["row_losses"], r.result.losses,
                               r.result.wall_time_s, r.result.median_step_seconds,
                               config.profile.train.learning_rate))
    return out


def sweep_table(results: Sequence[PointResult]) -> pd.DataFrame:
    """One row per point: group, settings, trainable parameters, held-out response loss, cost, status."""
    rows = []
    for r in results:
        lora = r.point.experiment.lora
        rows.append({"point": r.point.name, "group": r.point.group, "r": lora.r,
                     "targets": "q, v" if lora.target_modules == ATTENTION_QV else "all linear",
                     "lora_alpha": lora.lora_alpha, "rslora": lora.use_rslora, "dora": lora.use_dora,
                     "scaling": round(lora.scaling, 4), "learning_rate": r.learning_rate,
                     "seed": r.point.seed, "trainable": r.trainable, "response_loss": r.response_loss,
                     "s/step": r.step_seconds, "status": r.status})
    return pd.DataFrame(rows).set_index("point")
