"""The chapter notebooks: where they lie, in reading order, and which ones a command names.

    chapter_notebooks()      every chapter, by the number its file name starts with
    select_chapters(names)   those named by number ("05") or file name ("05-merge-deploy")
    prerequisites(chapters)  for each chapter, the chapters whose results it reads (it runs after them)

Below both the book's build and the outcome-sentence check, which each list the chapters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .data import REPO_ROOT
from .errors import CourseError

CHAPTERS_DIR = REPO_ROOT / "chapters"
# A chapter names the chapters whose results it reads (`results.require("chapter N", ...)`, or a
# `chapter="chapter N"` when it asks for a run). Beside those: chapter 4 reuses chapter 2's baseline
# run (and would make it too if the two ran side by side).
_NAMED = re.compile(r'(?:require\(|chapter=)"chapter (\d+)"')
SHARED_RUNS: dict[str, tuple[str, ...]] = {"04": ("02",)}


def chapter_notebooks() -> list[Path]:
    """The chapter notebooks in reading order (their names start with the chapter number)."""
    return sorted(CHAPTERS_DIR.glob("[0-9][0-9]-*.ipynb"))


def select_chapters(names: list[str]) -> list[Path]:
    """The chapter notebooks named by number ("05") or stem ("05-merge-deploy"), in reading order."""
    chapters = chapter_notebooks()
    unknown = [n for n in names if not any(nb.stem == n or number(nb) == n for nb in chapters)]
    if unknown:
        raise CourseError(f"No chapter {', '.join(unknown)}: name chapters by number or file name, one of "
                          f"{', '.join(nb.stem for nb in chapters)}.")
    return [nb for nb in chapters if nb.stem in names or number(nb) in names]


def number(nb: Path) -> str:
    """A chapter's number, as its file name starts ("05")."""
    return nb.stem.split("-")[0]


def prerequisites(chapters: list[Path]) -> dict[str, set[str]]:
    """For each chapter (by number), the chapters of the list whose results it reads, read from its code."""
    numbers = {number(nb) for nb in chapters}
    out = {}
    for nb in chapters:
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        named = {f"{int(n):02d}" for n in _NAMED.findall(code)} | set(SHARED_RUNS.get(number(nb), ()))
        out[number(nb)] = (named & numbers) - {number(nb)}
    return out
