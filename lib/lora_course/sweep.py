"""Sweeps: a list of runs that differ in one knob at a time, run by one function, each cached.

    SWEEP                       the sweep of chapter 7, as data (SweepPoints)
    run_sweep(points, profile)  every point through the pipeline; a failed point is reported, never dropped
    rank_scale(evals, noise)    the post's key insight against a larger rank, under each lora_alpha rule
    rank_scale_verdict(table)   that comparison in one sentence, decided by the data

The chapter asks whether "adapt every linear layer rather than raise r" survives once
rank is separated from scale. LoRA adds (lora_alpha / r) B A to a frozen weight, so at
a fixed lora_alpha a larger r also means a smaller update: the post's comparison mixed
the two. The sweep therefore crosses two ranks (SMALL_RANK and LARGE_RANK) and two
target sets with three rules for lora_alpha, all equal at the small rank:

    alpha fixed   lora_alpha = 8 at every r, as in the post (scale 8 / r)
    alpha = 2r    the scale alpha / r stays at 2 whatever r is
    rsLoRA        scale alpha / sqrt(r) (PEFT's use_rslora), alpha 4 so that r = 4 gets 2 as well

At the small rank the three rules give the same adapter, so it is trained once per
target set. The small rank's q/v point runs at two more seeds (the noise floor), and
the deciding pair (all linear at the small rank, q/v at the large rank with its scale
kept) runs again at twice the steps, to show whether the short budget's ordering holds.

Every point trains `profile.sweep_steps` optimizer steps times its `budget` and is
scored by its response loss on the profile's held-out rows. Results go to
results/<profile>/sweep/<point>/, and a finished point is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import pandas as pd

from .config import RunConfig, SweepPoint, noise_seeds
from .errors import CourseError
from .evidence import A_BETTER, B_BETTER, EQUIVALENT, Difference, paired_difference, two_sided
from .pipeline import finished, run_all
from .results import Evaluation
from .settings import ALL_LINEAR, ATTENTION_QV, Experiment, LoraSettings, Profile

POST_ALPHA = 8  # the post's lora_alpha, fixed in all its runs
SMALL_RANK, LARGE_RANK = 4, 64  # 16 times the rank: the scale at fixed alpha falls 16-fold
ANCHOR_SCALE = POST_ALPHA / SMALL_RANK  # every rule's scale at the small rank
RULES: dict[str, Callable[[int], dict]] = {  # LoraConfig's lora_alpha (and use_rslora) at rank r, per rule
    "alpha fixed": lambda r: dict(lora_alpha=POST_ALPHA),
    "alpha = 2r": lambda r: dict(lora_alpha=round(ANCHOR_SCALE * r)),
    "rsLoRA": lambda r: dict(lora_alpha=round(ANCHOR_SCALE * SMALL_RANK**0.5), use_rslora=True),
}
TARGETS = {"q, v": ("qv", ATTENTION_QV), "all linear": ("all", ALL_LINEAR)}
NOISE_SEEDS = noise_seeds()  # with the default seed, the base point at three seeds
LONGER = 2  # the deciding pair's second budget, in multiples of sweep_steps
KEPT_RULE = "alpha = 2r"  # the rule whose large-rank q/v point is the deciding pair's other half


def _exp(targets: str, r: int, **lora) -> Experiment:
    short, modules = TARGETS[targets]
    name = f"{short}-r{r}"
    if lora.get("use_rslora"):
        name += f"-rslora-alpha{lora['lora_alpha']}"
    elif lora.get("lora_alpha", POST_ALPHA) != POST_ALPHA:
        name += f"-alpha{lora['lora_alpha']}"
    return Experiment(name, name, "nf4", LoraSettings(r=r, target_modules=modules, **lora))


SMALL = {t: _exp(t, SMALL_RANK) for t in TARGETS}  # lora_alpha 8: scale 2, under every rule
LARGE = {(t, rule): _exp(t, LARGE_RANK, **lora(LARGE_RANK)) for rule, lora in RULES.items() for t in TARGETS}

SWEEP: tuple[SweepPoint, ...] = (
    *(SweepPoint(f"r = {SMALL_RANK}, every rule", SMALL[t]) for t in TARGETS),
    *(SweepPoint(rule, LARGE[t, rule]) for rule in RULES for t in TARGETS),
    # the noise floor: the base point at two more seeds
    *(SweepPoint("seed", SMALL["q, v"], seed=s) for s in NOISE_SEEDS),
    # the deciding pair at a longer budget
    SweepPoint("longer budget", SMALL["all linear"], budget=LONGER),
    SweepPoint("longer budget", LARGE["q, v", KEPT_RULE], budget=LONGER),
)
BASE_POINT = SMALL["q, v"].name  # the point the noise seeds repeat

# Every rule gives the small rank the same scale, so one small-rank point stands for all three.
if len({LoraSettings(r=SMALL_RANK, **lora(SMALL_RANK)).scaling for lora in RULES.values()}) != 1:
    raise CourseError("The sweep's lora_alpha rules must agree at the small rank: fix sweep.RULES.")


def point_config(point: SweepPoint, profile: Profile, results_dir) -> RunConfig:
    """A sweep point as a run: the profile's trainer with `sweep_steps` x budget steps and the point's overrides."""
    return RunConfig.create(point.experiment, profile, seed=point.seed, results_dir=results_dir,
                            name=f"sweep/{point.name}",
                            **{"max_steps": profile.sweep_steps * point.budget, **point.train})


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
    steps: int | None = None  # optimizer steps it was given
    evaluation: Evaluation | None = None  # its held-out scoring (response loss per row)


def run_sweep(points: Sequence[SweepPoint], profile: Profile, results_dir="results",
              also: Sequence[tuple[RunConfig, str]] = ()) -> list[PointResult]:
    """Every point through the pipeline (`pipeline.run_all`: `profile.parallel_runs` at a time), in order;
    each is cached, and a failure is reported with its reason.

    also  a page's other (config, evaluate) runs, trained in the same pool so that no core waits for
          the last point; read them afterwards with `pipeline.run` (a failed one fails there, in its place)
    """
    configs = [point_config(point, profile, results_dir) for point in points]
    cached = [finished(config, "loss") for config in configs]
    runs = run_all([*((config, "loss") for config in configs), *also], keep_going=True)[:len(configs)]
    out = []
    for point, config, was_cached, r in zip(points, configs, cached, runs):
        steps = config.profile.train.max_steps
        if isinstance(r, BaseException):  # one broken point must not hide the others
            out.append(PointResult(point, f"failed: {' '.join(str(r).split())[:200]}",
                                   learning_rate=config.profile.train.learning_rate, steps=steps))
            continue
        out.append(PointResult(point, "cached" if was_cached else "trained", r.params["trainable"],
                               r.evaluation.loss["loss"], r.evaluation.loss["row_losses"], r.result.losses,
                               r.result.wall_time_s, r.result.median_step_seconds,
                               config.profile.train.learning_rate, steps, r.evaluation))
    return out


def sweep_table(results: Sequence[PointResult]) -> pd.DataFrame:
    """One row per point: group, settings, trainable parameters, held-out response loss, cost, status."""
    rows = []
    for r in results:
        lora = r.point.experiment.lora
        rows.append({"point": r.point.name, "group": r.point.group, "r": lora.r,
                     "targets": "q, v" if lora.target_modules == ATTENTION_QV else "all linear",
                     "lora_alpha": lora.lora_alpha, "rslora": lora.use_rslora, "dora": lora.use_dora,
                     "scaling": round(lora.scaling, 4), "learning_rate": r.learning_rate, "steps": r.steps,
                     "seed": r.point.seed, "trainable": r.trainable, "response_loss": r.response_loss,
                     "s/step": r.step_seconds, "status": r.status})
    return pd.DataFrame(rows).set_index("point")


# --------------------------------------------------------------------------- rank against scale
def _name(experiment: Experiment, budget: int = 1) -> str:
    return SweepPoint("", experiment, budget=budget).name


def rank_scale(evals: Mapping[str, Evaluation], noise: float) -> tuple[pd.DataFrame, dict[str, Difference]]:
    """All linear at the small rank against q/v at the large rank, under each rule (and the kept rule at
    the longer budget), paired on the held-out rows; beside it, what raising r did on q/v under that rule.

    Positive "all linear's lead" means adapting every layer did better than raising r. Returns the table
    and the differences by row label.
    """
    pairs = {rule: (LARGE["q, v", rule], SMALL["all linear"], 1) for rule in RULES}
    pairs[f"{KEPT_RULE}, x{LONGER} steps"] = (LARGE["q, v", KEPT_RULE], SMALL["all linear"], LONGER)
    needed = sorted(({_name(e, b) for a, c, b in pairs.values() for e in (a, c)} | {BASE_POINT}) - set(evals))
    if needed:
        raise CourseError(f"The rank/scale comparison needs the sweep points {', '.join(needed)}, which did not "
                          "finish: see the sweep table's status column, fix the cause and run the chapter again.")
    rows, diffs = [], {}
    for label, (large, small, budget) in pairs.items():
        d = paired_difference(evals[_name(large, budget)], evals[_name(small, budget)], noise=noise)
        diffs[label] = d
        row = {"rule": label, f"scale at r = {LARGE_RANK}": round(large.lora.scaling, 4),
               "all linear's lead": round(d.mean, 4), "90% low": round(d.low, 4), "90% high": round(d.high, 4),
               "outcome": outcome(d)}
        if budget == 1:
            up = paired_difference(evals[BASE_POINT], evals[_name(large)], noise=noise)
            row["raising r on q/v"] = round(up.mean, 4)
        rows.append(row)
    return pd.DataFrame(rows).set_index("rule"), diffs


def outcome(d: Difference) -> str:
    """A `rank_scale` difference's outcome in words: which of the pair did better, if either."""
    return {B_BETTER: "all linear better", A_BETTER: "larger rank better"}.get(two_sided(d), two_sided(d))


