"""Results: the run types, and the folders they live in. Chapters ask for results by name, never by path.

    results/<profile>/<run>/          one run (see below); <run> is the experiment's name,
                                      "-seed<N>" appended for another seed
        config.json                   the RunConfig that produced it (its presence marks a finished run)
        metrics.json                  wall time, memory, tokens, step times, parameter counts, data report
        losses.json                   per-step training loss, and eval loss per epoch
        adapter/                      the PEFT adapter
        eval.json                     the held-out evaluation, when one was asked for
    results/<profile>/sweep/<point>/  sweep points, same layout
    results/<profile>/bench/          benchmark runs and tables
    results/<profile>/deploy/         latency table, merged model
    results/<profile>/figures/        the chapters' figures
    results/mlflow.db                 MLflow's store

A run folder is written under a temporary name and renamed when complete, so a
folder with a config.json is always a finished run.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .config import RunConfig
from .errors import CourseError
from .post import EPOCHS, EXAMPLES, REPORTED, TRAIN_ROWS
from .presets import PROFILES

EVAL_FILE = "eval.json"
ADAPTER_DIR = "adapter"  # inside a run's folder
CHECKPOINTS = "checkpoints"  # inside an unfinished run's folder; removed when the run finishes


# --------------------------------------------------------------------------- files
def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


LATENCY_FILE = ("deploy", "latency.json")  # chapter 5's serving latencies, under results/<profile>/


# --------------------------------------------------------------------------- folders the course owns
# Every folder the course creates and may later replace or remove carries this file, holding the
# folder's kind ("run", "merged"). A folder without it is the user's: the course never deletes it.
MARK = ".lora_course"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_as_umask(folder: str | Path) -> None:
    """Give `folder` and everything in it the permissions a plain mkdir/open would have given:
    0777 / 0666 less the process's umask (mkdtemp makes 0700, some writers 0600)."""
    mask = _umask()
    folder = Path(folder)
    folder.chmod(0o777 & ~mask)
    for p in folder.rglob("*"):
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def mark(folder: str | Path, kind: str) -> None:
    """Claim `folder` (made by the course) as a folder of this kind."""
    (Path(folder) / MARK).write_text(kind + "\n")


def owned_kind(folder: str | Path) -> str | None:
    """The kind the course marked `folder` with; None for a folder the course did not make.

    A finished run written before marks existed is recognised by its config.json.
    """
    folder = Path(folder)
    if (folder / MARK).is_file():
        return (folder / MARK).read_text().strip()
    if (folder / "config.json").is_file():
        try:
            RunConfig.from_json((folder / "config.json").read_text())
            return "run"
        except Exception:  # a transformers config.json, or anything else: not a run of ours
            pass
        names = [p.name for p in folder.iterdir()]
        if any(n.endswith(".safetensors") for n in names) and all(_saved_model_file(n) for n in names):
            return "merged"  # only what save_pretrained writes for a model and its tokenizer
    return None


def _saved_model_file(name: str) -> bool:
    return (name in ("config.json", "generation_config.json", "special_tokens_map.json", "chat_template.jinja",
                     "vocab.json", "merges.txt", "added_tokens.json", "model.safetensors.index.json")
            or name.startswith(("tokenizer", "model")) and name.endswith((".json", ".safetensors", ".model")))


