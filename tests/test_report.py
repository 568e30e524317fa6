"""Verdicts from intervals: the rules chapter 6 applies, on made-up evaluations with known answers."""

from __future__ import annotations

import pandas as pd
import pytest

from lora_course.evaluate import EvalResult
from lora_course.report import (
    ModelEvaluation,
    compare,
    evidence_table,
    format_interval,
    latency_verdict,
    verdict_b_better,
    verdict_no_better,
)


def _eval(rouge: tuple[float, float, float], losses: list[float]) -> ModelEvaluation:
    summary = pd.DataFrame([[*rouge, 10]], index=pd.Index(["rouge_l"], name="metric"),
                           columns=["mean", "ci_low", "ci_high", "n"])
    loss = {"loss": sum(losses) / len(losses), "perplexity": 1.0, "row_losses": losses}
    return ModelEvaluation("x", [], EvalResult(rows=pd.DataFrame(), summary=summary), loss, 0.0)


LOW = _eval((0.10, 0.08, 0.12), [4.0, 4.1, 3.9, 4.0])
HIGH = _eval((0.20, 0.18, 0.22), [3.0, 3.1, 2.9, 3.0])
LOW_OVERLAPPING = _eval((0.11, 0.09, 0.19), [3.9, 4.1, 3.0, 4.0])


def test_comparison_direction_and_separation():
    c = compare(LOW, HIGH, "rouge_l")
    assert c.differs and c.b_better
    loss = compare(LOW, HIGH, "response_loss")  # lower loss is better
    assert loss.differs and loss.b_better
    assert not compare(LOW, LOW_OVERLAPPING, "rouge_l").differs


def test_verdicts():
    metrics = ["rouge_l", "response_loss"]
    assert verdict_b_better([compare(LOW, HIGH, m) for m in metrics]) == "confirmed"
    assert verdict_b_better([compare(HIGH, LOW, m) for m in metrics]) == "not confirmed"
    assert verdict_b_better([compare(LOW, LOW_OVERLAPPING, "rouge_l")]) == "not measurable at this scale"
    assert verdict_no_better([compare(LOW, LOW_OVERLAPPING, "rouge_l")]) == "confirmed"
    assert verdict_no_better([compare(LOW, HIGH, "rouge_l")]) == "not confirmed"


def test_evidence_table_and_interval_text():
    table = evidence_table({"a": LOW, "b": HIGH}, "a", "b", ["rouge_l"])
    assert table.loc["rouge_l", "a"] == "0.100 [0.080, 0.120]"
    assert bool(table.loc["rouge_l", "intervals apart"]) and table.loc["rouge_l", "better"] == "b"
    assert format_interval(HIGH, "rouge_l") == "0.20 [0.18, 0.22]"


@pytest.mark.parametrize(
    "unmerged, merged, expected",
    [((3.0, 2.9, 3.1), (2.0, 1.9, 2.1), "confirmed"),
     ((3.0, 2.9, 3.1), (2.9, 2.8, 3.0), "not confirmed"),
     ((2.05, 1.95, 2.2), (2.0, 1.9, 2.1), "not measurable at this scale")],
)
def test_latency_verdict(unmerged, merged, expected):
    def lat(t):
        return {"median_s": t[0], "min_s": t[1], "max_s": t[2]}

    latency = {"base": lat((2.0, 1.9, 2.1)), "base + adapter (unmerged)": lat(unmerged), "merged": lat(merged)}
    assert latency_verdict(latency) == expected
