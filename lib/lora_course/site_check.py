"""The rendered book as a reader gets it: served from a sub-path and loaded in headless Chromium.

GitHub Pages serves a project's site from https://<owner>.github.io/<repo>/, not
from the root of a host, so a link or a stylesheet written as "/_static/x.css"
works on a laptop's `file://` view and breaks online. This check serves the
built HTML from 127.0.0.1 under /<sub-path>/ only (anything outside it answers
404), loads every page in Chromium and reports:

- any request to the site (page, image, script, stylesheet, font, data) that
  answers with a status >= 400 or does not load at all;
- any error in the browser's console, and any image that does not display;
- any link inside the site whose file does not exist, or whose #anchor is not
  an id on the page it points to;
- a page whose text shows a Python traceback.

Requests to other hosts are blocked (the same result offline and online) and
listed as not checked here.

    python -m lora_course check-book              the built book (see lora_course.book)
"""

from __future__ import annotations

import contextlib
import html.parser
import http.server
import json
import os
import re
import shutil
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .data import REPO_ROOT
from .errors import CourseError

# Folders of a Sphinx build that hold assets, not pages (their .html files are template fragments).
ASSET_DIRS = ("_static", "_sources", "_images")


def default_sub_path() -> str:
    """The sub-path Pages would use: the repository's name in GitHub Actions, else the checkout's folder name."""
    name = os.environ.get("GITHUB_REPOSITORY", "").rpartition("/")[2] or REPO_ROOT.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "book"


def site_pages(html_dir: Path) -> list[str]:
    """Every page of the site, as paths relative to html_dir ("chapters/01-x.html"), sorted."""
    pages = []
    for path in html_dir.rglob("*.html"):
        rel = path.relative_to(html_dir)
        if rel.parts[0] not in ASSET_DIRS:
            pages.append(rel.as_posix())
    return sorted(pages)


# --------------------------------------------------------------------------- links and anchors
class _Ids(html.parser.HTMLParser):
    """The anchors a page offers: every id, and the name of every <a name=...>."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if value and (key == "id" or (key == "name" and tag == "a")):
                self.ids.add(value)


def page_ids(path: Path) -> set[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser.ids


def link_problems(html_dir: Path, base_url: str, links: dict[str, list[str]], checked: set | None = None) -> list[str]:
    """The internal links that point nowhere.

    `links` maps a page (relative path) to the absolute URLs its links resolve to
    in the browser. A URL on the server's host is internal: it must lie under
    base_url (else it leaves the site on Pages), name a file that exists (a
    folder means its index.html) and, when it has a #fragment, a target page
    that has that id. Links to other hosts are not looked at here.
    """
    base = urllib.parse.urlsplit(base_url)
    ids_cache: dict[Path, set[str]] = {}
    problems = []
    for page, urls in links.items():
        for url in sorted(set(urls)):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or parts.netloc != base.netloc:
                continue
            checked.add(url)
            path = urllib.parse.unquote(parts.path)
            if not path.startswith(base.path):
                problems.append(f"{page}: link {url} leaves the site's sub-path {base.path} (a root-relative link?)")
                continue
            target = html_dir / path[len(base.path):]
            if target.is_dir() or path.endswith("/"):
                target = target / "index.html"
            if not target.is_file():
                problems.append(f"{page}: link {url} points to a file that does not exist")
                continue
            fragment = urllib.parse.unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                if target not in ids_cache:
                    ids_cache[target] = page_ids(target)
                if fragment not in ids_cache[target]:
                    rel = target.relative_to(html_dir).as_posix()
                    problems.append(f"{page}: link {url} points to #{fragment}, which {rel} does not have")
    return problems


# --------------------------------------------------------------------------- the server
def _handler(html_dir: Path, prefix: str):
    class SubPathHandler(http.server.SimpleHTTPRequestHandler):
        """Serves html_dir under `prefix` only; every other path is a 404, as on Pages."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(html_dir), **kwargs)

        def send_head(self):
            path = urllib.parse.urlsplit(self.path).path
            if path == prefix.rstrip("/"):  # /repo -> /repo/, as Pages does
                self.send_response(301)
                self.send_header("Location", prefix)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if not path.startswith(prefix):
                self.send_error(404, f"outside the site's sub-path {prefix}")
                return None
            return super().send_head()

        def translate_path(self, path):
            return super().translate_path("/" + path[len(prefix):])

        def log_message(self, *args):  # quiet: problems are reported by the check itself
            pass

    return SubPathHandler