def check_replaceable(target: str | Path, kind: str, fix: str) -> None:
    """Refuse, before any work, to replace `target` unless it is absent, empty, or a folder of this kind.

    `fix` ends the sentence: what the user should do instead (e.g. "choose another --name").
    """
    target = Path(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise CourseError(f"{target} exists and is not a folder: {fix}.")
    parent = next((p for p in target.parents if p.exists() or p.is_symlink()), None)
    if parent is not None and not parent.is_dir():
        raise CourseError(f"{parent} is a file, not a folder, so {target} cannot be written: {fix}.")
    if not target.exists() or not any(target.iterdir()):
        return
    found = owned_kind(target)
    if found != kind:
        what = "files the course did not write" if found is None else f"a {found}, not a {kind}"
        raise CourseError(f"{target} already holds {what}, and the course replaces only its own folders: {fix}.")


def check_writable(folder: str | Path, fix: str = "pass --results <a folder you can write>") -> None:
    """Refuse a results folder that is a file or cannot be written, before any work is done."""
    folder = Path(folder)
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir() and p == folder:
                raise CourseError(f"The results folder {folder} is a file: {fix}.")
            if not p.is_dir():
                raise CourseError(f"The results folder {folder} cannot be made: {p} is a file: {fix}.")
            if not os.access(p, os.W_OK | os.X_OK):
                raise CourseError(f"The results folder {folder} cannot be written ({p} is read-only for you): {fix}.")
            return


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clear_stale(folder: str | Path, prefix: str) -> list[Path]:
    """Remove the `<prefix><pid>-*` folders in `folder` whose process has died (a killed run's
    scratch); returns what was removed. Folders of a live process are left alone."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f"{glob.escape(prefix)}*"):
        pid = p.name[len(prefix):].split("-", 1)[0]
        if p.is_dir() and not p.is_symlink() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


_SCRATCH = re.compile(r"^\..+\.(tmp|old)(\d+)-")  # what atomic_dir leaves beside its target: .<name>.tmp<pid>-...


def clear_dead_scratch(folder: str | Path) -> list[Path]:
    """Remove every atomic_dir scratch folder in `folder` whose process has died, whatever its target."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefixes = {p.name[: m.end(1)] for p in folder.iterdir() if (m := _SCRATCH.match(p.name))}
    return [removed for prefix in sorted(prefixes) for removed in clear_stale(folder, prefix)]


def scratch_dir(folder: str | Path, prefix: str) -> Path:
    """A new private folder `<prefix><pid>-<random>` in `folder`, after clearing dead processes' ones."""
    clear_stale(folder, prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=folder))


@contextmanager
def atomic_dir(target: str | Path, kind: str = "run", fix: str = "choose another name or move that folder away"):
    """Yield a scratch folder beside `target`; on success it replaces `target`, marked as `kind`.

    `target` must be absent, empty or a folder of the same kind (see check_replaceable):
    a folder the user made is never replaced. The scratch folder is removed on failure;
    one left by a killed process is removed by the next write beside it.
    """
    target = Path(target)
    check_replaceable(target, kind, fix)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_dir(target.parent, f".{target.name}.tmp")
    try:
        yield tmp
        mark(tmp, kind)
        share_as_umask(tmp)  # mkdtemp makes it private; a results folder is an ordinary one
        check_replaceable(target, kind, fix)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = scratch_dir(target.parent, f".{target.name}.old")
        target.rename(old / target.name)  # out of the way in one step, then deleted
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


# --------------------------------------------------------------------------- run types
@dataclass
class TrainResult:
    """What one training run measured."""

    losses: list[dict[str, float]]  # [{"step": 1, "loss": 3.2}, ...] per logged step
    eval_losses: list[dict[str, float]]  # [{"step": 297, "epoch": 1.0, "eval_loss": 2.1}, ...]
    wall_time_s: float
    step_seconds: list[float]  # wall time of each optimizer step
    peak_memory_mib: float
    memory_kind: str
    tokens_trained: int  # non-padding tokens seen by the model
    steps: int
    world_size: int = 1  # processes that trained together
    moved_share: dict[str, float] = field(default_factory=dict)  # share of lora_A / lora_B entries that changed
    adapter_dtype: str = ""  # dtype the adapter trained in

    @property
    def first_loss(self) -> float:
        return self.losses[0]["loss"] if self.losses else math.nan

    @property
    def final_loss(self) -> float:
        return self.losses[-1]["loss"] if self.losses else math.nan

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_trained / self.wall_time_s if self.wall_time_s else math.nan

    @property
    def median_step_seconds(self) -> float:
        """Median optimizer step, the first (warm-up) step left out when there are others."""
        steps = self.step_seconds[1:] or self.step_seconds
        return float(pd.Series(steps).median()) if steps else math.nan

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(first_loss=self.first_loss, final_loss=self.final_loss, tokens_per_second=self.tokens_per_second,
                 median_step_seconds=self.median_step_seconds)
        return d


