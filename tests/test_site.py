"""The book online: the site works from a sub-path (as GitHub Pages serves it), and the workflow that publishes it lints clean."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
import yaml

from lora_course.book import book_config_text
from lora_course.errors import CourseError
from lora_course.site_check import check_site, find_browser, link_problems, serve

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def _png(path: Path, width: int = 4, height: int = 3) -> None:
    """A small grey PNG, written byte by byte (signature, IHDR, IDAT, IEND)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))  # filter byte 0, then 8-bit grey pixels
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def small_site(tmp_path_factory) -> Path:
    """A two-page book built with jupyter-book and the course's own _config.yml; returns its HTML folder."""
    src = tmp_path_factory.mktemp("small-book")
    (src / "_config.yml").write_text(book_config_text())
    (src / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: second\n")
    (src / "intro.md").write_text("# A small book\n\nRead {ref}`the second page's section <a-section>`.\n")
    _png(src / "grey.png")
    (src / "second.md").write_text("# The second page\n\n![a grey square](grey.png)\n\n(a-section)=\n## A section\n\nText.\n")
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", str(src), "-W", "-n"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return src / "_build" / "html"


@pytest.fixture
def site_copy(small_site, tmp_path) -> Path:
    html = tmp_path / "html"
    shutil.copytree(small_site, html)
    return html


def _browser_or_skip():
    try:
        find_browser()
    except CourseError as exc:
        pytest.skip(str(exc))


def _plant(page: Path, snippet: str) -> None:
    text = page.read_text()
    assert "</article>" in text
    page.write_text(text.replace("</article>", snippet + "</article>", 1))


# --------------------------------------------------------------------------- links, without a browser
def test_link_problems_names_each_link_that_points_nowhere(small_site):
    base = "http://127.0.0.1:8000/course/"
    links = {"intro.html": [
        base + "second.html#a-section",  # fine
        base + "second.html",  # fine
        base + "_static/",  # a folder without index.html
        base + "nowhere.html",
        base + "second.html#no-such-section",
        "http://127.0.0.1:8000/second.html",  # root-relative: works at a host's root, not under /course/
        "https://example.org/missing.html",  # another host: not looked at
        "mailto:someone@example.org",
    ]}
    checked: set[str] = set()
    problems = link_problems(small_site, base, links, checked)
    assert problems == [
        f"intro.html: link {base}_static/ points to a file that does not exist",
        f"intro.html: link {base}nowhere.html points to a file that does not exist",
        f"intro.html: link {base}second.html#no-such-section points to #no-such-section, which second.html does not have",
        "intro.html: link http://127.0.0.1:8000/second.html leaves the site's sub-path /course/ (a root-relative link?)",
    ]
    assert len(checked) == 6


def test_the_server_answers_only_under_the_sub_path(small_site):
    with serve(small_site, "course") as base:
        assert base.endswith("/course/")
        with urllib.request.urlopen(base + "second.html") as r:
            assert r.status == 200 and b"The second page" in r.read()
        root = base[: -len("course/")]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(root + "second.html")
        assert err.value.code == 404
        with urllib.request.urlopen(root + "course") as r:  # /course redirects to /course/
            assert r.url == base


def test_a_sub_path_must_be_one_folder_name(small_site):
    with pytest.raises(CourseError, match="one plain folder name"):
        with serve(small_site, "a/b"):
            pass


def test_a_missing_site_is_named(tmp_path):
    with pytest.raises(CourseError, match="No built site"):
        check_site(tmp_path)


# --------------------------------------------------------------------------- in the browser
def test_the_built_site_works_from_a_sub_path(small_site, tmp_path):
    _browser_or_skip()
    shot = tmp_path / "intro.png"
    report = check_site(small_site, "course", expected=["intro.html", "second.html"], screenshot=("intro.html", shot))
    assert report.problems == []
    assert {"intro.html", "second.html", "genindex.html", "search.html"} <= set(report.pages)
    assert (small_site / "_static" / "webpack-macros.html").exists()  # a theme fragment, not a page:
    assert not any(p.startswith("_static/") for p in report.pages)
    assert report.base_url.endswith("/course/")
    assert report.links >= 2  # at least intro -> second.html#a-section and second -> intro
    assert report.requests > len(report.pages)  # pages plus their scripts, stylesheets and the image
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_planted_broken_internal_link_fails_the_check(site_copy):
    _browser_or_skip()
    _plant(site_copy / "second.html", '<p><a href="nowhere.html">gone</a> <a href="intro.html#no-such-id">x</a></p>')
    report = check_site(site_copy, "course")
    base = report.base_url
    assert report.problems == [
        f"second.html: link {base}intro.html#no-such-id points to #no-such-id, which intro.html does not have",
        f"second.html: link {base}nowhere.html points to a file that does not exist",
    ]


def test_what_breaks_under_a_sub_path_fails_the_check(site_copy):
    """Root-relative assets, a missing image, a script error, a traceback and a missing page are each named."""
    _browser_or_skip()
    _plant(site_copy / "intro.html",
           '<link rel="stylesheet" href="/_static/pygments.css"><img src="missing.png" alt="x">'
           '<script>throw new Error("planted failure")</script><a href="/second.html">root link</a>'
           '<pre>Traceback (most recent call last):\n  ValueError</pre>')
    report = check_site(site_copy, "course", expected=["intro.html", "third.html"])
    base, root = report.base_url, report.base_url[: -len("course/")]
    problems = "\n".join(report.problems)
    assert "third.html: missing" in report.problems
    assert "intro.html: shows an error traceback" in report.problems
    assert f"intro.html: stylesheet {root}_static/pygments.css answered 404" in report.problems
    assert f"intro.html: image {base}missing.png answered 404" in report.problems
    assert f"intro.html: image does not load: {base}missing.png" in report.problems
    assert "planted failure" in problems and "console error" in problems
    assert (f"intro.html: link {root}second.html leaves the site's sub-path /course/ (a root-relative link?)"
            in report.problems)
    assert not any(p.startswith("second.html") for p in report.problems)


def test_a_browser_that_does_not_start_is_one_sentence(small_site, monkeypatch):
    _browser_or_skip()
    monkeypatch.setenv("CHROME_BIN", "/bin/false")
    with pytest.raises(CourseError, match=r"Chromium \(/bin/false\) did not start .*same version"):
        check_site(small_site, "course")


# --------------------------------------------------------------------------- the workflow
def _actionlint() -> str:
    exe = Path(sys.executable).parent / "actionlint"
    found = str(exe) if exe.exists() else shutil.which("actionlint")
    assert found, "actionlint is missing: pip install -e '.[dev]' installs it"
    return found


def test_the_workflow_lints_clean():
    proc = subprocess.run([_actionlint(), "-no-color", str(WORKFLOW)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_fails_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "book.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text().replace("needs: book", "needs: boook"))
    proc = subprocess.run([_actionlint(), "-no-color", str(broken)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert "boook" in proc.stdout


def test_the_workflow_builds_checks_and_publishes_the_book():
    flow = yaml.safe_load(WORKFLOW.read_text())
    on = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert on["push"]["branches"] == ["main"] and "pull_request" in on
    jobs = flow["jobs"]
    runs = {name: [s.get("run", "") for s in job.get("steps", [])] for name, job in jobs.items()}
    uses = {name: [s.get("uses", "").split("@")[0] for s in job.get("steps", [])] for name, job in jobs.items()}
    assert any(r.startswith("make test") for r in runs["test"]) and "pull_request" in jobs["test"]["if"]
    assert any(r.startswith("make book-gpu-mini") for r in runs["test"])  # the book tests, left out of make test
    assert any(r.startswith("make book") for r in runs["book"]) and any(r.startswith("make check-book") for r in runs["book"])
    assert "PROFILE" not in WORKFLOW.read_text()  # the README's make book: its default, the cpu profile
    upload = next(s for s in jobs["book"]["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/src/_build/html"
    assert uses["deploy"] == ["actions/deploy-pages"] and jobs["deploy"]["needs"] == "book"
    for job in ("test", "book"):
        setup = next(s for s in jobs[job]["steps"] if s.get("uses", "").startswith("actions/setup-python"))
        assert setup["with"]["cache"] == "pip"
        cache = next(s for s in jobs[job]["steps"] if s.get("uses", "").startswith("actions/cache"))
        assert cache["with"]["path"] == ".cache/lora_course"


def test_the_workflow_names_no_repository():
    text = WORKFLOW.read_text()
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo_url = config.get("repository", {}).get("url", "")
    assert "github.io" not in text
    assert not repo_url or repo_url not in text
    assert "github.com/" not in text
