"""Verdicts that can fail both ways, on constructed evaluations whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from lora_course import CourseError
from lora_course.evidence import (
    A_BETTER,
    B_BETTER,
    CONFIRMED,
    EQUIVALENT,
    NOT_CONFIRMED,
    NOT_SHOWN,
    Difference,
    difference_table,
    interval_text,
    judge,
    latency_judgement,
    noise_floor,
    paired_bootstrap,
    paired_difference,
    two_sided,
    verdict,
)
from lora_course.post import CLAIMS
from lora_course.results import Evaluation, LatencyRow, LatencyTable

RNG = np.random.default_rng(0)
BASE = 4.0 + RNG.normal(0, 0.5, 60)  # per-row losses with a wide row-to-row spread


def _eval(name: str, losses) -> Evaluation:
    losses = [float(x) for x in losses]
    return Evaluation(name, "loss", {"loss": sum(losses) / len(losses), "perplexity": 1.0, "row_losses": losses})


def _diff(mean, low, high, noise=None, margin=0.05) -> Difference:
    return Difference("response_loss", "a", "b", mean, low, high, 60, 30, 30, margin, noise)


def test_paired_bootstrap_matches_the_mean_and_narrows_with_pairing():
    shift = 0.1 + RNG.normal(0, 0.02, 60)
    mean, low, high = paired_bootstrap(shift)
    assert mean == pytest.approx(float(shift.mean()))
    assert low < mean < high and high - low < 0.02  # sd 0.02 over 60 rows: about 2 x 1.645 x 0.0026 wide
    assert paired_bootstrap([0.3]) == (0.3, 0.3, 0.3)
    with pytest.raises(CourseError, match="no rows"):
        paired_bootstrap([])


def test_pairing_finds_a_difference_that_overlapping_intervals_hide():
    """Every row 0.1 nats better: the runs' own intervals overlap, the paired one is clear of zero."""
    from lora_course.evidence import bootstrap_ci

    a, b = _eval("a", BASE), _eval("b", BASE - 0.1 + RNG.normal(0, 0.01, 60))
    _, a_low, a_high = bootstrap_ci(a.rows("response_loss"))
    _, b_low, b_high = bootstrap_ci(b.rows("response_loss"))
    assert b_high > a_low  # unpaired: the intervals overlap
    d = paired_difference(a, b)
    assert d.low > 0.09 and d.b_better_rows == 60  # paired: b better on every row
    assert verdict(d, "better") == CONFIRMED


@pytest.mark.parametrize("diff, expected", [
    (_diff(0.20, 0.15, 0.25, noise=0.05), CONFIRMED),  # clear of zero and above the noise floor
    (_diff(0.03, 0.01, 0.04, noise=0.05), NOT_CONFIRMED),  # above zero but inside the noise: within the margin
    (_diff(-0.10, -0.15, -0.05), NOT_CONFIRMED),  # clearly worse
    (_diff(0.02, -0.06, 0.10), NOT_SHOWN),  # too wide to say
])
def test_better_verdicts(diff, expected):
    assert verdict(diff, "better") == expected


@pytest.mark.parametrize("diff, expected", [
    (_diff(0.00, -0.03, 0.03), CONFIRMED),  # inside the margin: equivalent
    (_diff(-0.20, -0.25, -0.15), CONFIRMED),  # b worse: certainly no better
    (_diff(0.20, 0.12, 0.28, noise=0.02), NOT_CONFIRMED),  # b clearly better, beyond the margin
    (_diff(0.00, -0.09, 0.09), NOT_SHOWN),  # overlap, but the interval reaches past the margin
])
def test_no_better_verdicts(diff, expected):
    assert verdict(diff, "no_better") == expected


def test_paired_difference_flips_sign_for_lower_is_better_and_checks_rows():
    a, b = _eval("a", BASE), _eval("b", BASE + 0.2)  # b's loss is higher: b is worse
    assert paired_difference(a, b).mean == pytest.approx(-0.2)
    with pytest.raises(CourseError, match="needs the same held-out rows"):
        paired_difference(a, _eval("c", BASE[:10]))
    with pytest.raises(CourseError, match="scored the response loss only"):
        paired_difference(a, b, "rouge_l")


