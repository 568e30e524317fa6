"""The book's build: run every chapter with papermill, render with jupyter-book, check in a browser.

    python -m lora_course book --profile cpu      run chapters, then build the HTML
    python -m lora_course check-book              load every page in headless Chromium

Chapters are executed into _build/src/ (a copy of the book's sources with the
executed notebooks in place of the committed, output-free ones); jupyter-book
then renders _build/src/ with execution off and warnings as errors.

A page executed by an earlier build is kept when nothing it is computed from has
changed: its notebook, the profile, the library's code, the course's data, the
installed packages and device, and the results folder (`page_inputs`,
`results_state`). A change to one chapter's prose runs that chapter alone.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from .chapters import CHAPTERS_DIR, chapter_notebooks, number, prerequisites, select_chapters
from .claims import require_backed
from .data import REPO_ROOT, SAMPLE_PATH
from .errors import CourseError
from .install import REPOSITORY
from .measured import code_source, environment_report, fingerprint
from .presets import PROFILES
from .results import read_json, write_json
from .site_check import check_site
from .timing import TIMES_ENV, totals

BUILD_DIR = REPO_ROOT / "_build"
SOURCE_COPY = BUILD_DIR / "src"
HTML_DIR = SOURCE_COPY / "_build" / "html"
BOOK_FILES = ("_config.yml", "_toc.yml", "book")
REPOSITORY_PLACEHOLDER = "REPOSITORY_FROM_PYPROJECT"  # _config.yml's repository url, filled in by copy_book_sources


# --------------------------------------------------------------------------- running
def run_chapters(profile: str = "cpu", chapters: list[Path] | None = None, out_dir: Path = SOURCE_COPY,
                 results_dir: str | None = None, timeout_s: int | None = None) -> list[str]:
    """Execute chapters with papermill into out_dir/chapters/; returns the names that failed.

    Every chapter runs even if an earlier one fails, so the results of the others
    are kept; the caller decides what a failure means.
    """
    import papermill as pm

    chapters = chapters or chapter_notebooks()
    if not chapters:
        raise CourseError(f"No chapter notebooks found in {CHAPTERS_DIR}.")
    (out_dir / "chapters").mkdir(parents=True, exist_ok=True)
    failed = []
    params = {"PROFILE": profile}
    if results_dir is not None:
        params["RESULTS_DIR"] = str(results_dir)
    times: dict[str, float] = {}
    for nb in chapters:
        target = out_dir / "chapters" / nb.name
        record = _timings_file(out_dir, nb.stem)
        start = time.perf_counter()
        print(f"[book] {nb.stem}: running at profile {profile} ...", flush=True)
        try:
            pm.execute_notebook(
                str(nb), str(target), parameters=params, kernel_name="python3", cwd=str(REPO_ROOT),
                progress_bar=False, execution_timeout=timeout_s, kernel_manager_class=_kernel_recording_to(record),
            )
            print(f"[book] {nb.stem}: done in {time.perf_counter() - start:.0f} s", flush=True)
        except Exception as exc:  # papermill raises PapermillExecutionError with the cell's traceback
            failed.append(nb.stem)
            print(f"[book] {nb.stem}: FAILED after {time.perf_counter() - start:.0f} s: {exc}", file=sys.stderr, flush=True)
        if target.exists():
            _hide_injected_parameters(target)
        times[nb.stem] = round(time.perf_counter() - start, 1)
        _record_times(out_dir / TIMES_FILE, profile, {nb.stem: times[nb.stem]}, {nb.stem: _shares(record, times[nb.stem])})
    return failed


def run_chapters_side_by_side(profile: str, chapters: list[Path], out_dir: Path = SOURCE_COPY,
                              results_dir: str | None = None, workers: int = 2) -> list[str]:
    """`run_chapters`, `workers` chapters at a time, each kernel on one thread; the names that failed.

    A chapter starts once the chapters whose results it reads have run (`chapters.prerequisites`),
    the earliest ready chapter first. For small models, whose chapters spend their time starting
    kernels, importing and in Python. Not for timing claims (each chapter slows the other).
    """
    needs = prerequisites(chapters)
    pending, ended, failed = list(chapters), set(), []
    turn = threading.Condition()

    def lane() -> None:
        while True:
            with turn:
                while True:
                    ready = [nb for nb in pending if needs[number(nb)] <= ended]
                    if ready or not pending:
                        break
                    turn.wait()
                if not ready:
                    return
                nb = ready[0]
                pending.remove(nb)
            result = [nb.stem]
            try:
                result = run_chapters(profile, [nb], out_dir, results_dir)
            finally:
                with turn:
                    failed.extend(result)
                    ended.add(number(nb))  # failed or not: a dependent then says what it misses
                    turn.notify_all()

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the kernels started now inherit it
    try:
        lanes = [threading.Thread(target=lane) for _ in range(workers)]
        for t in lanes:
            t.start()
        for t in lanes:
            t.join()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return sorted(failed)


_TIMES_LOCK = threading.Lock()
TIMES_FILE = "chapter-times.json"


def _edit_times(path: Path, edit) -> None:
    """Read the times file ({} when there is none), let `edit(saved)` return it changed, write it back; one
    caller at a time, since lanes side by side finish chapters at once."""
    with _TIMES_LOCK:
        saved = edit(json.loads(path.read_text()) if path.exists() else {})
        path.write_text(json.dumps(saved, indent=2) + "\n")


def _record_times(path: Path, profile: str, times: dict[str, float], split: dict[str, dict] | None = None) -> None:
    """Add chapter times (and their split into training, evaluation and other) to the file; several calls
    may share one output folder, so each adds its chapters as they finish."""
    def add(saved: dict) -> dict:
        if saved.get("profile") != profile:
            saved = {"profile": profile, "seconds": {}, "split": {}}
        saved["seconds"].update(times)
        saved.setdefault("split", {}).update(split or {})
        return saved

    _edit_times(path, add)


# --------------------------------------------------------------------------- where the time went
def _timings_file(out_dir: Path, stem: str) -> Path:
    """The file a chapter's kernel appends its timed training and evaluation calls to (emptied first)."""
    path = out_dir / "timings" / f"{stem}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return path


