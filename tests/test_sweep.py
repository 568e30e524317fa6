"""The sweep runner at the smoke profile: every point through the pipeline, cached, failures reported."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from lora_course.config import SweepPoint
from lora_course.errors import CourseError
from lora_course.presets import PROFILES
from lora_course.results import Evaluation
from lora_course.settings import ALL_LINEAR, ATTENTION_QV, Experiment, LoraSettings
from lora_course.sweep import BASE_POINT, SWEEP, point_config, rank_scale, rank_scale_verdict, run_sweep, sweep_table


def _point(name, group="rank, q/v", train=None, seed=42, **lora):
    return SweepPoint(group, Experiment(name, name, "nf4", LoraSettings(**{"target_modules": ATTENTION_QV, **lora})),
                      train or {}, seed)


def test_the_chapter_sweep_crosses_rank_scale_rule_and_targets():
    names = [p.name for p in SWEEP]
    assert len(names) == len(set(names)) == 12
    settings = {(p.experiment.lora.target_modules, p.experiment.lora.r, p.experiment.lora.lora_alpha,
                 p.experiment.lora.use_rslora) for p in SWEEP}
    for targets in (ATTENTION_QV, ALL_LINEAR):
        # the small rank once (every rule gives it scale 2), the large rank under each rule
        assert {(r, a, rs) for t, r, a, rs in settings if t == targets} == {
            (4, 8, False), (64, 8, False), (64, 128, False), (64, 4, True)}
    scales = {p.name: p.experiment.lora.scaling for p in SWEEP}
    assert scales["qv-r4"] == scales["qv-r64-alpha128"] == 2.0
    assert scales["qv-r64"] == 0.125 and scales["qv-r64-rslora-alpha4"] == 0.5
    assert [(p.name, p.seed) for p in SWEEP if p.group == "seed"] == [("qv-r4-seed43", 43), ("qv-r4-seed44", 44)]
    assert BASE_POINT == "qv-r4"
    longer = [p for p in SWEEP if p.budget != 1]
    assert [(p.name, p.budget) for p in longer] == [("all-r4-steps-x2", 2), ("qv-r64-alpha128-steps-x2", 2)]
    cpu = PROFILES["cpu"]
    assert point_config(SWEEP[0], cpu, "results").profile.train.max_steps == cpu.sweep_steps == 6
    config = point_config(longer[1], cpu, "results")
    assert config.profile.train.max_steps == 12 and config.name == "sweep/qv-r64-alpha128-steps-x2"
    with pytest.raises(CourseError, match="budget is a whole number"):
        SweepPoint("x", SWEEP[0].experiment, budget=0)


def _eval(name, rows):
    return Evaluation(name=name, kind="loss", loss={"loss": sum(rows) / len(rows), "row_losses": rows})


def test_rank_scale_verdict_follows_the_data():
    # all linear at r = 4 better than every large-rank q/v point by 0.3 nats, at both budgets: the insight holds
    base = [4.0 + 0.01 * i for i in range(20)]
    evals = {"qv-r4": _eval("qv-r4", base), "all-r4": _eval("all-r4", [x - 0.3 for x in base]),
             "all-r4-steps-x2": _eval("all-r4-steps-x2", [x - 0.5 for x in base])}
    for name in ("qv-r64", "qv-r64-alpha128", "qv-r64-rslora-alpha4", "qv-r64-alpha128-steps-x2"):
        evals[name] = _eval(name, list(base))
    table, diffs = rank_scale(evals, noise=0.02)
    assert list(table["outcome"]) == ["all linear better"] * 4
    assert table.loc["alpha fixed", "scale at r = 64"] == 0.125
    assert abs(table.loc["alpha = 2r", "all linear's lead"] - 0.3) < 1e-9
    text = rank_scale_verdict(diffs, steps=6)
    assert "cut the scale alpha / r from 2 to 0.125" in text and "survives the confound" in text
    # with the scale kept, the large rank wins at both budgets: the insight rests on the confound
    for name, shift in (("qv-r64-alpha128", -0.6), ("qv-r64-alpha128-steps-x2", -0.8)):
        evals[name] = _eval(name, [x + shift for x in base])
    table, diffs = rank_scale(evals, noise=0.02)
    assert table.loc["alpha = 2r", "outcome"] == "larger rank better"
    assert abs(table.loc["alpha = 2r", "raising r on q/v"] - 0.6) < 1e-9
    assert "rests on the confound" in rank_scale_verdict(diffs, steps=6)
    # and when the longer budget disagrees, the verdict says the budget cannot decide
    evals["qv-r64-alpha128-steps-x2"] = _eval("x", [x - 0.5 for x in base])
    _, diffs = rank_scale(evals, noise=0.02)
    assert "did not hold at 12" in rank_scale_verdict(diffs, steps=6)
    del evals["all-r4"]
    with pytest.raises(CourseError, match="needs the sweep points all-r4"):
        rank_scale(evals, noise=0.02)


def test_points_are_trained_once_cached_and_failures_reported(tmp_path):
    profile = dataclasses.replace(PROFILES["smoke"], sweep_steps=2)
    points = [_point("qv-r2", r=2), _point("qv-r2-lr", group="learning rate", train={"learning_rate": 1e-5}, r=2),
              _point("broken", target_modules=("no_such_proj",))]
    first = run_sweep(points, profile, tmp_path)
    assert [r.status for r in first[:2]] == ["trained", "trained"]
    assert first[2].status.startswith("failed: Target module(s) no_such_proj not found in the model")
    assert [len(r.losses) for r in first[:2]] == [2, 2]
    # r x (in + out) per adapted matrix: q 64 -> 64, v 64 -> 32 (grouped keys and values), 2 layers.
    assert first[0].trainable == 2 * 2 * ((64 + 64) + (64 + 32))
    again = run_sweep(points, profile, tmp_path)
    assert [r.status for r in again[:2]] == ["cached", "cached"]
    assert [r.response_loss for r in again[:2]] == [r.response_loss for r in first[:2]]
    table = sweep_table(again)
    assert list(table.index) == ["qv-r2", "qv-r2-lr", "broken"]
    assert table.loc["qv-r2-lr", "learning_rate"] == 1e-5 and pd.isna(table.loc["broken", "response_loss"])
    assert table.loc["qv-r2", "learning_rate"] == table.loc["broken", "learning_rate"] == profile.train.learning_rate
    # A failed point leaves no folder behind; finished ones are ordinary run folders.
    assert sorted(p.name for p in (tmp_path / "smoke" / "sweep").iterdir()) == ["qv-r2", "qv-r2-lr"]
