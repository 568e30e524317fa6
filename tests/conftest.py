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


# Chapters that read no other chapter's results run beside the chain of those that do. Each
# kernel gets one thread: the smoke model is tiny, and two kernels with two threads each on two
# cores would spin against each other.
INDEPENDENT = ("01", "03", "09", "10")


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """Every chapter executed once at the smoke profile: (output folder, chapters that failed)."""
    from concurrent.futures import ThreadPoolExecutor

    from lora_course.book import chapter_notebooks, run_chapters

    out = tmp_path_factory.mktemp("book")
    chapters = chapter_notebooks()
    lanes = [[c for c in chapters if c.stem[:2] in INDEPENDENT], [c for c in chapters if c.stem[:2] not in INDEPENDENT]]
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [pool.submit(run_chapters, "smoke", lane, out, str(out / "results")) for lane in lanes]
            failed = sorted(name for job in jobs for name in job.result())
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return out, failed
