"""Evidence that can fail both ways: paired differences, a noise floor, margins, verdicts.

Two models scored on the same held-out rows are compared row by row: the
difference per row, its mean, and a 90% paired bootstrap interval. A verdict
then needs more than non-overlapping intervals:

    "b is better than a"     confirmed when the interval of b's improvement excludes zero
                             and the mean improvement exceeds the seed-to-seed noise floor;
                             not confirmed when the whole interval lies below the margin
                             (b is at most negligibly better, or worse)
    "b is no better than a"  confirmed when the whole interval of b's improvement lies below
                             the margin (an equivalence-style test, one-sided);
                             not confirmed when b is clearly better (interval above zero,
                             mean above the noise floor) by more than the margin allows
    otherwise                "not shown at this scale"

The margins were fixed before any number was seen (see MARGINS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import CourseError
from .results import Evaluation, LatencyTable

CONFIRMED, NOT_CONFIRMED, NOT_SHOWN = "confirmed", "not confirmed", "not shown at this scale"
LEVEL = 0.90  # a difference's two-sided interval; its upper end is a one-sided 95% bound
METRIC_LEVEL = 0.95  # one metric's interval over rows, in a table
RESAMPLES = 4000  # bootstrap resamples, for every interval

HIGHER_IS_BETTER = {"stopped": True, "runs_on": False, "repeated_trigram_share": False, "has_repeated_sentence": False,
                    "rouge_l": True, "semantic_similarity": True, "response_loss": False, "word_count": True,
                    "length_ratio": True}

# Smallest differences that would matter, chosen before any result was seen:
# - response_loss 0.05 nats per token: about 1% of the base model's loss, and a
#   tenth of what 32 steps of fine-tuning remove; perplexity changes by 5%.
# - rouge_l 0.02 and semantic_similarity 0.02: a tenth of the spread between an
#   unrelated and a reference description on these texts.
# - stopped 0.10: one answer in ten ending by itself, or not.
MARGINS = {"response_loss": 0.05, "rouge_l": 0.02, "semantic_similarity": 0.02, "stopped": 0.10}
PRIMARY_METRIC = "response_loss"  # the verdict's metric; the others are shown beside it


def bootstrap_ci(values: Sequence[float], level: float = METRIC_LEVEL, n_boot: int = RESAMPLES,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its percentile-bootstrap interval, resampling rows.

    The course's one bootstrap: a metric's interval in a table (METRIC_LEVEL) and a paired
    difference's (`paired_bootstrap`, LEVEL)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise CourseError("bootstrap_ci got no values: pass at least one.")
    if np.isnan(x).any():
        raise CourseError(f"bootstrap_ci got {int(np.isnan(x).sum())} NaN value(s): drop or fix those rows first.")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    # In chunks, so that the resamples of a large table stay a few MB at a time.
    means = np.concatenate([x[rng.integers(0, x.size, size=(min(500, n_boot - i), x.size))].mean(axis=1)
                            for i in range(0, n_boot, 500)])
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return mean, float(low), float(high)


def paired_bootstrap(diffs: Sequence[float], level: float = LEVEL, n_boot: int = RESAMPLES, seed: int = 0):
    """(mean, low, high) of the mean of per-row differences, resampling rows (pairs stay together)."""
    if len(diffs) == 0:
        raise CourseError("paired_bootstrap got no rows: compare evaluations of at least one row.")
    return bootstrap_ci(diffs, level, n_boot, seed)


@dataclass(frozen=True)
class Difference:
    """b against a on one metric, as an improvement: positive means b is better, in the metric's units."""

    metric: str
    a: str
    b: str
    mean: float
    low: float
    high: float
    n: int
    b_better_rows: int
    a_better_rows: int
    margin: float
    noise: float | None = None  # seed-to-seed spread of the metric, when measured

    @property
    def clearly_better(self) -> bool:
        return self.low > 0 and self.mean > (self.noise or 0.0)

    @property
    def within_margin(self) -> bool:
        return self.high < self.margin

    def describe(self) -> str:
        noise = f", noise floor {self.noise:.3f}" if self.noise is not None else ""
        return (f"{self.b} vs {self.a}, {self.metric}: improvement {self.mean:+.3f} "
                f"[{self.low:+.3f}, {self.high:+.3f}] (90%, {self.n} paired rows; margin {self.margin}{noise})")


