"""Where a chapter's time goes: the library times its own training and evaluation calls.

    timed("training")        a block whose wall time is added to the current chapter's record
    record(kind, seconds)    the same for time spent in other processes
    totals(path)             seconds per kind in one chapter's record

The book builder names a file in TIMES_ENV for each chapter's kernel; every
timed block appends one JSON line there ({"kind": ..., "seconds": ...}). Outside
the book (no TIMES_ENV) nothing is written. A block that raises is recorded too:
its time was spent.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

TIMES_ENV = "LORA_COURSE_TIMES"
KINDS = ("training", "evaluation")
_DEPTH = {"n": 0}  # an evaluation inside a timed training (or the reverse) counts once, to the outer block


@contextlib.contextmanager
def timed(kind: str):
    if kind not in KINDS:
        raise ValueError(f"unknown timing kind {kind!r}: use one of {', '.join(KINDS)}")
    outer = _DEPTH["n"] == 0
    _DEPTH["n"] += 1
    start = time.perf_counter()
    try:
        yield
    finally:
        _DEPTH["n"] -= 1
        if outer:
            record(kind, time.perf_counter() - start)


def totals(path: Path) -> dict[str, float]:
    """Seconds per kind (every kind of KINDS, 0 when none) recorded in `path`; all 0 when it does not exist."""
    out = {k: 0.0 for k in KINDS}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                out[record["kind"]] += float(record["seconds"])
    return {k: round(v, 1) for k, v in out.items()}


def record(kind: str, seconds: float) -> None:
    """Add `seconds` of `kind` to the current chapter's record, as a timed block would (work done elsewhere:
    `pipeline.run_all`'s worker processes)."""
    if kind not in KINDS:
        raise ValueError(f"unknown timing kind {kind!r}: use one of {', '.join(KINDS)}")
    path = os.environ.get(TIMES_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"kind": kind, "seconds": round(seconds, 3)}) + "\n")
