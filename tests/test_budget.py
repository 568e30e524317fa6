"""The cpu profile's workload stays within what its time budget was measured for."""

from __future__ import annotations

import dataclasses

from lora_course.budget import BUDGET, heldout_rows, workload
from lora_course.presets import get_profile
from lora_course.sweep import SWEEP


def test_cpu_workload_fits_the_measured_budget():
    now = workload(get_profile("cpu"))
    over = {k: f"{now[k]} > {BUDGET[k]}" for k in BUDGET if now[k] > BUDGET[k]}
    assert not over, (f"The cpu profile now asks for more than its time budget was measured for ({over}): "
                      "make room elsewhere, or time the book again and raise lora_course.budget.BUDGET.")


def test_workload_counts_what_the_settings_say():
    cpu = get_profile("cpu")
    assert heldout_rows(cpu) == 60
    now = workload(cpu)
    assert now["sweep_points"] == len(SWEEP) == 12
    # 4 experiments + the unquantised run + 2 noise seeds, 32 steps each; 10 sweep points of 6 steps
    # and the deciding pair at 12.
    assert now["training_steps"] == 7 * 32 + 10 * 6 + 2 * 12
    # 7 full evaluations (held-out rows and the post's prompts); by loss: the unquantised run and 12 points,
    # the untuned base in float and int8 (chapter 2), three merged models (chapter 5).
    assert now["evaluated_rows"] == 7 * (60 + 3) + (13 + 2 + 3) * 60
    assert now["generated_tokens"] == 7 * (60 + 3) * 128


def test_a_longer_book_breaks_the_budget():
    cpu = get_profile("cpu")
    longer = [
        dataclasses.replace(cpu, sweep_steps=cpu.sweep_steps + 1),
        dataclasses.replace(cpu, max_new_tokens=cpu.max_new_tokens + 1),
        dataclasses.replace(cpu, data=dataclasses.replace(cpu.data, test_size=61)),
        dataclasses.replace(cpu, train=dataclasses.replace(cpu.train, max_steps=33)),
    ]
    for profile in longer:
        now = workload(profile)
        assert any(now[k] > BUDGET[k] for k in BUDGET)


def test_share_of_rows_rounds_up_like_the_split():
    smoke = get_profile("smoke")  # 48 rows, test_size 0.125
    assert heldout_rows(smoke) == 6
