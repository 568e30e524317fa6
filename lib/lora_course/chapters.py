"""The chapter notebooks: where they lie, in reading order, and which ones a command names.

    chapter_notebooks()      every chapter, by the number its file name starts with
    select_chapters(names)   those named by number ("05") or file name ("05-merge-deploy")

Below both the book's build and the outcome-sentence check, which each list the chapters.
"""

from __future__ import annotations

from pathlib import Path

from .data import REPO_ROOT
from .errors import CourseError

CHAPTERS_DIR = REPO_ROOT / "chapters"


def chapter_notebooks() -> list[Path]:
    """The chapter notebooks in reading order (their names start with the chapter number)."""
    return sorted(CHAPTERS_DIR.glob("[0-9][0-9]-*.ipynb"))


def select_chapters(names: list[str]) -> list[Path]:
    """The chapter notebooks named by number ("05") or stem ("05-merge-deploy"), in reading order."""
    chapters = chapter_notebooks()
    unknown = [n for n in names if not any(nb.stem == n or nb.stem.split("-")[0] == n for nb in chapters)]
    if unknown:
        raise CourseError(f"No chapter {', '.join(unknown)}: name chapters by number or file name, one of "
                          f"{', '.join(nb.stem for nb in chapters)}.")
    return [nb for nb in chapters if nb.stem in names or nb.stem.split("-")[0] in names]