def _points(losses: list[dict[str, float]]) -> list[tuple[float, float]]:
    points = [(e["step"], e["loss"]) for e in losses if "loss" in e]
    if len(points) < 2:
        raise CourseError(f"A loss curve needs two logged losses or more, got {len(points)}: log every step "
                          "(logging_steps=1) or train longer.")
    return points


def loss_moves(losses: list[dict[str, float]]) -> dict[str, int]:
    """How a logged loss curve moved from one logged step to the next: {"rose": n, "fell": m, "steps": n + m + flat}."""
    values = [v for _, v in _points(losses)]
    moves = [b - a for a, b in zip(values, values[1:])]
    return {"rose": sum(m > 0 for m in moves), "fell": sum(m < 0 for m in moves), "steps": len(moves)}


def early_drop_share(losses: list[dict[str, float]], fraction: float = 0.25) -> float:
    """Share of a curve's whole fall that has happened after the first `fraction` of its logged points.
    The whole fall runs from the first loss to the mean of the last `fraction` of the points; the point
    reached is the mean of the three points ending a `fraction` of the way in, so that one noisy step
    decides neither. Near 1: the loss drops at once, then flattens; near `fraction`: an even pace.
    NaN when the curve does not fall."""
    points = _points(losses)
    k = max(1, round(len(points) * fraction))
    start = points[0][1]
    early = sum(v for _, v in points[max(0, k - 2):k + 1]) / len(points[max(0, k - 2):k + 1])
    end = sum(v for _, v in points[-k:]) / k
    if start - end <= 0:
        return math.nan  # no fall to share
    return (start - early) / (start - end)


