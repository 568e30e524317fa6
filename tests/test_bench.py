"""The benchmark command at the smoke profile: well-formed JSON with every field. No timing assertions."""

from __future__ import annotations

import json

import pytest

from lora_course.cli import main
from lora_course.model import count_parameters, load_model, meta_model, random_weights_spec

TRAINING_FIELDS = {"settings", "train_settings", "steps", "rows", "tokens", "wall_time_s", "step_seconds",
                   "peak_memory_mib", "memory_kind", "final_train_loss", "heldout_loss", "tokens_per_second",
                   "steps_per_second"}
LATENCY_FIELDS = {"median_s", "min_s", "max_s", "repeats", "new_tokens", "prompts", "tokens_per_second"}


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--profile", "smoke", "--experiment", "qlora-r8-all", "--rows", "16", "--repeats", "2",
                 "--out", str(out)]) == 0
    return json.loads((out / "qlora-r8-all.json").read_text())


def test_bench_json_has_every_field(bench_json):
    assert bench_json["profile"] == "smoke" and bench_json["experiment"] == "qlora-r8-all"
    assert set(bench_json["training"]) == {"blog", "recommended"}
    for t in bench_json["training"].values():
        assert set(t) == TRAINING_FIELDS
        assert t["rows"] == 16 and t["tokens"] > 0 and t["steps"] >= 1
        assert set(t["step_seconds"]) == {"median", "min", "max", "n"}
        assert t["step_seconds"]["min"] <= t["step_seconds"]["median"] <= t["step_seconds"]["max"]
        assert t["heldout_loss"] > 0
    assert set(bench_json["latency"]) == {"base", "base + adapter (unmerged)", "merged"}
    for lat in bench_json["latency"].values():
        assert set(lat) == LATENCY_FIELDS and lat["repeats"] == 2
    assert bench_json["speedup_tokens_per_second"] > 0
    assert "heldout_loss_difference" in bench_json and "environment" in bench_json


def test_both_settings_train_on_the_same_rows_and_tokens(bench_json):
    blog, rec = bench_json["training"]["blog"], bench_json["training"]["recommended"]
    # One pass over the same 16 rows: the same non-padding tokens, packed or padded.
    assert blog["tokens"] == rec["tokens"]
    # The blog's 16 rows per optimizer step (4 x 4): one step for 16 rows.
    assert blog["steps"] == 1


def test_random_weights_model_has_the_architectures_exact_parameter_count():
    spec = random_weights_spec("smoke-llama")
    assert spec.source == "random" and spec.name == "smoke-llama-random"
    model = load_model(spec)
    assert count_parameters(model) == count_parameters(meta_model("smoke-llama"))
    # Random, not the smoke checkpoint: same shapes, different weights.
    smoke = load_model("smoke-llama")
    assert not all((a == b).all() for a, b in zip(model.parameters(), smoke.parameters()))


def test_gpu_bench_script_runs_on_the_cpu_with_a_tiny_architecture(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PROFILE": "smoke", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(root / "scripts" / "gpu_bench.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(p.name for p in tmp_path.glob("*.json"))
    assert written == ["lora8bit-r8-all-random.json", "qlora-r8-all-random.json", "qlora-r8-qv-random.json"]
    first = json.loads((tmp_path / "qlora-r8-qv-random.json").read_text())
    assert first["random_weights"] is True and first["model"] == "smoke-llama-random"
    assert set(first["latency"]) == {"base", "base + adapter (unmerged)", "merged"}
    assert json.loads((tmp_path / "qlora-r8-all-random.json").read_text())["latency"] == {}