def _kernel_recording_to(path: Path):
    """A kernel manager class whose kernels get TIMES_ENV = path (one class per chapter, so chapters run
    side by side in threads each write their own file)."""
    from jupyter_client import AsyncKernelManager

    class RecordingKernelManager(AsyncKernelManager):
        async def _async_pre_start_kernel(self, **kw):
            kw["env"] = {**kw.get("env", os.environ), TIMES_ENV: str(path)}
            return await super()._async_pre_start_kernel(**kw)

    return RecordingKernelManager


def _shares(record: Path, seconds: float) -> dict[str, float]:
    """A chapter's seconds split into training, evaluation and the rest."""
    split = totals(record)
    split["other"] = round(max(seconds - sum(split.values()), 0.0), 1)
    return split


def chapter_times_table(path: Path = SOURCE_COPY / TIMES_FILE) -> str:
    """The chapters' times as a text table: seconds, and the share spent training, evaluating and in other cells."""
    saved = json.loads(Path(path).read_text())
    split = saved.get("split", {})
    lines = [f"chapter times at profile {saved['profile']}:",
             f"{'chapter':<28} {'seconds':>8} {'training':>9} {'evaluating':>11} {'other':>7}"]
    total = {"seconds": 0.0, "training": 0.0, "evaluation": 0.0, "other": 0.0}
    for stem, seconds in saved["seconds"].items():
        parts = split.get(stem, {"training": 0.0, "evaluation": 0.0, "other": seconds})
        total["seconds"] += seconds
        for k in ("training", "evaluation", "other"):
            total[k] += parts.get(k, 0.0)
        lines.append(_row(stem, seconds, parts) + ("  (kept: seconds of the build that ran it)"
                                                   if stem in saved.get("kept", []) else ""))
    lines.append(_row("all chapters", total["seconds"], total))
    return "\n".join(lines)


def _row(name: str, seconds: float, parts: dict[str, float]) -> str:
    share = (lambda k: f"{parts.get(k, 0.0) / seconds:.0%}") if seconds > 0 else (lambda k: "-")
    return f"{name:<28} {seconds:>8.0f} {share('training'):>9} {share('evaluation'):>11} {share('other'):>7}"