def paired_difference(a: Evaluation, b: Evaluation, metric: str = PRIMARY_METRIC, noise: float | None = None,
                      margin: float | None = None) -> Difference:
    """b's improvement over a on `metric`, row by row on the same held-out rows."""
    ra, rb = np.asarray(a.rows(metric), dtype=float), np.asarray(b.rows(metric), dtype=float)
    if ra.shape != rb.shape:
        raise CourseError(f"{a.name} has {ra.size} rows and {b.name} {rb.size}: a paired comparison needs the same "
                          "held-out rows; evaluate both on the same split.")
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    diffs = sign * (rb - ra)
    mean, low, high = paired_bootstrap(diffs)
    return Difference(metric, a.name, b.name, mean, low, high, int(ra.size), int((diffs > 0).sum()),
                      int((diffs < 0).sum()), MARGINS.get(metric, 0.0) if margin is None else margin, noise)


def verdict(diff: Difference, kind: str) -> str:
    """The verdict on "b is better than a" (kind "better") or "b is no better than a" (kind "no_better")."""
    if kind == "better":
        if diff.clearly_better:
            return CONFIRMED
        return NOT_CONFIRMED if diff.within_margin else NOT_SHOWN
    if kind == "no_better":
        if diff.within_margin:
            return CONFIRMED
        return NOT_CONFIRMED if diff.clearly_better else NOT_SHOWN
    raise CourseError(f"Unknown claim kind {kind!r}: use 'better' or 'no_better'.")


B_BETTER, A_BETTER, EQUIVALENT = "b better", "a better", "equivalent"


def two_sided(diff: Difference) -> str:
    """Which of two set-ups did better, with neither named in advance.

    "b better" / "a better" when the interval excludes zero on that side and the mean
    exceeds the noise floor; "equivalent" when the whole interval lies inside plus or
    minus the margin; otherwise "not shown at this scale".
    """
    noise = diff.noise or 0.0
    if diff.low > 0 and diff.mean > noise:
        return B_BETTER
    if diff.high < 0 and -diff.mean > noise:
        return A_BETTER
    if -diff.margin < diff.low and diff.high < diff.margin:
        return EQUIVALENT
    return NOT_SHOWN


def noise_floor(seed_evaluations: Sequence[Evaluation], metric: str) -> float:
    """Seed-to-seed spread of a metric: the range of its means over runs that differ only in the seed."""
    if len(seed_evaluations) < 2:
        raise CourseError("A noise floor needs the same configuration at two seeds or more.")
    means = [e.metric(metric) for e in seed_evaluations]
    return float(max(means) - min(means))


# --------------------------------------------------------------------------- claims
@dataclass
class Judgement:
    claim: object  # post.Claim
    verdict: str
    differences: list[Difference] = field(default_factory=list)
    evidence: str = ""


# Smallest latency change that would matter, chosen before any timing was seen: 10% of the base
# model's median time. Less would not change a serving decision, and the same run on a shared
# 2-core machine varies by about that much from one repeat to the next.
LATENCY_MARGIN = 0.10


@dataclass(frozen=True)
class LatencyJudgement:
    """The claim "merging removes the adapter's latency", judged on chapter 5's latency table.

    overheads are shares of the base's median time. The claim needs a cost to remove: every
    unmerged run slower than every base run. Given that, it is confirmed when even the merged
    model's slowest run lies within `margin` of the base's median (an equivalence-style test,
    one-sided: faster is fine), and not confirmed when the merged model's fastest run is slower
    than every base run and its median more than the margin above the base's.
    """

    verdict: str
    unmerged_overhead: float
    merged_overhead: float
    merged_worst_overhead: float  # the merged model's slowest run against the base's median
    unmerged_slower: bool
    margin: float

    def describe(self) -> str:
        cost = ("every unmerged run was slower than every base run" if self.unmerged_slower
                else "the unmerged adapter was not slower than the base in every run, so there was no cost to remove")
        return (f"unmerged {self.unmerged_overhead:+.0%} and merged {self.merged_overhead:+.0%} against the base's "
                f"median (merged at worst {self.merged_worst_overhead:+.0%}; margin {self.margin:.0%}); {cost}")


def latency_judgement(table: LatencyTable, margin: float = LATENCY_MARGIN) -> LatencyJudgement:
    """The one verdict on "merging removes the adapter's latency" (chapters 5 and 6 both show this)."""
    base, unmerged, merged = table.base, table.unmerged, table.merged
    unmerged_slower = unmerged.min_s > base.max_s
    worst = merged.max_s / base.median_s - 1
    if not unmerged_slower:
        verdict_ = NOT_SHOWN
    elif worst <= margin:
        verdict_ = CONFIRMED
    elif merged.min_s > base.max_s and merged.median_s / base.median_s - 1 > margin:
        verdict_ = NOT_CONFIRMED
    else:
        verdict_ = NOT_SHOWN
    return LatencyJudgement(verdict_, unmerged.median_s / base.median_s - 1, merged.median_s / base.median_s - 1,
                            worst, unmerged_slower, margin)


