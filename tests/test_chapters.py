"""The chapters: how every page is built, that every one runs at the gpu profile in miniature, that a claim
contradicted by the data stops the build, and that chapter 4's hand-written recipe equals the library."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from helpers import MINI
from lora_course.book import run_chapters
from lora_course.chapters import chapter_notebooks

CHAPTERS = chapter_notebooks()


def _cells(nb, kind):
    return [c for c in nb["cells"] if c["cell_type"] == kind]


def _text(cell) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_committed_chapter_is_built_the_same_way(path):
    nb = json.loads(path.read_text())
    code, markdown = _cells(nb, "code"), _cells(nb, "markdown")
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), "commit chapters without outputs"
    # Title, then the parameters cell, then the set-up cell, both collapsed.
    assert nb["cells"][0]["cell_type"] == "markdown" and _text(nb["cells"][0]).startswith("# ")
    params, setup = nb["cells"][1], nb["cells"][2]
    assert params["metadata"]["tags"] == ["parameters", "hide-input"]
    assert [c for c in code if "parameters" in c["metadata"].get("tags", [])] == [params]
    for name in ("PROFILE =", "SEED =", "RESULTS_DIR ="):
        assert name in _text(params)
    assert setup["metadata"]["tags"] == ["hide-input"]
    assert "install_for_colab(PROFILE)" in _text(setup) and "setup_chapter(PROFILE, SEED, RESULTS_DIR)" in _text(setup)
    # Every code line fits the page.
    long = [line for c in code for line in _text(c).splitlines() if len(line) > 88]
    assert long == []
    # A three-line summary, then exercises under a markdown heading, each with a collapsed solution.
    summary = [c for c in markdown if _text(c).startswith("## Summary")]
    assert len(summary) == 1 and len([x for x in _text(summary[0]).splitlines() if x.startswith("- ")]) == 3
    exercises = markdown[-1]
    assert _text(exercises).startswith("## Exercises")
    questions = re.findall(r"^\d+\. ", _text(exercises), re.MULTILINE)
    solutions = re.findall(r"^:::\{dropdown\} Solution \d+$", _text(exercises), re.MULTILINE)
    assert len(questions) == len(solutions) >= 3


@pytest.fixture(scope="module")
def executed(mini_book):
    return mini_book


def test_every_chapter_runs_at_the_gpu_profile_in_miniature(executed):
    out, failed = executed
    assert failed == []
    assert sorted(p.name for p in (out / "chapters").glob("*.ipynb")) == [p.name for p in CHAPTERS]
    times = json.loads((out / "chapter-times.json").read_text())
    assert times["profile"] == MINI and set(times["seconds"]) == {p.stem for p in CHAPTERS}


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_executed_chapter_output_has_no_warnings(path, executed):
    out, _ = executed
    nb = json.loads((out / "chapters" / path.name).read_text())
    noisy = []
    for i, cell in enumerate(_cells(nb, "code")):
        for o in cell["outputs"]:
            text = "".join(o.get("text", "")) if o.get("output_type") == "stream" and o.get("name") == "stderr" else ""
            if "Warning" in text or "warn(" in text:
                noisy.append(f"cell {i}: {text.strip()[:200]}")
    assert noisy == []
    # The page says which profile produced its numbers, and hides papermill's injected cell.
    outputs = ["".join(o.get("text", "")) for c in _cells(nb, "code") for o in c["outputs"]]
    assert any(f"Numbers on this page: profile '{MINI}'" in t for t in outputs)
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "remove-cell" in injected[0]["metadata"]["tags"]
    # No cell ends by echoing a bare number, string or path that the prose already glues.
    results = ["".join(o["data"]["text/plain"]).strip() for c in _cells(nb, "code") for o in c["outputs"]
               if o.get("output_type") == "execute_result" and set(o["data"]) == {"text/plain"}]
    echoed = [r for r in results if STRAY_REPR.fullmatch(r)]
    assert echoed == []


STRAY_REPR = re.compile(r"np\.float64\(.*\)|\w*Path\(.*\)|-?[\d.]+(e[-+]?\d+)?|'[^'\n]*'|None")


def test_figures_render_as_images(executed):
    out, _ = executed
    nb = json.loads((out / "chapters" / "01-data-formatting.ipynb").read_text())
    images = [o for c in _cells(nb, "code") for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) >= 1


def test_a_claim_the_data_contradict_stops_the_build(executed, tmp_path):
    """Chapter 6 says the noise floor comes from runs that differ only in their seed: break that."""
    out, _ = executed
    results = tmp_path / "results"
    shutil.copytree(out / "results", results)
    config = results / MINI / "qlora-r8-qv-seed43" / "config.json"
    saved = json.loads(config.read_text())
    saved["profile"]["train"]["learning_rate"] *= 2  # no longer the same run at another seed
    config.write_text(json.dumps(saved))
    chapter = [p for p in CHAPTERS if p.stem.startswith("06")]
    assert run_chapters(MINI, chapters=chapter, out_dir=tmp_path, results_dir=str(results)) == [chapter[0].stem]
    nb = json.loads((tmp_path / "chapters" / chapter[0].name).read_text())
    errors = [o for c in _cells(nb, "code") for o in c["outputs"] if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "ClaimError"
    assert "differ only in their seed" in errors[0]["evalue"]


def _recipe_source() -> str:
    nb = json.loads(next(p for p in CHAPTERS if p.stem.startswith("04")).read_text())
    cells = [c for c in _cells(nb, "code") if {"recipe", "recipe-check"} & set(c["metadata"].get("tags", []))]
    assert len(cells) == 6  # five steps and the check
    return "\n\n".join(_text(c) for c in cells)


def _run_recipe(source: str, results_dir) -> dict:
    from lora_course.page import glue_text, guard, say, setup_chapter

    namespace = {"SEED": 42, "glue_text": glue_text, "guard": guard, "say": say,
                 "ctx": setup_chapter("smoke", 42, results_dir)}
    exec(compile(source, "chapter-4-recipe", "exec"), namespace)
    return namespace


def test_the_hand_written_recipe_builds_what_the_library_builds(tmp_path):
    _run_recipe(_recipe_source(), tmp_path)  # its own check cell raises if anything differs


@pytest.mark.parametrize("old, new", [("lora_dropout=0.05", "lora_dropout=0.1"),
                                      ("max_grad_norm=train.max_grad_norm", "max_grad_norm=0.5")])
def test_the_recipe_check_fails_when_the_twins_part(old, new, tmp_path):
    from lora_course.page import ClaimError

    source = _recipe_source()
    assert old in source
    with pytest.raises(ClaimError, match="the hand-built recipe and the library build the same run"):
        _run_recipe(source.replace(old, new), tmp_path)


def test_a_chapter_runs_after_the_chapters_whose_results_it_reads():
    from lora_course.chapters import prerequisites

    needs = prerequisites(CHAPTERS)
    assert needs["04"] == {"02"}  # the baseline run chapter 2 makes
    assert needs["05"] == needs["07"] == {"02", "04"} and needs["06"] == needs["08"] == {"04", "05"}
    assert needs["01"] == needs["02"] == needs["03"] == needs["09"] == needs["10"] == set()
    # Every chapter that reads results at all names what it reads.
    reads = re.compile(r"\.require\(|\.results\.(?:run|evaluation|latency|table)\(")
    for path in CHAPTERS:
        code = "\n".join(_text(c) for c in _cells(json.loads(path.read_text()), "code"))
        if reads.search(code):
            assert needs[path.stem[:2]], path.stem
