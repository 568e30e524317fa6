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