def largest_gap(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    """Largest difference between two loss curves at the steps both logged."""
    pa, pb = dict(_points(a)), dict(_points(b))
    common = sorted(set(pa) & set(pb))
    if not common:
        raise CourseError("The two loss curves share no logged step: log both at the same steps.")
    return max(abs(pa[s] - pb[s]) for s in common)


@dataclass
class EvalResult:
    """Per-row metrics (`rows`) and, per metric, mean with 95% bootstrap interval (`summary`)."""

    rows: pd.DataFrame
    summary: pd.DataFrame  # index: metric; columns: mean, ci_low, ci_high, n

    def to_dict(self) -> dict[str, Any]:
        # Through pandas' JSON writer: numpy bools and ints become plain JSON values.
        return {
            "rows": json.loads(self.rows.to_json(orient="records")),
            "summary": json.loads(self.summary.to_json(orient="index")),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalResult":
        summary = pd.DataFrame.from_dict(d["summary"], orient="index")
        summary.index.name = "metric"
        return cls(rows=pd.DataFrame(d["rows"]), summary=summary)


@dataclass
class Evaluation:
    """A model scored on the held-out rows: response loss per row, and with kind "full"
    also greedy generations for the held-out rows and the post's prompts, with text metrics."""

    name: str
    kind: str  # "loss" or "full"
    loss: dict[str, Any]  # loss, perplexity, response_tokens, row_losses, row_tokens
    heldout: EvalResult | None = None
    prompt_generations: list[dict[str, Any]] = field(default_factory=list)  # product, category, text, raw, stopped, ...
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "loss": self.loss, "seconds": self.seconds,
                "heldout": self.heldout.to_dict() if self.heldout is not None else None,
                "prompt_generations": self.prompt_generations}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Evaluation":
        heldout = EvalResult.from_dict(d["heldout"]) if d.get("heldout") else None
        return cls(d["name"], d["kind"], d["loss"], heldout, d.get("prompt_generations", []), d.get("seconds", 0.0))

    def rows(self, metric: str) -> list[float]:
        """Per-row values of a held-out metric, in the order of the held-out rows."""
        if metric == "response_loss":
            return [float(x) for x in self.loss["row_losses"]]
        if self.heldout is None:
            raise CourseError(f"Evaluation {self.name!r} scored the response loss only: {metric!r} needs a full evaluation.")
        if metric not in self.heldout.rows.columns:
            raise CourseError(f"No metric {metric!r} in evaluation {self.name!r}: choose one of "
                              f"{', '.join(c for c in self.heldout.rows.columns if c not in ('text', 'raw'))}, "
                              "response_loss.")
        return [float(x) for x in self.heldout.rows[metric]]

    def metric(self, name: str) -> float:
        """Mean of a held-out metric (response loss: token-weighted over all rows)."""
        if name == "response_loss":
            return float(self.loss["loss"])
        return float(sum(self.rows(name)) / len(self.rows(name)))


@dataclass
class Run:
    """A finished run: its config, measurements, evaluation and (while still held) model."""

    config: RunConfig
    result: TrainResult | None  # None for a run without training (the base model)
    params: dict[str, Any]
    data_report: dict[str, Any]
    out_dir: Path
    evaluation: Evaluation | None = None
    model: Any = None
    tokenizer: Any = None
    reused: bool = False  # True when a finished run with the same config was found on disk, not trained

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def adapter_dir(self) -> Path:
        return adapter_folder(self.out_dir)


def write_run(run: Run) -> None:
    """Save a run's config, metrics, losses and adapter, all or nothing.

    A merged model in the folder it replaces (made by `merge` from the old adapter) goes with it; a line says so.
    """
    merged = run.out_dir / "merged"
    had_merged = merged.is_dir()
    with atomic_dir(run.out_dir, "run", f"choose another run name than {run.name!r} or move that folder away") as tmp:
        if run.config.experiment.lora is not None:
            # save_embedding_layers=False: an adapter on lm_head would otherwise make PEFT
            # save the whole (frozen, unchanged) lm_head weight too: 113 MB for SmolLM2.
            run.model.save_pretrained(adapter_folder(tmp), save_embedding_layers=False)
        result = run.result.to_dict() if run.result is not None else {}
        losses = {"train": result.pop("losses", []), "eval": result.pop("eval_losses", [])}
        metrics = {"run": run.name, "experiment": run.config.experiment.name, "profile": run.config.profile.name,
                   "model": run.config.profile.model, **result, "params": run.params, "data": run.data_report}
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "losses.json", losses)
        # config.json last: its presence marks a complete run.
        (tmp / "config.json").write_text(run.config.to_json() + "\n")
    if had_merged:
        print(f"removed the merged model in {merged}: it merged the adapter this run replaced; "
              "run merge again for the new one.")


def load_run(out_dir: str | Path) -> Run | None:
    """The finished run in `out_dir` (without a model), or None."""
    out_dir = Path(out_dir)
    if not (out_dir / "config.json").exists():
        return None
    config = RunConfig.from_json((out_dir / "config.json").read_text())
    metrics = read_json(out_dir / "metrics.json")
    losses = read_json(out_dir / "losses.json")
    result = None
    if "wall_time_s" in metrics:
        result = TrainResult(
            losses=losses["train"], eval_losses=losses["eval"], wall_time_s=metrics["wall_time_s"],
            step_seconds=metrics["step_seconds"], peak_memory_mib=metrics["peak_memory_mib"],
            memory_kind=metrics["memory_kind"], tokens_trained=metrics["tokens_trained"], steps=metrics["steps"],
            world_size=metrics.get("world_size", 1), moved_share=metrics.get("moved_share", {}),
            adapter_dtype=metrics.get("adapter_dtype", ""),
        )
    evaluation = load_evaluation(out_dir)
    return Run(config, result, metrics["params"], metrics["data"], out_dir, evaluation)


