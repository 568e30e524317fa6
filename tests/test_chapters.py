"""Every chapter runs end to end at the smoke profile; committed notebooks are clean."""

from __future__ import annotations

import json

import pytest

from lora_course.book import chapter_notebooks, run_chapters

CHAPTERS = chapter_notebooks()


def _code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_committed_chapter_is_clean(path):
    nb = json.loads(path.read_text())
    code = _code_cells(nb)
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), "commit chapters without outputs"
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    params = "".join(tagged[0]["source"])
    for name in ("PROFILE =", "SEED =", "RESULTS_DIR ="):
        assert name in params
    assert "environment_report()" in "".join(code[0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")
    assert "## Exercises" in "".join(nb["cells"][-1]["source"])


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    failed = run_chapters("smoke", out_dir=out, results_dir=str(out / "results"))
    return out, failed


def test_every_chapter_runs_at_the_smoke_profile(executed):
    out, failed = executed
    assert failed == []
    assert sorted(p.name for p in (out / "chapters").glob("*.ipynb")) == [p.name for p in CHAPTERS]


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_executed_chapter_output_has_no_warnings(path, executed):
    out, _ = executed
    nb = json.loads((out / "chapters" / path.name).read_text())
    noisy = []
    for i, cell in enumerate(_code_cells(nb)):
        for o in cell["outputs"]:
            text = "".join(o.get("text", "")) if o.get("output_type") == "stream" and o.get("name") == "stderr" else ""
            if "Warning" in text or "warn(" in text:
                noisy.append(f"cell {i}: {text.strip()[:200]}")
    assert noisy == []
    # The page says which profile produced its numbers.
    assert any("Numbers on this page: profile 'smoke'" in "".join(o.get("text", "")) for c in _code_cells(nb) for o in c["outputs"])


def test_figures_render_as_images(executed):
    out, _ = executed
    nb = json.loads((out / "chapters" / "01-data-formatting.ipynb").read_text())
    images = [o for c in _code_cells(nb) for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) >= 1
