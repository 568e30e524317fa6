"""Chapter times (each kernel records its training and evaluation calls; the table splits them) and kept pages."""

from __future__ import annotations

import json

from lora_course import chapters as chapters_module
from lora_course import timing
from lora_course.book import TIMES_FILE, chapter_times_table, run_chapters
from lora_course.chapters import chapter_notebooks


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


class TwoChapterBook:
    """Two one-cell chapters in tmp_path/chapters, built into tmp_path/_build/src with the results in
    tmp_path/results; records the chapters run and the renders (jupyter-book itself is not started)."""

    def __init__(self, tmp_path, monkeypatch):
        from lora_course import book

        self.chapters = tmp_path / "chapters"
        self.chapters.mkdir()
        for stem in ("01-first", "02-second"):
            _notebook(self.chapters / f"{stem}.ipynb", [f"print('{stem} ran')"])
        self.src = src = tmp_path / "_build" / "src"
        self.ran, self.rendered = [], []
        monkeypatch.setattr(chapters_module, "CHAPTERS_DIR", self.chapters)
        monkeypatch.setattr(book, "REPO_ROOT", tmp_path)  # the results folder is tmp_path/results
        monkeypatch.setattr(book, "SOURCE_COPY", src)
        monkeypatch.setattr(book, "copy_book_sources", lambda out_dir=src: None)
        monkeypatch.setattr(book, "build_html", lambda out_dir=src: self.rendered.append(True))
        original = book.run_chapters

        def run(profile, chapters=None, out_dir=src, **kw):
            self.ran.extend(nb.stem for nb in chapters or chapter_notebooks())
            return original(profile, chapters, out_dir, **kw)

        monkeypatch.setattr(book, "run_chapters", run)


def test_rebuilding_one_chapter_reruns_it_alone_and_keeps_the_others(tmp_path, monkeypatch):
    import pytest

    from lora_course import CourseError, book

    built = TwoChapterBook(tmp_path, monkeypatch)
    src, rendered = built.src, built.rendered

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


def test_results_state_follows_the_bytes_not_the_file_times_or_the_tracking_store(tmp_path):
    import os

    from lora_course.book import results_state

    table = tmp_path / "smoke" / "tables" / "serving.json"
    table.parent.mkdir(parents=True)
    table.write_text('{"nf4": 1.25}')
    before = results_state(tmp_path)
    table.write_text('{"nf4": 1.25}')  # rewritten with the same numbers: the same state
    os.utime(table, ns=(1, 1))
    (tmp_path / "mlflow.db").write_bytes(b"a run was tracked")  # the tracking store beside the profiles
    assert results_state(tmp_path) == before
    table.write_text('{"nf4": 1.50}')  # same size, another number
    assert results_state(tmp_path) != before
    table.write_text('{"nf4": 1.25}')
    assert results_state(tmp_path) == before
    (tmp_path / "smoke" / "tables" / "serving.json.bak").write_text("")  # a new file, even empty
    assert results_state(tmp_path) != before


def test_a_second_build_keeps_the_pages_whose_inputs_are_unchanged(tmp_path, monkeypatch):
    import pytest

    from lora_course import CourseError, book

    built = TwoChapterBook(tmp_path, monkeypatch)
    chapters, src, ran = built.chapters, built.src, built.ran
    page = {stem: src / "chapters" / f"{stem}.ipynb" for stem in ("01-first", "02-second")}

    book.build_book("smoke")
    assert ran == ["01-first", "02-second"]
    first = {stem: p.read_text() for stem, p in page.items()}

    ran.clear()
    book.build_book("smoke")  # nothing changed: both pages kept as they were
    assert ran == [] and {stem: p.read_text() for stem, p in page.items()} == first
    times = json.loads((src / TIMES_FILE).read_text())
    assert times["kept"] == ["01-first", "02-second"] and set(times["seconds"]) == set(page)
    assert "(kept" in chapter_times_table(src / TIMES_FILE).splitlines()[2]

    _notebook(chapters / "02-second.ipynb", ["print('02-second ran, reworded')"])
    book.build_book("smoke")  # one chapter's source changed: that chapter alone runs
    assert ran == ["02-second"] and page["01-first"].read_text() == first["01-first"]
    assert "reworded" in page["02-second"].read_text()

    first_nb = chapters / "01-first.ipynb"
    assert book.page_is_current(first_nb, "smoke", src)
    assert not book.page_is_current(first_nb, "cpu", src)  # another profile
    (tmp_path / "results" / "smoke").mkdir(parents=True)
    (tmp_path / "results" / "smoke" / "new-run.json").write_text("{}")
    assert not book.page_is_current(first_nb, "smoke", src)  # the results changed
    (tmp_path / "results" / "smoke" / "new-run.json").unlink()
    assert book.page_is_current(first_nb, "smoke", src)
    with monkeypatch.context() as patched:
        patched.setattr(book, "code_source", lambda modules=(): "another library")
        assert not book.page_is_current(first_nb, "smoke", src)  # the library's code changed

    # A page that failed is never kept, even once the results are back to what its last good run saw.
    second_nb = chapters / "02-second.ipynb"
    _notebook(second_nb, ["import pathlib\nassert not pathlib.Path('results/smoke/stop').exists()"])
    book.build_book("smoke")
    assert book.page_is_current(second_nb, "smoke", src)
    (tmp_path / "results" / "smoke" / "stop").write_text("")
    with pytest.raises(CourseError, match="02-second failed"):
        book.build_book("smoke")
    (tmp_path / "results" / "smoke" / "stop").unlink()
    assert not book.page_is_current(second_nb, "smoke", src)
