"""Results folders: results/<profile>/<experiment>/ with JSON files and the adapter.

    config.json     the RunConfig that produced the run
    metrics.json    wall time, memory, tokens, parameter counts, data report, ...
    losses.json     per-step training loss (and eval loss per epoch)
    adapter/        the PEFT adapter (adapter_config.json + weights)

Folders are written under a temporary name and renamed when complete, so a
folder with a config.json is always a finished run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


@contextmanager
def atomic_dir(target: str | Path):
    """Yield a scratch folder beside `target`; on success it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o755)  # mkdtemp makes it private; a results folder is an ordinary one
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def write_run(run) -> None:
    """Save an ExperimentRun's config, metrics, losses and adapter."""
    with atomic_dir(run.out_dir) as tmp:
        # save_embedding_layers=False: an adapter on lm_head would otherwise make PEFT
        # save the whole (frozen, unchanged) lm_head weight too: 113 MB for SmolLM2.
        run.model.save_pretrained(tmp / "adapter", save_embedding_layers=False)
        result = run.result.to_dict()
        losses = {"train": result.pop("losses"), "eval": result.pop("eval_losses")}
        result["adapter_dir"] = str(run.out_dir / "adapter")
        metrics = {
            "experiment": run.config.experiment.name,
            "profile": run.config.profile.name,
            "model": run.config.profile.model,
            **result,
            "params": run.params,
            "data": run.data_report,
        }
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "losses.json", losses)
        # config.json last: its presence marks a complete run.
        (tmp / "config.json").write_text(run.config.to_json() + "\n")
    run.result.adapter_dir = str(run.out_dir / "adapter")


def load_run(out_dir: str | Path):
    """The finished ExperimentRun in `out_dir` (without a model), or None."""
    from .config import RunConfig
    from .train import ExperimentRun, TrainResult

    out_dir = Path(out_dir)
    if not (out_dir / "config.json").exists():
        return None
    config = RunConfig.from_json((out_dir / "config.json").read_text())
    metrics = read_json(out_dir / "metrics.json")
    losses = read_json(out_dir / "losses.json")
    result = TrainResult(
        losses=losses["train"],
        eval_losses=losses["eval"],
        wall_time_s=metrics["wall_time_s"],
        peak_memory_mib=metrics["peak_memory_mib"],
        memory_kind=metrics["memory_kind"],
        tokens_trained=metrics["tokens_trained"],
        steps=metrics["steps"],
        adapter_dir=str(out_dir / "adapter"),
        metrics=metrics.get("metrics", {}),
    )
    return ExperimentRun(config, result, metrics["params"], metrics["data"], out_dir)
