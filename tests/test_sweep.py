"""The sweep runner at the smoke profile: every point through the pipeline, cached, failures reported."""

from __future__ import annotations

import dataclasses

import pandas as pd

from lora_course.config import ATTENTION_QV, PROFILES, Experiment, LoraSettings, SweepPoint
from lora_course.sweep import SWEEP, point_config, run_sweep, sweep_table


def _point(name, group="rank, q/v", train=None, seed=42, **lora):
    return SweepPoint(group, Experiment(name, name, "nf4", LoraSettings(**{"target_modules": ATTENTION_QV, **lora})),
                      train or {}, seed)


def test_the_chapter_sweep_is_data_with_the_required_points():
    names = [p.name for p in SWEEP]
    assert len(names) == len(set(names))
    ranks = {(p.experiment.lora.target_modules, p.experiment.lora.r) for p in SWEEP if p.group.startswith("rank")}
    assert {r for t, r in ranks if t == ATTENTION_QV} == {1, 8, 64}
    assert {r for t, r in ranks if t != ATTENTION_QV} == {1, 8, 64}
    lrs = {p.train.get("learning_rate") for p in SWEEP if p.group == "learning rate"}
    assert lrs == {1e-5, 1e-4} and PROFILES["cpu"].train.learning_rate == 1e-3
    assert [p.experiment.lora.use_dora for p in SWEEP if p.group == "DoRA"] == [True]
    assert sorted(p.seed for p in SWEEP if p.group == "seed") == [43, 44]
    config = point_config(SWEEP[0], PROFILES["cpu"], "results")
    assert config.profile.train.max_steps == PROFILES["cpu"].sweep_steps and config.name == "sweep/qv-r1"


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