def newest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint with the highest step in out_dir/checkpoints, or None."""
    folder = Path(out_dir) / CHECKPOINTS
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def adapter_folder(out_dir: str | Path) -> Path:
    """Where a run's folder keeps its adapter."""
    return Path(out_dir) / ADAPTER_DIR


def load_evaluation(out_dir: str | Path, fingerprint: str | None = None) -> Evaluation | None:
    """The evaluation saved in a run's folder; None when there is none, or when `fingerprint` (what was
    evaluated: `evaluate._fingerprint`) is given and is not the one saved with it."""
    path = Path(out_dir) / EVAL_FILE
    if not path.exists():
        return None
    saved = read_json(path)
    if fingerprint is not None and saved.get("fingerprint") != fingerprint:
        return None
    return Evaluation.from_dict(saved["evaluation"])


def save_evaluation(out_dir: str | Path, evaluation: Evaluation, fingerprint: str) -> None:
    """Write a run's evaluation with the fingerprint of what was evaluated (read back by `load_evaluation`)."""
    write_json(Path(out_dir) / EVAL_FILE, {"fingerprint": fingerprint, "evaluation": evaluation.to_dict()})


# --------------------------------------------------------------------------- the layout
@dataclass(frozen=True)
class LatencyRow:
    """Wall time to generate a fixed number of tokens for a batch of prompts, over repeated runs."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    new_tokens: int  # generated per prompt in each run
    prompts: int

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens * self.prompts / self.median_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}

    @classmethod
    def from_times(cls, times: list[float], new_tokens: int, prompts: int) -> "LatencyRow":
        return cls(float(pd.Series(times).median()), min(times), max(times), len(times), new_tokens, prompts)


@dataclass(frozen=True)
class LatencyTable:
    """Generation latency of the base model, the base with the adapter unmerged, and the merged model."""

    base: LatencyRow
    unmerged: LatencyRow
    merged: LatencyRow

    LABELS = {"base": "base", "unmerged": "base + adapter (unmerged)", "merged": "merged"}

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).to_dict() for k in self.LABELS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyTable":
        def row(x):
            return LatencyRow(**{k: v for k, v in x.items() if k != "tokens_per_second"})

        return cls(**{k: row(d[k]) for k in cls.LABELS})

    def frame(self) -> pd.DataFrame:
        """One row per model, labelled for a reader."""
        return pd.DataFrame({self.LABELS[k]: getattr(self, k).to_dict() for k in self.LABELS}).T[
            ["median_s", "min_s", "max_s", "tokens_per_second"]]


class Results:
    """The results of one profile: every chapter reads and writes through this object.

    `chapter` arguments name the chapter that makes a result, so a missing one
    says which chapter to run first.
    """

    def __init__(self, root: str | Path, profile: str):
        self.root = Path(root)
        self.profile = profile

    @property
    def dir(self) -> Path:
        return self.root / self.profile

    def path(self, *parts: str) -> Path:
        """results/<profile>/<parts...>, its parent folder created."""
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def figure(self, name: str) -> Path:
        return self.path("figures", name)

    def run(self, name: str, chapter: str | None = None) -> Run | None:
        """The finished run called `name`; with `chapter`, a missing run is an error naming it."""
        run = load_run(self.dir / name)
        if run is None and chapter is not None:
            raise CourseError(f"No finished run {name!r} in {self.dir}: run {chapter} first, at profile {self.profile!r}.")
        return run

    def evaluation(self, name: str, chapter: str | None = None) -> Evaluation | None:
        ev = load_evaluation(self.dir / name)
        if ev is None and chapter is not None:
            raise CourseError(f"No evaluation of {name!r} in {self.dir}: run {chapter} first, at profile {self.profile!r}.")
        return ev

    def require(self, chapter: str, runs: Sequence[str] = (), evaluations: Sequence[str] = (),
                latency: bool = False) -> None:
        """Check, before a chapter trains anything, that another chapter's results are here.

        One error names everything missing and the chapter that makes it, so a page run
        alone stops at its first cell instead of after hours of training at gpu.
        """
        missing = [f"run {n!r}" for n in runs if load_run(self.dir / n) is None]
        missing += [f"evaluation {n!r}" for n in evaluations if load_evaluation(self.dir / n) is None]
        if latency and self.latency(chapter=None) is None:
            missing.append("the latency table")
        if missing:
            raise CourseError(f"This page needs {', '.join(missing)} from {chapter}, not in {self.dir}: "
                              f"run {chapter} first, at profile {self.profile!r}.")

    def save_latency(self, table: LatencyTable) -> None:
        write_json(self.path(*LATENCY_FILE), table.to_dict())

    def latency(self, chapter: str | None = "chapter 5") -> LatencyTable | None:
        path = self.dir.joinpath(*LATENCY_FILE)
        if not path.exists():
            if chapter is not None:
                raise CourseError(f"No latency table in {path.parent}: run {chapter} first, at profile {self.profile!r}.")
            return None
        return LatencyTable.from_dict(read_json(path))

    def save_table(self, name: str, obj: Any) -> None:
        """A chapter's own small result, as results/<profile>/tables/<name>.json."""
        write_json(self.path("tables", f"{name}.json"), obj)

    def table(self, name: str, chapter: str) -> Any:
        path = self.dir / "tables" / f"{name}.json"
        if not path.exists():
            raise CourseError(f"No result {name!r} in {path.parent}: run {chapter} first, at profile {self.profile!r}.")
        return read_json(path)


