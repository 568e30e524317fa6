"""A run removes or replaces only folders the course made and marked; bad input is refused before any work."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from lora_course import CourseError, RunConfig
from lora_course.cli import main
from lora_course.pipeline import SCRATCH_PREFIX, run
from lora_course.results import MARK, atomic_dir, check_replaceable, clear_stale, owned_kind

TRAIN = ["train", "--experiment", "qlora-r8-qv", "--profile", "smoke"]


def _one_sentence(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


def _plant(root):
    """A file beside every folder a bad name could reach: the results root, the profile folder, the user's own folder."""
    files = [root / "keep.txt", root / "smoke" / "keep.txt", root / "smoke" / "mine" / "keep.txt"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("the user's\n")
    return files


def _survive(files) -> bool:
    return all(f.read_text() == "the user's\n" for f in files)


def _dead_pid() -> int:
    """The id of a process that has exited."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --------------------------------------------------------------------------- run names


@pytest.mark.parametrize("name", [".", "..", "ABS", "a/..", "a//b", "../smoke", "two words", "~"])
def test_a_run_name_is_one_folder_name(name, tmp_path, capsys):
    root = tmp_path / "results"
    files = _plant(root)
    outside = tmp_path / "elsewhere"
    files += _plant(outside)
    if name == "ABS":
        name = str(outside / "smoke")
    code = main([*TRAIN, "--name", name, "--results", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and f"The run name {name!r} is not a folder name" in err and _one_sentence(err), err
    assert _survive(files)


def test_a_name_from_the_command_line_is_one_part(tmp_path, capsys):
    """Only the library nests runs (its sweep's "sweep/<point>"); --name a/b is refused and nothing is made."""
    root = tmp_path / "results"
    files = _plant(root)
    before = sorted(root.rglob("*"))
    code = main([*TRAIN, "--name", "a/b", "--results", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and _one_sentence(err), err
    assert err == ("error: The run name 'a/b' is not a folder name: use letters, digits, '.', '_' and '-' only, "
                   "not '.' or '..', e.g. --name qv-long.\n")
    assert sorted(root.rglob("*")) == before and _survive(files)


def test_the_process_comparison_runs_have_one_part_names():
    from lora_course.config import check_run_name
    from lora_course.distributed import MANY, ONE

    for name in (ONE, MANY.format(2), MANY.format(8)):
        check_run_name(name)  # launched through train --name, which takes one folder name


def test_names_may_nest_but_never_climb():
    assert RunConfig.create("qlora-r8-qv", "smoke", name="sweep/qv-r4").out_dir.parts[-2:] == ("sweep", "qv-r4")
    for bad in ("sweep/..", "/sweep", "sweep//x", "../x"):
        with pytest.raises(CourseError, match="is not a folder name"):
            RunConfig.create("qlora-r8-qv", "smoke", name=bad)


def test_a_run_never_replaces_a_folder_the_course_did_not_make(tmp_path, capsys):
    root = tmp_path / "results"
    files = _plant(root)
    for name in ("mine", "sweep"):  # the user's folder; a folder that holds other runs
        (root / "smoke" / "sweep" / "point").mkdir(parents=True, exist_ok=True)
        (root / "smoke" / "sweep" / "point" / MARK).write_text("run\n")
        code = main([*TRAIN, "--name", name, "--results", str(root)])
        err = capsys.readouterr().err
        assert code == 2 and _one_sentence(err), err
        assert "already holds files the course did not write, and the course replaces only its own folders" in err
        assert f"choose another run name than {name!r}" in err
    assert _survive(files) and (root / "smoke" / "sweep" / "point" / MARK).exists()


def test_a_failed_run_removes_only_the_folder_it_created(tmp_path, monkeypatch):
    import lora_course.pipeline as pipeline

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during training")

    monkeypatch.setattr(pipeline, "train", boom)
    root = tmp_path / "results"
    files = _plant(root)
    # Checkpointing runs create their folder (marked) before training: the failure removes it again.
    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=root, name="fresh", save_strategy="steps", save_steps=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    assert not cfg.out_dir.exists() and _survive(files)
    assert sorted(p.name for p in (root / "smoke").iterdir()) == ["keep.txt", "mine"]


def test_the_results_folder_is_checked_before_any_model_loads(tmp_path, capsys):
    as_file = tmp_path / "results"
    as_file.write_text("not a folder\n")
    code = main([*TRAIN, "--results", str(as_file)])
    err = capsys.readouterr().err
    assert code == 2 and _one_sentence(err) and f"{as_file} is a file: pass --results <a folder" in err, err
    assert as_file.read_text() == "not a folder\n"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        code = main([*TRAIN, "--results", str(locked / "results")])
        err = capsys.readouterr().err
        assert code == 2 and "cannot be written" in err and _one_sentence(err)


# --------------------------------------------------------------------------- the atomic replace


def test_atomic_dir_replaces_its_own_kind_only(tmp_path):
    target = tmp_path / "merged"
    with atomic_dir(target, "merged", "fix it") as tmp:
        (tmp / "model.bin").write_text("one")
    assert owned_kind(target) == "merged" and (target / "model.bin").read_text() == "one"
    with atomic_dir(target, "merged", "fix it") as tmp:  # an earlier merged model is replaced
        (tmp / "model.bin").write_text("two")
    assert (target / "model.bin").read_text() == "two"
    with pytest.raises(CourseError, match="already holds a merged, not a run, and the course replaces only its own"):
        check_replaceable(target, "run", "fix it")
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no scratch or old copy left beside it


def test_a_failure_inside_atomic_dir_leaves_target_and_neighbours(tmp_path):
    target = tmp_path / "run"
    with atomic_dir(target, "run") as tmp:
        (tmp / "a").write_text("kept")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_dir(target, "run") as tmp:
            (tmp / "a").write_text("lost")
            raise RuntimeError("half way")
    assert (target / "a").read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_scratch_of_a_killed_process_is_cleared_and_a_live_ones_kept(tmp_path):
    dead = tmp_path / f".run.tmp{_dead_pid()}-abc"
    live = tmp_path / f".run.tmp{os.getpid()}-def"
    user = tmp_path / ".run.tmpnotes"
    for p in (dead, live, user):
        p.mkdir()
        (p / "weights").write_text("x" * 1000)
    assert clear_stale(tmp_path, ".run.tmp") == [dead]
    assert live.exists() and user.exists() and not dead.exists()


def test_any_run_clears_the_scratch_of_killed_runs_in_its_profile(tmp_path, capsys, monkeypatch):
    import lora_course.pipeline as pipeline

    profile = tmp_path / "smoke"
    dead, live = _dead_pid(), os.getpid()
    stale = [profile / f".qlora-r16-qv.tmp{dead}-a1", profile / f".other.old{dead}-b2"]
    kept = [profile / f".mine.tmp{live}-c3", profile / ".notes.tmp-x", profile / "mine"]
    for p in stale + kept:
        p.mkdir(parents=True)

    def stop(*args, **kwargs):
        raise CourseError("stopped before training.")

    monkeypatch.setattr(pipeline, "_train", stop)
    assert main([*TRAIN, "--results", str(tmp_path)]) == 2
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_the_trainer_scratch_of_a_killed_run_is_cleared(tmp_path, monkeypatch):
    import tempfile

    import lora_course.pipeline as pipeline

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / f"{SCRATCH_PREFIX}{_dead_pid()}-xyz"
    stale.mkdir()

    def boom(*args, **kwargs):
        raise RuntimeError("trainer set-up failed")

    monkeypatch.setattr(pipeline, "build_trainer", boom)
    with pytest.raises(RuntimeError, match="set-up failed"):
        run(RunConfig.create("qlora-r8-qv", "smoke", results_dir=tmp_path / "results"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(SCRATCH_PREFIX)]  # neither the stale nor its own


def test_written_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "merged", "merged") as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            (tmp / "model.safetensors").chmod(0o600)  # as a writer that makes private files would
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "merged").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "merged" / "model.safetensors").stat().st_mode) == 0o644


# --------------------------------------------------------------------------- merge --out


def test_a_merged_model_saved_before_marks_existed_is_recognised(tmp_path):
    old = tmp_path / "merged"
    old.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (old / name).write_text("{}")
    assert owned_kind(old) == "merged"
    (old / "notes.txt").write_text("the user's\n")  # anything else makes it the user's folder
    assert owned_kind(old) is None


def test_merge_out_refuses_a_folder_that_is_not_a_merged_model(tmp_path, capsys):
    out = tmp_path / "mine"
    files = [out / "keep.txt", tmp_path / "keep.txt"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("the user's\n")
    code = main(["merge", "--experiment", "qlora-r8-qv", "--profile", "smoke", "--results", str(tmp_path / "results"),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and _one_sentence(err), err
    assert f"{out} already holds files the course did not write" in err and "give --out a new or empty folder" in err
    assert _survive(files) and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "mine"]


# --------------------------------------------------------------------------- said on screen, not lost quietly


class _FakeAdapter:
    """Stands in for a trained PEFT model: write_run only asks it to save itself."""

    def save_pretrained(self, folder, **kwargs):
        os.makedirs(folder)
        with open(os.path.join(folder, "adapter_config.json"), "w") as f:
            f.write("{}\n")


def _finished_run(root, **train):
    """A finished run folder written by write_run, without training (measurements made up)."""
    from lora_course.results import Run, TrainResult, write_run

    cfg = RunConfig.create("qlora-r8-qv", "smoke", results_dir=root, **train)
    result = TrainResult(losses=[{"step": 1, "loss": 2.0}], eval_losses=[], wall_time_s=3.0, step_seconds=[3.0],
                         peak_memory_mib=100.0, memory_kind="process_peak_rss", tokens_trained=1000, steps=1)
    report = {"notes": ["2 row(s) longer than max_length=512 tokens will be truncated"]}
    write_run(Run(cfg, result, {"trainable": 1}, report, cfg.out_dir, model=_FakeAdapter()))
    return cfg


def test_a_reused_run_and_its_data_notes_are_said(tmp_path, capsys):
    cfg = _finished_run(tmp_path)
    assert main([*TRAIN, "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"reused the finished run in {cfg.out_dir}: it has the same settings (--retrain trains it again)"
    assert out[1] == "data: 2 row(s) longer than max_length=512 tokens will be truncated"


def test_replacing_a_run_with_other_settings_is_said(tmp_path, capsys, monkeypatch):
    import lora_course.pipeline as pipeline

    cfg = _finished_run(tmp_path)

    def stop(*args, **kwargs):
        raise CourseError("stopped before training.")

    monkeypatch.setattr(pipeline, "_train", stop)
    assert main([*TRAIN, "--results", str(tmp_path), "--set", "learning_rate=1e-3"]) == 2
    out = capsys.readouterr().out
    assert out == (f"replacing the finished run in {cfg.out_dir}, trained with other settings "
                   "(learning_rate 0.005 -> 0.001); a new name keeps both.\n")
    assert (cfg.out_dir / "config.json").exists()


def test_replacing_a_run_says_its_merged_model_went_with_it(tmp_path, capsys):
    cfg = _finished_run(tmp_path)
    with atomic_dir(cfg.out_dir / "merged", "merged") as tmp:
        (tmp / "model.safetensors").write_bytes(b"x")
    capsys.readouterr()
    _finished_run(tmp_path)
    assert capsys.readouterr().out == (f"removed the merged model in {cfg.out_dir / 'merged'}: it merged the adapter "
                                       "this run replaced; run merge again for the new one.\n")
    assert not (cfg.out_dir / "merged").exists() and (cfg.out_dir / MARK).read_text() == "run\n"


def test_the_mlflow_store_is_created_under_a_lock(tmp_path, monkeypatch):
    """Two first runs at once both created the store's tables, and one went untracked ("duplicate column
    name: step"): the store is opened and its experiment made while holding <results>/mlflow.db.lock."""
    import fcntl

    import mlflow.tracking

    from lora_course.tracking import DB_NAME, track_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "results"
    real = mlflow.tracking.MlflowClient
    held = []

    def client(*args, **kwargs):
        with open(root / f"{DB_NAME}.lock", "a") as other:  # a second open file: flock sees another holder
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", client)
    with track_run(RunConfig.create("qlora-r8-qv", "smoke", results_dir=root)) as tracker:
        tracker.log_metrics({"x": 1.0})
    assert held == [True] and tracker.enabled and (root / DB_NAME).exists()


def test_a_resumed_run_counts_the_whole_run(tmp_path, capsys):
    """Stopped by Ctrl-C in step 2 (checkpoint at step 1), resumed: the metrics are those of all 3 steps."""
    from transformers import TrainerCallback

    class CtrlC(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    whole = run(RunConfig.create("qlora-r8-qv", "smoke", name="whole", results_dir=tmp_path, max_steps=3)).result
    cfg = RunConfig.create("qlora-r8-qv", "smoke", name="stopped", results_dir=tmp_path, max_steps=3,
                           save_strategy="steps", save_steps=1)
    with pytest.raises(KeyboardInterrupt) as stop:
        run(cfg, callbacks=[CtrlC()])
    assert stop.value.__notes__ == [f"checkpoints kept in {cfg.out_dir / 'checkpoints'}: rerun with --resume "
                                    "(or resume=True) to continue from the newest one"]
    resumed = run(cfg, resume=True).result
    assert resumed.steps == whole.steps == 3 and len(resumed.step_seconds) == 3
    assert resumed.tokens_trained == whole.tokens_trained
    assert [x["loss"] for x in resumed.losses] == pytest.approx([x["loss"] for x in whole.losses], rel=1e-4)
    assert resumed.wall_time_s >= sum(resumed.step_seconds)
    assert sorted(p.name for p in cfg.out_dir.iterdir()) == [MARK, "adapter", "config.json", "losses.json",
                                                             "metrics.json"]
    mask = os.umask(0)
    os.umask(mask)  # safetensors writes 0600; the run's files follow the umask like any other file
    assert stat.S_IMODE((cfg.out_dir / "adapter" / "adapter_model.safetensors").stat().st_mode) == 0o666 & ~mask


def test_the_checkpoint_cache_follows_the_umask(tmp_path):
    """A converted or built checkpoint in the shared cache is readable by others (safetensors writes 0600)."""
    from lora_course.model import _materialise

    def build(out):
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x")
        (out / "model.safetensors").chmod(0o600)

    old = os.umask(0o022)
    try:
        target = _materialise(tmp_path / "cache" / "some-model", build)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((target / "config.json").stat().st_mode) == 0o644


def test_a_checkpoint_built_meanwhile_by_another_process_stays_in_place(tmp_path, monkeypatch):
    """Two processes building the same cached checkpoint (a test beside the miniature book): the first
    to put its copy in place keeps it, file for file, and the second's copy leaves no folder behind."""
    from lora_course import model

    target = tmp_path / "cache" / "some-model"

    def build(label):
        def write(out):
            (out / "config.json").write_text(label)
        return write

    # The other process finishes just before this one moves its copy into place.
    share = model.share_as_umask

    def share_then_race(folder):
        share(folder)
        monkeypatch.setattr(model, "share_as_umask", share)  # the other process's own build shares as usual
        model._materialise(target, build("first"))

    monkeypatch.setattr(model, "share_as_umask", share_then_race)
    assert model._materialise(target, build("second")) == target
    monkeypatch.undo()
    assert (target / "config.json").read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["some-model"]
    inode = (target / "config.json").stat().st_ino
    assert model._materialise(target, build("third")) == target  # built once: never again
    assert (target / "config.json").stat().st_ino == inode

    # A folder there that is no checkpoint (no config.json) is replaced by the build.
    leftover = tmp_path / "cache" / "other-model"
    leftover.mkdir()
    (leftover / "partial.bin").write_bytes(b"x")
    model._materialise(leftover, build("built"))
    assert sorted(p.name for p in leftover.iterdir()) == ["config.json"]