def judge(claim, evaluations: dict[str, Evaluation], noise: dict[str, float] | None = None,
          latency: LatencyTable | None = None, metrics: Sequence[str] = (PRIMARY_METRIC,)) -> Judgement:
    """One verdict per claim: on the primary metric, with every metric's difference as evidence."""
    if claim.kind == "latency":
        if latency is None:
            raise CourseError(f"Claim {claim.key!r} needs the latency table of chapter 5.")
        lat = latency_judgement(latency)
        return Judgement(claim, lat.verdict, [], lat.describe())
    missing = [n for n in (claim.reference, claim.candidate) if n not in evaluations]
    if missing:
        raise CourseError(f"Claim {claim.key!r} needs the evaluation of {', '.join(missing)}: run chapter 4 first.")
    a, b = evaluations[claim.reference], evaluations[claim.candidate]
    diffs = [paired_difference(a, b, m, (noise or {}).get(m)) for m in metrics]
    return Judgement(claim, verdict(diffs[0], claim.kind), diffs, diffs[0].describe())


def difference_table(diffs: Sequence[Difference], kind: str | None = None) -> pd.DataFrame:
    """One row per difference: mean improvement, 90% interval, rows each way, margin, noise, verdict."""
    rows = []
    for d in diffs:
        row = {"metric": d.metric, "improvement": round(d.mean, 4), "90% low": round(d.low, 4),
               "90% high": round(d.high, 4), "rows b better": d.b_better_rows, "rows a better": d.a_better_rows,
               "margin": d.margin, "noise floor": None if d.noise is None else round(d.noise, 4)}
        if kind is not None:
            row["verdict"] = verdict(d, kind)
        rows.append(row)
    return pd.DataFrame(rows).set_index("metric")


def interval(evaluation: Evaluation, metric: str) -> tuple[float, float, float]:
    """(mean, low, high): a held-out metric's mean and 95% bootstrap interval over rows."""
    mean, low, high = bootstrap_ci(evaluation.rows(metric))
    if metric == "response_loss":
        mean = evaluation.metric(metric)  # token-weighted, as reported everywhere else
    return mean, low, high


def interval_text(evaluation: Evaluation, metric: str, fmt: str = "{:.2f}") -> str:
    """ "mean [low, high]" for a table cell."""
    mean, low, high = interval(evaluation, metric)
    return f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"


# --------------------------------------------------------------------------- what quantising the untuned base costs
def penalty(reference: Evaluation, quantised: Evaluation) -> Difference:
    """What `quantised` loses against `reference` in response loss, row by row: positive means worse."""
    return paired_difference(quantised, reference)  # the reference's improvement over the quantised model


def penalty_table(evaluations: dict[str, Evaluation], reference: str = "none") -> pd.DataFrame:
    """One row per quantisation other than `reference`: its held-out response loss, the reference's,
    and what it costs against the reference (mean per-row increase in nats, 90% paired interval,
    rows worse and better)."""
    ref = evaluations[reference]
    rows = {}
    for name, e in evaluations.items():
        if name == reference:
            continue
        d = penalty(ref, e)
        rows[name] = {"response loss": round(e.metric("response_loss"), 4),
                      "reference's": round(ref.metric("response_loss"), 4), "penalty (nats)": round(d.mean, 4),
                      "90% low": round(d.low, 4), "90% high": round(d.high, 4), "rows worse": d.b_better_rows,
                      "rows better": d.a_better_rows}
    return pd.DataFrame(rows).T.astype({"rows worse": int, "rows better": int})


def nats(x: float) -> str:
    """A signed loss difference in nats: three decimals, or two significant digits when smaller than 0.01."""
    return f"{x:+.3f}" if abs(x) >= 0.01 or x == 0 else f"{x:+.1e}"


def describe_penalty(d: Difference) -> str:
    """ "+0.263 nats per token (90% interval +0.201 to +0.310, worse on 16 of 17 rows)" for a `penalty`."""
    return (f"{nats(d.mean)} nats per token (90% interval {nats(d.low)} to {nats(d.high)}, worse on "
            f"{d.b_better_rows} of {d.n} rows)")