def test_noise_floor_is_the_range_of_seed_means():
    runs = [_eval(str(s), BASE + s) for s in (0.0, 0.03, 0.01)]
    assert noise_floor(runs, "response_loss") == pytest.approx(0.03)
    with pytest.raises(CourseError, match="two seeds or more"):
        noise_floor(runs[:1], "response_loss")


def test_claims_are_judged_by_one_function():
    rank = next(c for c in CLAIMS if c.key == "rank")
    targets = next(c for c in CLAIMS if c.key == "targets")
    evals = {"qlora-r8-qv": _eval("qlora-r8-qv", BASE), "qlora-r16-qv": _eval("qlora-r16-qv", BASE + 0.001),
             "qlora-r8-all": _eval("qlora-r8-all", BASE - 0.3)}
    assert judge(rank, evals, {"response_loss": 0.01}).verdict == CONFIRMED
    j = judge(targets, evals, {"response_loss": 0.01})
    assert j.verdict == CONFIRMED and "improvement +0.300" in j.evidence
    with pytest.raises(CourseError, match="needs the evaluation of lora8bit-r8-all"):
        judge(next(c for c in CLAIMS if c.key == "8bit"), evals)
    table = difference_table(j.differences, "better")
    assert table.loc["response_loss", "verdict"] == CONFIRMED and table.loc["response_loss", "rows b better"] == 60


def _lat(median, low, high):
    return LatencyRow(median, low, high, 5, 32, 4)


@pytest.mark.parametrize("unmerged, merged, expected", [
    ((3.0, 2.9, 3.1), (2.0, 1.9, 2.1), CONFIRMED),
    ((3.0, 2.9, 3.1), (2.9, 2.8, 3.0), NOT_CONFIRMED),
    ((2.05, 1.95, 2.2), (2.0, 1.9, 2.1), NOT_SHOWN),
    # The merged median is within the margin, but its slowest run is not: no difference is not shown.
    ((3.0, 2.9, 3.1), (2.1, 2.0, 2.3), NOT_SHOWN),
])
def test_latency_verdict(unmerged, merged, expected):
    table = LatencyTable(_lat(2.0, 1.9, 2.1), _lat(*unmerged), _lat(*merged))
    assert latency_judgement(table).verdict == expected
    assert judge(next(c for c in CLAIMS if c.key == "merge"), {}, latency=table).verdict == expected


def test_latency_judgement_reads_the_overheads_and_says_why():
    from lora_course.evidence import LATENCY_MARGIN, latency_judgement

    j = latency_judgement(LatencyTable(_lat(2.0, 1.9, 2.1), _lat(2.05, 1.95, 2.2), _lat(2.0, 1.9, 2.1)))
    assert j.verdict == NOT_SHOWN and not j.unmerged_slower
    assert j.unmerged_overhead == pytest.approx(0.025) and j.merged_worst_overhead == pytest.approx(0.05)
    assert "no cost to remove" in j.describe() and f"margin {LATENCY_MARGIN:.0%}" in j.describe()


def test_interval_text_uses_the_token_weighted_loss():
    ev = Evaluation("x", "loss", {"loss": 2.5, "perplexity": 1.0, "row_losses": [2.0, 3.0, 2.0, 3.0]})
    assert interval_text(ev, "response_loss").startswith("2.50 [")


def test_two_sided_names_the_winner_only_past_zero_and_the_noise_floor():
    assert two_sided(_diff(0.20, 0.10, 0.30, noise=0.05)) == B_BETTER
    assert two_sided(_diff(-0.20, -0.30, -0.10, noise=0.05)) == A_BETTER
    # clear of zero but inside the noise floor: not a winner; inside plus or minus the margin: equivalent
    assert two_sided(_diff(0.03, 0.01, 0.04, noise=0.05)) == EQUIVALENT
    assert two_sided(_diff(-0.03, -0.045, -0.01, noise=0.05)) == EQUIVALENT
    # an interval reaching past the margin on either side decides nothing
    assert two_sided(_diff(0.0, -0.08, 0.08)) == NOT_SHOWN
    assert two_sided(_diff(0.04, -0.01, 0.09, noise=0.01)) == NOT_SHOWN
