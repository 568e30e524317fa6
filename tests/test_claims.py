"""The outcome-sentence check: a sentence that states a comparison, a multiple or a direction is glued,
guarded or exempt, in every chapter and in small hand-made notebooks."""

from __future__ import annotations

import json

import pytest

from lora_course import book
from lora_course import chapters as chapters_module
from lora_course.chapters import chapter_notebooks
from lora_course.claims import MAX_EXEMPTIONS, check_cells, check_chapters, require_backed, split_sentences
from lora_course.data import REPO_ROOT
from lora_course.errors import CourseError
from lora_course.page import shown_path

CHAPTERS = chapter_notebooks()


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_outcome_sentence_of_a_chapter_is_glued_guarded_or_exempt(path):
    findings = check_chapters([path])
    assert not findings, "\n".join(["sentences to glue, guard or exempt:"] + [str(f) for f in findings])


def _md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(text):
    return {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": text}


def _check(*cells):
    return check_cells("99-test", list(cells))


def test_a_bare_comparison_fails_naming_chapter_cell_and_words():
    findings = _check(_md("# Title"), _code("x = 1"), _md("Ranks compared. At this scale r = 64 beats r = 8."))
    assert len(findings) == 1
    f = findings[0]
    assert (f.chapter, f.cell, f.sentence, f.words) == ("99-test", 2, "At this scale r = 64 beats r = 8.", ("beats",))
    assert "99-test, cell 2" in str(f) and "neither glued nor guarded" in str(f)


def test_a_glued_verdict_passes():
    assert _check(_md("At this scale r = 64 {glue:text}`rank_verdict` r = 8.")) == []


def test_a_glued_number_does_not_vouch_for_a_typed_comparison():
    findings = _check(_md("The learning rate moved the loss by {glue:text}`lr_span` nats, more than any rank."))
    assert [f.words for f in findings] == [("more", "than")]


def test_a_guarded_sentence_passes_and_the_guard_must_cover_the_claim():
    prose = _md("At this scale r = 64 beats r = 8, and training takes longer.")
    guarded = _code('guard(loss64 < loss8, "r = 64 beats r = 8", f"{loss64} against {loss8}")')
    assert [f.words for f in _check(prose, guarded)] == [("longer",)]  # the guard does not quote "longer"
    both = _code(guarded["source"] + '\npage.guard(t64 > t8, sentence="training takes longer", evidence="")')
    assert _check(prose, both) == []


def test_a_guard_whose_sentence_is_not_a_literal_does_not_count():
    prose = _md("At this scale r = 64 beats r = 8.")
    assert len(_check(prose, _code('s = "r = 64 beats r = 8"\nguard(ok, s, "")'))) == 1


def test_an_exemption_names_its_kind_fragment_and_reason():
    prose = "A GPU computes a padded position like a real one, so padding costs more there.\n\n"
    ok = _md(prose + '% outcome-exempt[fact]: "padding costs more there" how GPU kernels treat padded positions')
    assert _check(ok) == []
    for bad in ('% outcome-exempt[opinion]: "padding costs more there" because I think so',  # unknown kind
                '% outcome-exempt[fact]: "padding costs more there"',  # no reason
                '% outcome-exempt: padding costs more there, a well-known fact'):  # no kind, no quotes
        findings = _check(_md(prose + bad))
        assert {f.problem for f in findings} == {"exemption", "unbacked"}
    stale = _check(_md(prose + '% outcome-exempt[fact]: "packing helps" a fragment no sentence holds'))
    assert any("no sentence of its cell contains it" in str(f) for f in stale)


def test_exemptions_are_rare():
    line = '% outcome-exempt[definition]: "is longer" what the glued share counts\n'
    cells = [_md(f"Row {i} is longer.\n\n{line}") for i in range(MAX_EXEMPTIONS + 1)]
    findings = _check(*cells)
    assert [f.problem for f in findings] == ["exemption"] and "more than the" in str(findings[0])


@pytest.mark.parametrize("text, flagged", [
    ("Packing is 3x faster.", True),
    ("It trains 6.2x the parameters.", True),
    ("q and v: 26 x 2 x 8 = {glue:text}`qv8`", False),  # a product, not a multiple
    ("The mean with its 90% bootstrap interval.", False),  # an interval's level, not a share
    ("NF4 with double quantisation.", False),  # a name
    ("A third option is a chat template.", False),  # an ordinal
    ("An eighth of fp32's footprint.", True),  # a fraction
    ('The post: "adapting all linear layers helps".', False),  # a quotation is not the page's claim
    ('The post\'s "helps" holds: all linear is better here.', True),  # the page's own verdict is checked
    ("It keeps 5% for evaluation.", True),
    ("The run took five times as long.", True),
    ("The 4-bit footprint is far from a quarter of fp32's.", True),
    ("The loss rises in three of four steps.", True),
    ("Would r = 16 be better?", False),  # a question asserts nothing
    ("Why is it lower than experiment 1's?", True),  # a why-question asserts its premise
    ("Set `--more-steps` or pass `less_is_more=True`.", False),  # code is not prose
    ("The config needs two GPUs or more.", False),  # a bound, not an outcome
    ("It continues a document rather than answering.", False),  # "rather than" compares nothing
    ("```python\nx = a if a > b else 'better'\n```", False),  # code blocks are skipped
    ("Both runs use [the faster kernel](https://example.org/faster).", True),  # link text is prose
])
def test_what_counts_as_an_outcome(text, flagged):
    assert bool(_check(_md(text))) == flagged


def test_sentences_split_at_full_stops_items_and_blank_lines_not_abbreviations():
    sentences, exemptions = split_sentences(
        "First one, e.g. this.\nStill the second? Third.\n\n- an item\n- another item\n:::{dropdown} Solution 1\nSolved.\n:::")
    assert sentences == ["First one, e.g. this.", "Still the second?", "Third.", "an item", "another item", "Solved."]
    assert exemptions == []


def test_the_build_stops_before_running_a_chapter_with_a_bare_outcome(tmp_path, monkeypatch):
    chapter = tmp_path / "01-bad.ipynb"
    cells = [_md("# Bad\n\nPacking helps here."), _code("x = 1")]
    chapter.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    monkeypatch.setattr(chapters_module, "CHAPTERS_DIR", tmp_path)
    monkeypatch.setattr(book, "run_chapters", lambda *a, **k: pytest.fail("a chapter ran"))
    with pytest.raises(CourseError) as err:
        book.execute_chapters("smoke", tmp_path / "out", names=["01"])
    message = str(err.value)
    assert message.startswith("Chapter 01-bad, cell 0: 'Packing helps here.'") and "guard" in message
    assert message.endswith("(python -m lora_course.claims lists them all).")
    with pytest.raises(CourseError, match="01-bad"):
        require_backed([chapter])


def test_the_page_prints_the_results_folder_relative_to_the_repository(tmp_path):
    assert shown_path(REPO_ROOT / "results" / "cpu") == "results/cpu"
    assert shown_path(tmp_path) == str(tmp_path)  # outside the repository: as given
