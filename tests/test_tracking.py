"""MLflow tracking: a fake smoke run written to SQLite and read back; failures never stop a run."""

from __future__ import annotations

import sys

import pytest

from lora_course import RunConfig
from lora_course import tracking as tr

LOSSES = [{"step": s, "loss": 4.0 / s} for s in range(1, 6)]


@pytest.fixture(autouse=True)
def no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_tracking_uri_and_ui_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = f"sqlite:///{tmp_path.resolve()}/results/mlflow.db"
    assert tr.tracking_uri("results") == expected
    assert tr.open_ui_command("results") == f"mlflow ui --backend-store-uri {expected}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert tr.tracking_uri("results") == "http://localhost:5000"


def test_flatten_settings():
    flat = tr.flatten({"experiment": {"lora": {"r": 8, "target_modules": ("q_proj", "v_proj")}}, "seed": 42})
    assert flat == {"experiment.lora.r": "8", "experiment.lora.target_modules": "q_proj,v_proj", "seed": "42"}


def test_fake_run_is_written_to_sqlite_and_reads_back(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path / "results")
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    with tr.track_run(cfg) as tracker:
        tracker.log_losses(LOSSES)
        tracker.log_losses([{"step": 5, "eval_loss": 1.5, "epoch": 1.0}])
        tracker.log_metrics({"rouge_l": 0.25, "model": "smoke-llama", "missing": None})
        tracker.log_dict({"rouge_l": 0.25}, "eval/summary.json")
        tracker.log_artifacts(folder, "adapter")
    assert tracker.enabled
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no migration logs, no run links, no warnings

    uri = tr.tracking_uri(tmp_path / "results")
    assert (tmp_path / "results" / "mlflow.db").exists()
    client = _client(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "qlora-r8-qv"
    assert client.get_experiment(run.info.experiment_id).name == "lora-course/smoke"
    params = run.data.params
    assert params["experiment.lora.r"] == "8"
    assert params["experiment.lora.target_modules"] == "q_proj,v_proj"
    assert params["profile.train.learning_rate"] == "0.005"
    assert params["profile.train.max_steps"] == "6"
    history = client.get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(s, 4.0 / s) for s in range(1, 6)]
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "eval_loss")] == [(5, 1.5)]
    assert run.data.metrics["rouge_l"] == 0.25
    assert not {"model", "missing", "epoch"} & set(run.data.metrics)
    assert {a.path for a in client.list_artifacts(tracker.run_id)} == {"adapter", "eval"}
    # Artifacts live beside the store, not in ./mlruns of wherever the code ran.
    assert (tmp_path / "results" / "mlartifacts").is_dir()
    assert not (tmp_path / "mlruns").exists()


def test_error_in_the_body_propagates_and_marks_the_run_failed(tmp_path):
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path)
    with pytest.raises(ValueError, match="diverged"):
        with tr.track_run(cfg, run_name="broken") as tracker:
            tracker.log_losses(LOSSES[:2])
            raise ValueError("loss diverged")
    run = _client(tr.tracking_uri(tmp_path)).get_run(tracker.run_id)
    assert (run.info.status, run.info.run_name) == ("FAILED", "broken")


def _off_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_unwritable_results_dir_prints_one_line_and_goes_on(tmp_path, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=blocker / "results")
    ran = False
    with tr.track_run(cfg) as tracker:
        tracker.log_losses(LOSSES)
        tracker.log_metrics({"rouge_l": 0.1})
        tracker.log_artifacts(tmp_path)
        tracker.log_dict({}, "x.json")
        ran = True
    assert ran and not tracker.enabled
    lines = _off_lines(capfd.readouterr().err)
    assert len(lines) == 1
    assert lines[0].startswith("MLflow tracking off: ") and lines[0].endswith("; the run goes on.")


def test_missing_mlflow_prints_one_line(tmp_path, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path)
    with tr.track_run(cfg) as tracker:
        tracker.log_losses(LOSSES)
    assert _off_lines(capfd.readouterr().err) == [
        "MLflow tracking off: mlflow is not installed (pip install mlflow); the run goes on."
    ]
    assert not (tmp_path / "mlflow.db").exists()


def test_store_failing_mid_run_prints_one_line(tmp_path, monkeypatch, capfd):
    from mlflow.tracking import MlflowClient

    def full(*args, **kwargs):
        raise OSError("disk\nfull")

    monkeypatch.setattr(MlflowClient, "log_batch", full)
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path)
    with tr.track_run(cfg) as tracker:
        tracker.log_losses(LOSSES)
        tracker.log_metrics({"rouge_l": 0.1})
    assert not tracker.enabled
    assert _off_lines(capfd.readouterr().err) == ["MLflow tracking off: disk full; the run goes on."]


def test_env_tracking_uri_wins(tmp_path, monkeypatch):
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    cfg = RunConfig.create("qlora-r16-qv", "smoke", results_dir=tmp_path / "results")
    with tr.track_run(cfg) as tracker:
        tracker.log_metrics({"rouge_l": 0.5})
    assert (tmp_path / "elsewhere.db").exists()
    assert not (tmp_path / "results" / "mlflow.db").exists()
    assert _client(elsewhere).get_run(tracker.run_id).data.params["experiment.lora.r"] == "16"