def _hide_injected_parameters(path: Path) -> None:
    """Remove papermill's injected-parameters cell from the rendered page (the page prints its profile)."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    path.write_text(json.dumps(nb, indent=1) + "\n")


def copy_book_sources(out_dir: Path = SOURCE_COPY) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, out_dir / name, dirs_exist_ok=True)
        elif src.exists():
            shutil.copy2(src, out_dir / name)
    (out_dir / "_config.yml").write_text(book_config_text())


def book_config_text() -> str:
    """_config.yml as jupyter-book reads it: the repository's address filled in from pyproject.toml
    (install.REPOSITORY), which is never typed in _config.yml itself."""
    return (REPO_ROOT / "_config.yml").read_text().replace(REPOSITORY_PLACEHOLDER, REPOSITORY)


def build_html(out_dir: Path = SOURCE_COPY) -> None:
    """jupyter-book build with warnings as errors; raises on any warning or broken reference."""
    shutil.rmtree(out_dir / "_build", ignore_errors=True)
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(out_dir), "-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise CourseError(f"jupyter-book build failed (exit {proc.returncode}): read the warnings above and fix the pages they name.")


def check_prose(chapters: list[Path] | None = None) -> None:
    """Before anything runs: every outcome sentence of the chapters' prose is glued, guarded or exempt
    (lora_course.claims); otherwise one sentence names the chapter, the cell and the fix."""
    require_backed(chapters or chapter_notebooks())


def build_book(profile: str = "cpu") -> Path:
    """Run every chapter whose page is not current (`page_is_current`), then render; fails naming the
    chapters that failed."""
    check_prose()
    chapters = chapter_notebooks()
    _clear_sources(keep={nb.name for nb in chapters})
    copy_book_sources()
    failed, kept = [], []
    for nb in chapters:  # in order: a chapter reads only the results of chapters before it
        if page_is_current(nb, profile):
            kept.append(nb.stem)
            print(f"[book] {nb.stem}: kept from the last build (its notebook, the library, the data, the packages, "
                  "the device and the results are unchanged)", flush=True)
        else:
            _forget_pages([nb])
            failed += run_chapters(profile, [nb], SOURCE_COPY)
    _mark_kept(SOURCE_COPY / TIMES_FILE, kept)
    record_pages(profile, [nb for nb in chapters if nb.stem not in failed])
    return _render(profile, failed)


# --------------------------------------------------------------------------- pages kept between builds
PAGES_FILE = "pages.json"  # in _build/src/: what each executed page was computed from


def results_state(root: Path | None = None) -> str:
    """The fingerprint of every profile's results under `root` (default: the book's results/) as they are
    now, file by file by content (`measured.file_digest`): a table or checkpoint rewritten with the same
    bytes is the same state. The tracking store beside the profiles' folders changes with every run: left out."""
    root = root or REPO_ROOT / "results"  # the chapters' RESULTS_DIR, "results", from the repository root
    folders = [root / name for name in sorted(PROFILES) if (root / name).is_dir()]
    files = [f for folder in folders for f in sorted(folder.rglob("*")) if f.is_file()]  # an empty folder: none
    return fingerprint([(str(f.relative_to(root)), f) for f in files])


@functools.cache
def _installed() -> tuple[str, ...]:
    """The installed packages, name==version (read once per process: about 0.1 s)."""
    return tuple(sorted(f"{d.metadata['Name']}=={d.version}" for d in md.distributions()))


def page_inputs(nb: Path, profile: str) -> str:
    """The fingerprint of what a chapter's page is computed from, the results aside: its notebook, the
    profile, the library's code, the course's data, the installed packages and the device."""
    return fingerprint(nb, profile, code_source(), SAMPLE_PATH.parent, list(_installed()), environment_report())


def _pages(out_dir: Path) -> dict:
    path = out_dir / PAGES_FILE
    return read_json(path) if path.exists() else {}


def page_is_current(nb: Path, profile: str, out_dir: Path | None = None, results_root: Path | None = None) -> bool:
    """Whether the page executed into out_dir (default _build/src/) by an earlier build can be kept: executed
    at this profile from the same inputs (`page_inputs`), with the results as they were when that build ended."""
    out_dir = out_dir or SOURCE_COPY
    saved = _pages(out_dir)
    entry = saved.get("pages", {}).get(nb.stem) if saved.get("profile") == profile else None
    return (entry is not None and (out_dir / "chapters" / nb.name).exists()
            and entry["inputs"] == page_inputs(nb, profile) and entry["results"] == results_state(results_root))


def record_pages(profile: str, chapters: list[Path], out_dir: Path | None = None,
                 results_root: Path | None = None) -> None:
    """Note what `chapters` (executed or kept just now, without failing) were computed from, with the
    results as they are at the end; the other chapters' entries stay as they were."""
    out_dir = out_dir or SOURCE_COPY
    saved = _pages(out_dir)
    if saved.get("profile") != profile:
        saved = {"profile": profile, "pages": {}}
    state = results_state(results_root)
    for nb in chapters:
        saved["pages"][nb.stem] = {"inputs": page_inputs(nb, profile), "results": state}
    write_json(out_dir / PAGES_FILE, saved)


def _forget_pages(chapters: list[Path]) -> None:
    """Drop the entries of chapters about to run: one that fails or is stopped half-way leaves no page to keep."""
    saved = _pages(SOURCE_COPY)
    if any(saved.get("pages", {}).pop(nb.stem, None) for nb in chapters):
        write_json(SOURCE_COPY / PAGES_FILE, saved)