@contextlib.contextmanager
def serve(html_dir: Path, sub_path: str):
    """Serve html_dir at http://127.0.0.1:<free port>/<sub_path>/ in a thread; yields that URL."""
    sub_path = sub_path.strip("/")
    if not sub_path or "/" in sub_path or sub_path != urllib.parse.quote(sub_path):
        raise CourseError(f"The sub-path {sub_path!r} must be one plain folder name, like the repository's name.")
    prefix = f"/{sub_path}/"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(html_dir, prefix))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{prefix}"
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- the browser
def find_browser() -> tuple[str, str]:
    """Chromium (or Chrome) and its driver: $CHROME_BIN / $CHROMEDRIVER, else the usual names on PATH."""
    browser = os.environ.get("CHROME_BIN") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not driver and os.environ.get("CHROMEWEBDRIVER"):  # where GitHub's runner images keep it
        candidate = Path(os.environ["CHROMEWEBDRIVER"]) / "chromedriver"
        driver = str(candidate) if candidate.exists() else None
    if not browser or not driver:
        raise CourseError("The browser check needs Chromium and chromedriver: "
                          "apt-get install chromium chromium-driver (or set CHROME_BIN and CHROMEDRIVER).")
    return browser, driver


def _start_driver():
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,2000",
                 # Only the local server resolves: another host fails at once, online or not.
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    try:
        return webdriver.Chrome(service=Service(driver_path), options=opts)
    except WebDriverException as exc:
        first = (exc.msg or str(exc)).strip().splitlines()[0]
        raise CourseError(f"Chromium ({browser}) did not start under {driver_path} ({first}): "
                          "the browser and chromedriver must be the same version.") from None


_PAGE_FACTS = """
const links = Array.from(document.querySelectorAll('a[href], area[href]')).map(a => a.href);
const refresh = document.querySelector('meta[http-equiv="Refresh" i]');
if (refresh) {
  const m = /url=(.*)$/i.exec(refresh.content || '');
  if (m) links.push(new URL(m[1].trim(), document.baseURI).href);
}
const broken = Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);
const text = document.body ? document.body.innerText : '';
const traceback = text.includes('Traceback (most recent call last)') || !!document.querySelector('.output.traceback');
return {links: links, broken_images: broken, traceback: traceback};
"""


def _page_facts(driver, tries: int = 3) -> dict:
    """Links, broken images, a traceback shown: read from the page on screen (again, if it redirected)."""
    from selenium.common.exceptions import WebDriverException

    for attempt in range(tries):
        try:
            return driver.execute_script(_PAGE_FACTS)
        except WebDriverException:  # the document was replaced while the script ran (a meta refresh)
            if attempt == tries - 1:
                raise
            time.sleep(0.5)


@dataclass
class SiteReport:
    """What the check found: problems (empty when the site is sound), the pages loaded, hosts not checked."""

    base_url: str
    pages: list[str]
    problems: list[str] = field(default_factory=list)
    other_hosts: set[str] = field(default_factory=set)
    requests: int = 0  # requests to the site that answered below 400
    links: int = 0  # distinct internal link targets checked

    def summary(self) -> str:
        hosts = ", ".join(sorted(self.other_hosts)) or "none"
        return (f"{len(self.pages)} pages served under {urllib.parse.urlsplit(self.base_url).path}, "
                f"{self.requests} requests answered below 400, {self.links} internal link targets exist; "
                f"other hosts, not checked here: {hosts}")


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


