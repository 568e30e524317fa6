"""Measurements are cached results: reused while what they measured is unchanged, measured again when it changes."""

from __future__ import annotations

import pytest

from lora_course import measured as ms
from lora_course.results import Results


def test_a_measurement_is_reused_until_its_key_changes(tmp_path):
    results = Results(tmp_path, "smoke")
    calls = []

    def measure(value):
        calls.append(value)
        return {"seconds": value}

    assert ms.measured(results, "latency", {"prompts": ["a"]}, lambda: measure(1.5)) == {"seconds": 1.5}
    assert (tmp_path / "smoke" / "measurements" / "latency.json").exists()
    assert ms.measured(results, "latency", {"prompts": ["a"]}, lambda: measure(2.0)) == {"seconds": 1.5}
    assert calls == [1.5]
    assert ms.measured(results, "latency", {"prompts": ["a", "b"]}, lambda: measure(2.0)) == {"seconds": 2.0}
    assert calls == [1.5, 2.0]


def test_a_folder_counts_by_its_files_content(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "weights.bin").write_bytes(b"\x00\x01")
    before = ms.fingerprint({"adapter": adapter})
    assert ms.fingerprint({"adapter": adapter}) == before
    (adapter / "weights.bin").write_bytes(b"\x00\x02")  # retrained: same name, other bytes
    assert ms.fingerprint({"adapter": adapter}) != before
    assert ms.fingerprint({"a": 1, "b": [1, 2]}) == ms.fingerprint({"b": [1, 2], "a": 1})
    assert ms.fingerprint([1, 2]) != ms.fingerprint([2, 1])


def test_a_change_to_the_code_it_runs_measures_again_and_other_code_does_not(tmp_path, monkeypatch):
    results = Results(tmp_path, "smoke")
    ms.measured(results, "x", {}, lambda: 1)
    ms.measured(results, "loss", {}, lambda: 1, code=("evaluate",))
    # What evaluate runs: itself and every module it imports (here through its function-local imports
    # too), not the book's build, its plots or the claims check.
    used = ms.imported_modules(["evaluate"])
    assert {"evaluate", "generate", "model", "data", "config", "precision"} <= set(used)
    assert not {"book", "plots", "claims", "sweep", "cli"} & set(used)
    library = tmp_path / "lib"
    library.mkdir()
    for p in ms.LIBRARY.glob("*.py"):
        (library / p.name).write_text(p.read_text())
    monkeypatch.setattr(ms, "LIBRARY", library)
    monkeypatch.setattr(ms, "_SOURCE_HASH", {})
    (library / "plots.py").write_text((library / "plots.py").read_text() + "\n# a new figure\n")
    assert ms.measured(results, "loss", {}, lambda: 2, code=("evaluate",)) == 1  # plots changed: kept
    assert ms.measured(results, "x", {}, lambda: 2) == 2  # the whole library: measured again
    monkeypatch.setattr(ms, "_SOURCE_HASH", {})
    (library / "generate.py").write_text((library / "generate.py").read_text() + "\n# greedy, faster\n")
    assert ms.measured(results, "loss", {}, lambda: 3, code=("evaluate",)) == 3  # evaluate's code changed


def test_generations_come_back_the_same_without_generating(tmp_path, monkeypatch, smoke_tokenizer):
    from lora_course.model import load_model

    model = load_model("smoke-llama")
    results = Results(tmp_path, "smoke")
    prompts = ["### Instruction:\nDescribe a lamp.\n\n### Response:\n", "### Instruction:\nA cup.\n\n### Response:\n"]
    key = {"model": "smoke-llama"}
    first = ms.measured_generations(results, "gens", model, smoke_tokenizer, prompts, 8, model_key=key, stop_strings=())
    assert [g.new_tokens for g in first] == [8, 8]

    def refuse(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(ms, "generate_detailed", refuse)
    again = ms.measured_generations(results, "gens", model, smoke_tokenizer, prompts, 8, model_key=key, stop_strings=())
    assert again == first
    with pytest.raises(AssertionError, match="generated again"):
        ms.measured_generations(results, "gens", model, smoke_tokenizer, prompts, 9, model_key=key, stop_strings=())
