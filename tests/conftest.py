import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Materialised checkpoints (smoke model, SmolLM2) are reused between runs.
os.environ.setdefault("LORA_COURSE_CACHE", str(ROOT / ".cache" / "lora_course"))


@pytest.fixture(scope="session")
def smoke_tokenizer():
    from lora_course.model import load_tokenizer

    return load_tokenizer("smoke-llama")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: every test that reads the miniature book is a book test
def pytest_collection_modifyitems(items):
    for item in items:
        if "mini_book" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.book)


@pytest.fixture(scope="session")
def mini_book(tmp_path_factory):
    """Every chapter executed once at gpu-mini, two at a time: (output folder, chapters that failed).

    The one miniature execution of the book, for the book tests (`pytest -m book`, i.e. `make book-gpu-mini`):
    the chapters' gpu path (4-bit compute, bf16 autocast, evaluation and saving per epoch), where `make book`
    runs their cpu path.
    """
    from helpers import MINI
    from lora_course.book import run_chapters_side_by_side
    from lora_course.chapters import chapter_notebooks

    out = tmp_path_factory.mktemp("book")
    return out, run_chapters_side_by_side(MINI, chapter_notebooks(), out, str(out / "results"))
