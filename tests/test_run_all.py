"""Runs side by side (`pipeline.run_all`): the same results as one after the other, in the order asked,
a failure kept in its place or raised, and the chapter's time record given the pool's wall time."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from lora_course.config import RunConfig
from lora_course.errors import CourseError
from lora_course.pipeline import _longest_first, _planned_steps, run, run_all, threads_per_run
from lora_course.presets import PROFILES
from lora_course.timing import TIMES_ENV, totals

SMOKE = PROFILES["smoke"]
SIDE_BY_SIDE = dataclasses.replace(SMOKE, parallel_runs=2)
NAMES = ["qlora-r8-qv", "lora8bit-r8-all"]


def test_two_runs_at_once_give_what_one_after_the_other_gives(tmp_path, monkeypatch):
    record = tmp_path / "times.jsonl"
    monkeypatch.setenv(TIMES_ENV, str(record))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' threads on 2 cores: the same arithmetic, so the same numbers
    try:
        alone = [run(RunConfig.create(n, SMOKE, results_dir=tmp_path / "alone"), evaluate="loss") for n in NAMES]
    finally:
        torch.set_num_threads(threads)
    record.unlink()
    bad = dataclasses.replace(SIDE_BY_SIDE, train=dataclasses.replace(SIDE_BY_SIDE.train, max_length=4))
    requests = [(RunConfig.create(n, SIDE_BY_SIDE, results_dir=tmp_path / "pool"), "loss") for n in NAMES]
    requests.insert(1, (RunConfig.create("qlora-r8-qv", bad, results_dir=tmp_path / "pool", name="too-short"), "loss"))
    start = time.perf_counter()
    together = run_all(requests, keep_going=True)
    wall = time.perf_counter() - start

    # In the order asked, the failure in its place with its one sentence, the others complete.
    assert [getattr(r, "name", None) for r in together] == [NAMES[0], None, NAMES[1]]
    assert isinstance(together[1], CourseError) and "raise max_length" in str(together[1])
    for a, b in zip(alone, [r for r in together if not isinstance(r, BaseException)]):
        assert [x["loss"] for x in a.result.losses] == [x["loss"] for x in b.result.losses]
        assert a.evaluation.loss["row_losses"] == b.evaluation.loss["row_losses"]
        assert b.out_dir.is_dir() and json.loads((b.out_dir / "config.json").read_text())["name"] == b.name
    # The chapter's record: training and evaluation, together no more than the call's wall time.
    spent = totals(record)
    assert spent["training"] > 0 and spent["evaluation"] > 0
    assert sum(spent.values()) <= wall + 0.1

    # Asked again, everything is on disk: no worker starts, and the same numbers come back.
    again = run_all([r for r in requests if r[0].name != "too-short"])
    assert [r.evaluation.loss["loss"] for r in again] == [r.evaluation.loss["loss"] for r in alone]
    # Without keep_going the failure is raised, as run() would raise it.
    with pytest.raises(CourseError, match="raise max_length"):
        run_all([requests[1], requests[0]])


def test_parallel_runs_is_scheduling_not_identity():
    one, two = (RunConfig.create("qlora-r8-qv", p) for p in (SMOKE, SIDE_BY_SIDE))
    assert one.same_run_as(two) and one.out_dir == two.out_dir
    assert PROFILES["cpu"].parallel_runs == 2 and PROFILES["gpu"].parallel_runs == 1
    assert PROFILES["gpu-mini"].parallel_runs == PROFILES["smoke"].parallel_runs == 1
    assert threads_per_run(1) >= threads_per_run(2) >= 1
    with pytest.raises(CourseError, match="parallel_runs must be a whole number"):
        dataclasses.replace(SMOKE, parallel_runs=0)
    with pytest.raises(CourseError, match="must be 1 on a GPU"):
        dataclasses.replace(PROFILES["gpu"], parallel_runs=2)
    # Longest first: full evaluations, then 8-bit, then more steps.
    configs = {n: RunConfig.create(n, SMOKE) for n in [*NAMES, "lora-r8-all"]}
    order = sorted([(configs["lora-r8-all"], "loss"), (configs["qlora-r8-qv"], "full"),
                    (configs["lora8bit-r8-all"], "full")], key=lambda r: _longest_first(*r))
    assert [c.name for c, _ in order] == ["lora8bit-r8-all", "qlora-r8-qv", "lora-r8-all"]
    # A run bounded by epochs counts their steps: 8 rows / 4 a step x 10 epochs = 20, more than 6.
    epochs = RunConfig.create("qlora-r8-all", SMOKE, name="epochs", data={"train_rows": 8}, max_steps=-1,
                              num_train_epochs=10)
    assert _planned_steps(epochs) == 20 and _planned_steps(configs["qlora-r8-qv"]) == SMOKE.train.max_steps == 6
    order = sorted([(configs["qlora-r8-qv"], "loss"), (epochs, "none")], key=lambda r: _longest_first(*r))
    assert [c.name for c, _ in order] == ["epochs", "qlora-r8-qv"]
