"""The benchmark and the GPU scripts at the smoke profile: real values, no timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_course.bench import TRAINER_SETTINGS, lora_training_flops_per_token, random_weights
from lora_course.model import count_parameters, load_model, meta_model
from lora_course.presets import PROFILES

ROOT = Path(__file__).resolve().parents[1]


def _start(argv, out, **env):
    full = {**os.environ, "PROFILE": "smoke", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", **env}
    return subprocess.Popen(argv, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """The bench command and both GPU scripts at smoke, side by side: one thread each, on two cores."""
    outs = {name: tmp_path_factory.mktemp(name) for name in ("bench", "gpu_bench", "gpu_check")}
    procs = {
        "bench": _start([sys.executable, "-m", "lora_course", "bench", "--profile", "smoke", "--experiment",
                         "qlora-r8-all", "--rows", "16", "--repeats", "2", "--results", str(outs["bench"])],
                        outs["bench"]),
        "gpu_bench": _start(["bash", str(ROOT / "scripts" / "gpu_bench.sh"), str(outs["gpu_bench"])],
                            outs["gpu_bench"], ROWS="8", EXPERIMENTS="lora8bit-r8-all"),
        "gpu_check": _start(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(outs["gpu_check"])],
                            outs["gpu_check"], STEPS="3"),
    }
    done = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        done[name] = (proc.returncode, err, outs[name])
    return done


@pytest.fixture(scope="module")
def bench_json(commands):
    code, err, out = commands["bench"]
    assert code == 0, err[-2000:]
    return json.loads((out / "smoke" / "bench" / "qlora-r8-all.json").read_text()), out


def test_settings_differ_only_in_padding_packing_and_accumulation():
    blog, rec = TRAINER_SETTINGS["blog"], TRAINER_SETTINGS["recommended"]
    assert set(blog) == set(rec)
    assert {k for k in blog if blog[k] != rec[k]} == {"gradient_accumulation_steps", "train_sampling_strategy",
                                                      "packing", "packing_strategy"}
    # No dtype in either: both run in the profile's precision.
    assert not {"fp16", "bf16", "compute_dtype"} & set(blog)


def test_both_settings_train_the_same_rows_and_tokens(bench_json):
    data, out = bench_json
    blog, rec = data["training"]["blog"], data["training"]["recommended"]
    assert blog["rows"] == rec["rows"] == 16
    assert blog["tokens"] == rec["tokens"] > 0  # one pass over the same rows, padded or packed
    assert blog["steps"] == 1  # 16 rows, 4 x 4 per optimizer step
    assert data["speedup_tokens_per_second"] == pytest.approx(rec["tokens_per_second"] / blog["tokens_per_second"])
    assert data["heldout_loss_difference"] == pytest.approx(rec["heldout_loss"] - blog["heldout_loss"])
    # The base is timed before and after the other two, and its row pools both.
    repeats = {k: v["repeats"] for k, v in data["latency"].items()}
    assert repeats == {"base": 4, "unmerged": 2, "merged": 2}
    # Each setting is an ordinary pipeline run, in the results layout.
    for name in ("blog", "recommended"):
        config = json.loads((out / "smoke" / "bench" / "qlora-r8-all" / name / "config.json").read_text())
        assert config["profile"]["precision"]["compute_dtype"] == "fp32"


def test_random_weights_model_has_the_architectures_exact_parameter_count():
    profile = random_weights(PROFILES["smoke"])
    assert profile.model == "smoke-llama-random" and profile.model_spec.source == "random"
    model = load_model(profile)
    assert count_parameters(model) == count_parameters(meta_model("smoke-llama"))
    smoke = load_model("smoke-llama")
    assert not all((a == b).all() for a, b in zip(model.parameters(), smoke.parameters()))


def test_flops_per_token_counts_checkpointing():
    # OpenLLaMA-3b-v2 without its input embedding: 3,426,473,600 - 32,000 x 3,200.
    n = 3_426_473_600 - 32_000 * 3_200
    assert lora_training_flops_per_token("open_llama_3b_v2") == 4 * n
    assert lora_training_flops_per_token("open_llama_3b_v2", activation_checkpointing=True) == 6 * n


def test_gpu_bench_script_runs_on_the_cpu_with_a_tiny_architecture(commands):
    code, err, out = commands["gpu_bench"]
    assert code == 0, err[-2000:]
    bench = out / "results" / "smoke" / "bench"
    assert sorted(p.name for p in bench.glob("*.json")) == ["lora8bit-r8-all.json"]
    first = json.loads((bench / "lora8bit-r8-all.json").read_text())
    assert first["model"] == "smoke-llama-random" and set(first["latency"]) == {"base", "unmerged", "merged"}
    assert first["training"]["blog"]["tokens"] == first["training"]["recommended"]["tokens"]


def test_gpu_check_script_reports_moving_adapters_and_finite_losses(commands):
    code, err, out = commands["gpu_check"]
    assert code == 0, err[-2000:]
    report = json.loads((out / "train-check.json").read_text())
    assert report["ok"] is True and report["model"] == "smoke-llama-random"
    assert set(report["runs"]) == {"qlora-r8-all", "lora8bit-r8-all"}
    for r in report["runs"].values():
        assert len(r["losses"]) == 3 and r["finite"]
        assert r["adapter_dtypes"] == ["float32"] and r["moved_share"]["lora_A"] >= 0.99
        flops = lora_training_flops_per_token("smoke-llama", PROFILES["smoke"].train.activation_checkpointing)
        assert r["flops_per_token"] == flops
        assert r["utilisation"] == pytest.approx(flops * r["tokens_per_second"] / report["peak_flops"])
        assert r["memory_kind"] == "process_peak_rss"


def test_padded_share_counts_positions_past_each_rows_end():
    from lora_course.bench import padded_share

    # Batches (2, 4) and (4, 4): 2 padded positions out of 16.
    assert padded_share([2, 4, 4, 4], [0, 1, 2, 3], 2) == 2 / 16
    assert padded_share([2, 4, 4, 4], [1, 2, 0, 3], 2) == 2 / 16
    assert padded_share([3, 3, 3], [0, 1, 2], 2) == 0.0


def test_padding_waste_of_the_smoke_split_from_its_tokenised_rows():
    from lora_course.bench import padded_share, padding_waste
    from lora_course.data import prepare_data, token_lengths
    from lora_course.model import load_tokenizer

    profile = PROFILES["smoke"]
    waste = padding_waste(profile)
    data = prepare_data(profile.data, load_tokenizer(profile), profile.train.max_length)
    lengths = [min(n + 1, profile.train.max_length) for n in token_lengths(data.train["text"], load_tokenizer(profile))]
    assert waste.rows == len(lengths) == data.report.train_rows
    assert (waste.batch_size, waste.max_length) == (profile.train.per_device_train_batch_size, profile.train.max_length)
    # Grouping rows by length leaves less padding than a random order, and more than none.
    assert 0 < waste.grouped < waste.random < 1
    assert waste.grouped >= padded_share(lengths, sorted(range(len(lengths)), key=lengths.__getitem__), waste.batch_size)