def _clear_sources(keep: set[str]) -> None:
    """Empty _build/src/ for a build but for the executed pages of today's chapters (`keep`, by file name),
    their times and the record of what they were computed from."""
    out_dir = SOURCE_COPY
    if not out_dir.exists():
        return
    for child in out_dir.iterdir():
        if child.name == "chapters":
            for page in child.iterdir():
                if page.name not in keep:
                    page.unlink()
        elif child.name not in ("timings", TIMES_FILE, PAGES_FILE):
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _mark_kept(path: Path, kept: list[str]) -> None:
    """The times file says which chapters were kept (their seconds are those of the build that ran them)."""
    if path.exists():
        _edit_times(path, lambda saved: {**saved, "kept": kept})


def _render(profile: str, failed: list[str]) -> Path:
    """After the chapters ran into _build/src: their time table, then the HTML unless one failed."""
    print(chapter_times_table(SOURCE_COPY / TIMES_FILE))
    _stop_if_failed(failed, profile, SOURCE_COPY)
    build_html()
    print(f"[book] HTML: {HTML_DIR / 'index.html'}")
    return HTML_DIR


def _stop_if_failed(failed: list[str], profile: str, out_dir: Path) -> None:
    if failed:
        raise CourseError(
            f"Chapter(s) {', '.join(failed)} failed at profile {profile}: the executed notebooks in "
            f"{out_dir / 'chapters'} show the failing cell; the other chapters' results are kept."
        )


def rebuild_chapters(profile: str, names: list[str]) -> Path:
    """Run only the named chapters again, then render the book with every other chapter's last executed copy.

    The others must have been executed at the same profile into _build/src already (a full `make book`).
    A chapter that later chapters read results from (chapter 4's runs) changes their pages only when
    they run again too: name them as well.
    """
    selected = select_chapters(names)
    check_prose(selected)
    times = SOURCE_COPY / TIMES_FILE
    saved = json.loads(times.read_text()) if times.exists() else None
    missing = [nb.stem for nb in chapter_notebooks()
               if nb not in selected and not (SOURCE_COPY / "chapters" / nb.name).exists()]
    if missing or saved is None or saved.get("profile") != profile:
        have = "no executed book" if saved is None else f"a book executed at profile {saved.get('profile')!r}"
        raise CourseError(
            f"Rebuilding only {', '.join(nb.stem for nb in selected)} needs every other chapter executed at profile "
            f"{profile!r} in {SOURCE_COPY}, which holds {have}" + (f" (missing: {', '.join(missing)})" if missing else "")
            + f": run the whole book once (make book PROFILE={profile})."
        )
    copy_book_sources()
    _forget_pages(selected)
    failed = run_chapters(profile, selected, SOURCE_COPY)
    _mark_kept(times, [nb.stem for nb in chapter_notebooks() if nb not in selected])
    record_pages(profile, [nb for nb in selected if nb.stem not in failed])
    return _render(profile, failed)


def execute_chapters(profile: str, out_dir: Path | None = None, results_dir: str | None = None,
                     names: list[str] | None = None, side_by_side: bool = False) -> Path:
    """Execute every chapter (or the named ones) at `profile` into out_dir (default _build/executed-<profile>/),
    no rendering; `side_by_side` runs two at a time (`run_chapters_side_by_side`).

    For checking that a profile's path runs, keeping the executed chapters (`make book-gpu-mini` runs
    gpu-mini through the book tests instead, which check what the chapters wrote); the rendered book in
    _build/src/ is left alone. Fails naming the chapters that failed.
    """
    chapters = select_chapters(names) if names else chapter_notebooks()
    check_prose(chapters)
    out_dir = out_dir or BUILD_DIR / f"executed-{profile}"
    if not names:
        shutil.rmtree(out_dir / "chapters", ignore_errors=True)
    execute = run_chapters_side_by_side if side_by_side else run_chapters
    _stop_if_failed(execute(profile, chapters, out_dir=out_dir, results_dir=results_dir), profile, out_dir)
    print(f"[book] {'every chapter' if not names else ', '.join(nb.stem for nb in chapters)} ran at profile "
          f"{profile}: {out_dir / 'chapters'}")
    return out_dir


# --------------------------------------------------------------------------- browser check
def check_book_in_browser(html_dir: Path = HTML_DIR, screenshot: Path = BUILD_DIR / "screenshots" / "chapter-01.png",
                          sub_path: str | None = None):
    """Serve the built book under a sub-path, as GitHub Pages does, and load every page in headless Chromium.

    Returns lora_course.site_check.SiteReport: its problems name each page,
    request, console error or internal link that fails (empty when the site
    works). Every chapter page must exist; the first is saved as a screenshot.
    """
    chapters = [f"chapters/{nb.stem}.html" for nb in chapter_notebooks()]
    return check_site(html_dir, sub_path, expected=chapters, screenshot=(chapters[0], screenshot) if chapters else None)