def _phrase(d: Difference) -> str:
    outcome = two_sided(d)
    if outcome == B_BETTER:
        return f"all linear at r = {SMALL_RANK} did better, by {d.mean:.3f} nats"
    if outcome == A_BETTER:
        return f"q/v at r = {LARGE_RANK} did better, by {-d.mean:.3f} nats"
    if outcome == EQUIVALENT:
        return f"the two were equivalent within {d.margin:g} nats ({d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}])"
    return f"neither was shown better ({d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] nats)"


def rank_scale_verdict(diffs: Mapping[str, Difference], steps: int) -> str:
    """The post's key insight ("adapt all linear layers rather than raise r") judged from `rank_scale`'s
    differences, naming the confound; `steps` is the short budget."""
    fixed, kept = diffs["alpha fixed"], diffs[KEPT_RULE]
    longer = diffs[f"{KEPT_RULE}, x{LONGER} steps"]
    noise = fixed.noise or 0.0
    fixed_scale = LARGE["q, v", "alpha fixed"].lora.scaling
    text = (f"At the post's fixed lora_alpha = {POST_ALPHA}, raising r from {SMALL_RANK} to {LARGE_RANK} on q/v "
            f"also cut the scale alpha / r from {ANCHOR_SCALE:g} to {fixed_scale:g}, and against that adapter "
            f"{_phrase(fixed)}. With the scale kept at {ANCHOR_SCALE:g} ({KEPT_RULE}), after {steps} steps "
            f"{_phrase(kept)}; after {steps * LONGER}, {_phrase(longer)} (noise floor {noise:.3f} nats). ")
    if two_sided(kept) != two_sided(longer):
        return text + (f"The ordering at {steps} steps did not hold at {steps * LONGER}, so this budget cannot "
                       "decide between a larger rank and more layers; at a fixed lora_alpha the comparison is "
                       "confounded with the scale either way.")
    if two_sided(fixed) == B_BETTER and two_sided(kept) == B_BETTER:
        return text + ("So the post's insight survives the confound here: adapting every linear layer beat "
                       "a larger rank even when the larger rank kept its scale.")
    if two_sided(fixed) == B_BETTER and two_sided(kept) in (A_BETTER, EQUIVALENT):
        return text + ("So the post's insight rests on the confound: at a fixed lora_alpha a larger r also means "
                       "a smaller scale, and once the scale is kept a larger rank on q/v does "
                       + ("better than" if two_sided(kept) == A_BETTER else "as well as")
                       + " adapting every layer.")
    return text + ("So these data do not bear out the post's insight at this scale; at a fixed lora_alpha the "
                   "comparison is confounded with the scale either way.")


def rules_table() -> pd.DataFrame:
    """Each lora_alpha rule: its settings at the large rank and its scale at both ranks."""
    rows = []
    for rule, lora in RULES.items():
        small, large = LoraSettings(r=SMALL_RANK, **lora(SMALL_RANK)), LoraSettings(r=LARGE_RANK, **lora(LARGE_RANK))
        rows.append({"rule": rule, f"lora_alpha at r = {LARGE_RANK}": large.lora_alpha, "use_rslora": large.use_rslora,
                     f"scale at r = {SMALL_RANK}": small.scaling, f"scale at r = {LARGE_RANK}": large.scaling})
    return pd.DataFrame(rows).set_index("rule")