def _network(entries: list[dict], base_url: str, page: str, report: SiteReport) -> None:
    """Statuses >= 400 and failed loads among the site's requests, from Chromium's performance log."""
    origin = _origin(base_url)
    urls: dict[str, str] = {}
    for entry in entries:
        msg = json.loads(entry["message"])["message"]
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif method == "Network.responseReceived":
            url, status = params["response"]["url"], int(params["response"]["status"])
            if not url.startswith(origin) or url == origin + "favicon.ico":
                # The browser's own probe for an icon at the host's root: no page asked for it, and
                # on Pages that root is the owner's site, not this one.
                continue
            if status >= 400:
                report.problems.append(f"{page}: {params.get('type', 'request').lower()} {url} answered {status}")
            else:
                report.requests += 1
        elif method == "Network.loadingFailed":
            url = urls.get(params["requestId"], "")
            if url.startswith(origin):
                if not params.get("canceled"):
                    report.problems.append(f"{page}: {params.get('type', 'request').lower()} {url} failed to load "
                                           f"({params.get('errorText', 'no reason given')})")
            elif url.startswith("http"):
                report.other_hosts.add(urllib.parse.urlsplit(url).netloc)


def _console(entries: list[dict], base_url: str, page: str, report: SiteReport) -> None:
    """Console errors. A failed load is already reported with its status; one from another host is not checked."""
    for entry in entries:
        if entry.get("level") != "SEVERE":
            continue
        text = entry.get("message", "")
        if "Failed to load resource" in text:
            url = text.split(" ", 1)[0]
            if not url.startswith(_origin(base_url)):
                report.other_hosts.add(urllib.parse.urlsplit(url).netloc or url)
            continue
        report.problems.append(f"{page}: console error: {text}")


def check_site(html_dir: Path, sub_path: str | None = None, expected: list[str] = (),
               screenshot: tuple[str, Path] | None = None) -> SiteReport:
    """Serve html_dir under /<sub_path>/, load every page in Chromium and report what does not work.

    `expected` names pages that must exist (relative paths); `screenshot` is
    (page, png path) to save one page as the browser drew it.
    """
    html_dir = Path(html_dir)
    if not (html_dir / "index.html").exists():
        raise CourseError(f"No built site in {html_dir} (no index.html): build the book first (`make book`).")
    pages = site_pages(html_dir)
    sub_path = sub_path or default_sub_path()
    links: dict[str, list[str]] = {}
    with serve(html_dir, sub_path) as base_url:
        report = SiteReport(base_url, pages)
        report.problems += [f"{p}: missing" for p in expected if p not in pages]
        driver = _start_driver()

        def read_logs(page: str) -> None:  # what the browser logged since the last read belongs to `page`
            _network(driver.get_log("performance"), base_url, page, report)
            _console(driver.get_log("browser"), base_url, page, report)

        try:
            for i, page in enumerate(pages):
                if i:  # late requests of the previous page (scripts that fetch after the load event)
                    read_logs(pages[i - 1])
                driver.get(base_url + urllib.parse.quote(page))
                facts = _page_facts(driver)
                read_logs(page)
                links[page] = facts["links"]
                report.problems += [f"{page}: image does not load: {src}" for src in facts["broken_images"]]
                if facts["traceback"]:
                    report.problems.append(f"{page}: shows an error traceback")
                if screenshot and page == screenshot[0]:
                    screenshot[1].parent.mkdir(parents=True, exist_ok=True)
                    driver.save_screenshot(str(screenshot[1]))
        finally:
            if pages:
                read_logs(pages[-1])
            driver.quit()
        internal: set[str] = set()
        report.problems += link_problems(html_dir, base_url, links, internal)
        report.links = len(internal)
    return report
