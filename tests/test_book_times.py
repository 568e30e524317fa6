"""The book's chapter times: each chapter's kernel records its training and evaluation calls, the table splits them."""

from __future__ import annotations

import json

from lora_course import chapters as chapters_module
from lora_course import timing
from lora_course.book import TIMES_FILE, chapter_times_table, run_chapters


def _notebook(path, cells: list[str]) -> None:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                     "source": src} for i, src in enumerate(cells)],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb, indent=1))


def test_a_chapters_time_is_split_into_training_evaluation_and_other(tmp_path):
    chapter = tmp_path / "01-timed.ipynb"
    _notebook(chapter, [
        "import time\nfrom lora_course.timing import timed",
        "with timed('training'):\n    time.sleep(1.5)",
        "with timed('evaluation'):\n    time.sleep(0.5)\n    with timed('training'):\n        time.sleep(0.2)",
        "time.sleep(0.3)",
    ])
    out = tmp_path / "out"
    assert run_chapters("smoke", chapters=[chapter], out_dir=out) == []
    saved = json.loads((out / TIMES_FILE).read_text())
    seconds, split = saved["seconds"]["01-timed"], saved["split"]["01-timed"]
    assert 1.5 <= split["training"] < 2.5  # the nested training block counts to the evaluation around it
    assert 0.7 <= split["evaluation"] < 1.5
    assert split["other"] >= 0.3  # the sleeping cell, the kernel's start and the imports
    assert abs(split["training"] + split["evaluation"] + split["other"] - seconds) <= 0.2

    table = chapter_times_table(out / TIMES_FILE).splitlines()
    assert table[0] == "chapter times at profile smoke:"
    row = table[2].split()
    assert row[0] == "01-timed" and row[1] == f"{seconds:.0f}"
    assert row[2] == f"{split['training'] / seconds:.0%}" and row[3] == f"{split['evaluation'] / seconds:.0%}"
    assert table[-1].startswith("all chapters")


def test_a_block_that_fails_is_recorded_too(tmp_path, monkeypatch):
    import pytest

    record = tmp_path / "times.jsonl"
    monkeypatch.setenv(timing.TIMES_ENV, str(record))
    with pytest.raises(RuntimeError):
        with timing.timed("evaluation"):
            raise RuntimeError("stopped")
    with timing.timed("training"):
        pass
    assert [json.loads(line)["kind"] for line in record.read_text().splitlines()] == ["evaluation", "training"]
    monkeypatch.delenv(timing.TIMES_ENV)
    with timing.timed("training"):  # outside the book: nothing written
        pass
    assert len(record.read_text().splitlines()) == 2


def test_select_chapters_by_number_or_name():
    import pytest

    from lora_course import CourseError
    from lora_course.chapters import chapter_notebooks, select_chapters

    all_chapters = chapter_notebooks()
    five = [nb for nb in all_chapters if nb.stem.startswith("05-")]
    assert select_chapters(["05"]) == five == select_chapters([five[0].stem])
    assert select_chapters(["07", "02"]) == [nb for nb in all_chapters if nb.stem[:2] in ("02", "07")]
    with pytest.raises(CourseError, match="No chapter 42"):
        select_chapters(["42"])


def test_rebuilding_one_chapter_reruns_it_alone_and_keeps_the_others(tmp_path, monkeypatch):
    import pytest

    from lora_course import CourseError, book

    chapters = tmp_path / "chapters"
    chapters.mkdir()
    for stem in ("01-first", "02-second"):
        _notebook(chapters / f"{stem}.ipynb", [f"print('{stem} ran')"])
    src = tmp_path / "_build" / "src"
    monkeypatch.setattr(chapters_module, "CHAPTERS_DIR", chapters)
    monkeypatch.setattr(book, "SOURCE_COPY", src)
    monkeypatch.setattr(book, "copy_book_sources", lambda out_dir=src: None)
    rendered = []
    monkeypatch.setattr(book, "build_html", lambda out_dir=src: rendered.append(True))
    original = book.run_chapters
    monkeypatch.setattr(book, "run_chapters", lambda profile, chapters=None, out_dir=src, **kw:
                        original(profile, chapters, out_dir, **kw))

    with pytest.raises(CourseError, match="run the whole book once"):
        book.rebuild_chapters("smoke", ["02"])  # nothing executed yet
    assert rendered == [] and not (src / "chapters" / "02-second.ipynb").exists()

    assert book.run_chapters("smoke") == []  # the whole book once
    first = (src / "chapters" / "01-first.ipynb").read_text()
    before = json.loads((src / TIMES_FILE).read_text())["seconds"]
    book.rebuild_chapters("smoke", ["02"])
    assert rendered == [True]
    assert (src / "chapters" / "01-first.ipynb").read_text() == first  # chapter 1 was not run again
    after = json.loads((src / TIMES_FILE).read_text())["seconds"]
    assert set(after) == {"01-first", "02-second"} and after["01-first"] == before["01-first"]

    with pytest.raises(CourseError, match="executed at profile 'smoke'"):
        book.rebuild_chapters("cpu", ["02"])