# --------------------------------------------------------------------------- beside the post
def course_measures(run: Run, evaluation: Evaluation | None = None) -> dict[str, float]:
    """What the course measured for one run, in the terms the post-beside table uses: trainable
    parameters, training minutes, held-out loss, stop rate and repetition rate (share of held-out
    answers with a sentence said twice)."""
    ev = evaluation if evaluation is not None else run.evaluation
    if run.result is None or ev is None or ev.heldout is None:
        raise CourseError(f"Run {run.name!r} needs its training result and a full evaluation: "
                          "run it with evaluate='full'.")
    return {"trainable parameters": int(run.params["trainable"]), "training minutes": run.result.wall_time_s / 60,
            "held-out loss": ev.metric("response_loss"), "stop rate": ev.metric("stopped"),
            "repetition rate": ev.metric("has_repeated_sentence")}


def beside_post(run: Run, evaluation: Evaluation, evidence: str, here: str = "this course") -> pd.DataFrame:
    """One experiment: the post's trainable parameters, minutes, verdict and example outputs beside the
    course's parameters, minutes, held-out loss, stop rate, repetition rate and `evidence` (the
    course's counted failures, in words). Rows are the measures; columns the post and `here`."""
    name = run.config.experiment.name
    if name not in REPORTED:
        raise CourseError(f"The post reports no run {name!r}: choose one of {', '.join(REPORTED)}.")
    post, ours = REPORTED[name], course_measures(run, evaluation)
    minutes = f"about {post['minutes']:g}" if post["minutes"] is not None else "not given"
    rows = {
        "model": (PROFILES["gpu"].model_spec.shown_name, run.config.profile.model_spec.shown_name),
        "trainable parameters": (f"{post['trainable']:,}", f"{ours['trainable parameters']:,}"),
        "training minutes": (f"{minutes} ({EPOCHS} epochs of {TRAIN_ROWS:,} rows, one A100)",
                             f"{ours['training minutes']:.1f} ({run.result.steps} steps)"),
        "held-out loss": ("not reported", f"{ours['held-out loss']:.3f}"),
        "stop rate": ("no learned stop: cut at the next ###", f"{ours['stop rate']:.0%}"),
        "repetition rate": ("not reported", f"{ours['repetition rate']:.0%}"),
        "verdict / what the outputs show": (post["verdict"], evidence),
        "example outputs": (EXAMPLES[name], "counted, not read: see the failure table"),
    }
    table = pd.DataFrame(rows, index=["the post", here]).T
    table.index.name = name
    return table
