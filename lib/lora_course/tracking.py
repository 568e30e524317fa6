"""MLflow tracking that never fails a run.

    with track_run(config) as tracker:       one MLflow run in experiment "lora-course/<profile>"
        tracker.log_losses(result.losses)
        tracker.log_metrics({"rouge_l": 0.31})

Runs go to a SQLite store in the results folder (`results/mlflow.db`) unless
MLFLOW_TRACKING_URI says otherwise; MLflow 3 keeps the plain-folder store
(`./mlruns`) in maintenance mode. Tracking is a convenience: if mlflow is
missing or its store cannot be opened or written, one line says so on stderr
and the run goes on untracked.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from .config import RunConfig

DB_NAME = "mlflow.db"
MAX_PARAM_CHARS = 6000  # MLflow rejects longer parameter values
# MLflow's limits per log_batch call.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000


def tracking_uri(results_dir: str | os.PathLike) -> str:
    """$MLFLOW_TRACKING_URI if set, else the SQLite store `<results_dir>/mlflow.db` (absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(results_dir).expanduser().resolve() / DB_NAME}"


def open_ui_command(results_dir: str | os.PathLike) -> str:
    """The shell command that opens the MLflow UI on the runs of `results_dir`."""
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri(results_dir))}"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: {"profile": {"train": {"lr": 1e-3}}} -> {"profile.train.lr": "0.001"}."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(map(str, value))
        else:
            out[name] = str(value)
    return {k: v[:MAX_PARAM_CHARS] for k, v in out.items()}


def _quiet_mlflow() -> None:
    # Schema creation on a new SQLite store logs a dozen INFO lines (alembic
    # migrations, "Creating initial MLflow database tables", "Experiment ... does
    # not exist. Creating a new experiment"): routine, and they bury chapter output.
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.store"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _number(value: Any) -> float | None:
    # A metrics dict often carries a few names or Nones among the numbers: skip those.
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class Tracker:
    """Logs to one MLflow run; after the first failure every method does nothing."""

    def __init__(self, client=None, run_id: str | None = None):
        self.client = client
        self.run_id = run_id
        self.off_reason: str | None = None

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def turn_off(self, reason: str) -> None:
        if self.off_reason is None:  # one line per run, however many calls fail
            print(f"MLflow tracking off: {reason}; the run goes on.", file=sys.stderr)
            self.off_reason = reason
        self.client = None

    def _safely(self, fn) -> None:
        if not self.enabled:
            return
        try:
            fn()
        except Exception as exc:  # tracking must never stop training or evaluation
            self.turn_off(_one_line(exc))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested dicts are flattened to dotted names, values logged as text."""

        def go():
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in flatten(params).items()]
            for i in range(0, len(items), _PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=items[i : i + _PARAMS_PER_BATCH])

        self._safely(go)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Numeric values at `step` (0 if None); names, Nones and other non-numbers are skipped."""
        self._log_points([(step or 0, metrics)])

    def log_losses(self, losses: list[Mapping[str, Any]]) -> None:
        """Per-step entries such as {"step": 3, "loss": 2.1} or {"step": 10, "eval_loss": 2.4}."""
        self._log_points([(int(e["step"]), {k: v for k, v in e.items() if k not in ("step", "epoch")}) for e in losses])

    def _log_points(self, points: list[tuple[int, Mapping[str, Any]]]) -> None:
        def go():
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, x, now, step) for step, d in points for k, v in d.items() if (x := _number(v)) is not None]
            for i in range(0, len(items), _METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=items[i : i + _METRICS_PER_BATCH])

        self._safely(go)

    def log_artifacts(self, folder: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._safely(lambda: self.client.log_artifacts(self.run_id, str(folder), artifact_path))

    def log_dict(self, obj: Any, name: str) -> None:
        """`obj` saved as a JSON (or .yaml) artifact called `name`."""
        self._safely(lambda: self.client.log_dict(self.run_id, obj, name))


@contextmanager
def _store_lock(results: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on <results>/mlflow.db.lock (no lock for a store elsewhere)."""
    if results is None:
        yield
        return
    import fcntl  # Unix only

    with open(results / f"{DB_NAME}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open(config: RunConfig, run_name: str | None) -> Tracker:
    # MLflow prints run links to stdout after each run on a tracking server; the
    # course prints its own summary instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow  # noqa: F401  (its import configures the loggers that _quiet_mlflow then lowers)
    from mlflow.tracking import MlflowClient

    _quiet_mlflow()
    uri = tracking_uri(config.results_dir)
    artifact_location, results = None, None
    if uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI"):
        # Without this, a SQLite store puts artifacts in ./mlruns under the current
        # directory, wherever the notebook happens to run.
        results = Path(config.results_dir).expanduser().resolve()
        results.mkdir(parents=True, exist_ok=True)
        artifact_location = (results / "mlartifacts").as_uri()
    name = f"lora-course/{config.profile.name}"
    with _store_lock(results):  # two first runs at once would both create the tables and the experiment
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(name, artifact_location=artifact_location)
        )
    run = client.create_run(
        experiment_id,
        run_name=run_name or config.name,
        tags={"experiment": config.experiment.name, "profile": config.profile.name, "model": config.profile.model},
    )
    return Tracker(client, run.info.run_id)


@contextmanager
def track_run(config: RunConfig, run_name: str | None = None) -> Iterator[Tracker]:
    """One MLflow run for `config`, its settings logged as params; a no-op Tracker if MLflow fails."""
    try:
        tracker = _open(config, run_name)
    except Exception as exc:  # ImportError, an unwritable folder, a store error: all mean "go on untracked"
        tracker = Tracker()
        missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "mlflow"
        reason = "mlflow is not installed (pip install mlflow)" if missing else _one_line(exc)
        tracker.turn_off(reason)
    tracker.log_params(config.to_dict())
    status = "FINISHED"
    try:
        yield tracker
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        tracker._safely(lambda: tracker.client.set_terminated(tracker.run_id, status))
