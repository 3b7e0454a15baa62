"""The course website, built with ``mkdocs build --strict`` and opened in a real browser.

The site is built once for the module (the notebooks execute during the build), served by
``python -m http.server`` on 127.0.0.1 and read by Debian's headless chromium through
selenium and the system chromedriver. For the landing page, the mathematics, the API entry
of ``linear_grad_Z`` and an executed notebook the tests check: no console error, no
resource from another host, the mathematics typeset by MathJax (no raw TeX left in the
visible text), every image loaded, every same-site link answering HTTP 200 (and its anchor
present); the results page gets the same checks but the mathematics, and must show its
figures. A screenshot of each page is saved under test-artifacts/.

Without a browser these tests skip, saying what to install, except under ``CI=true``,
where they fail (``helpers.require_browser``). Locally, ``FLOWATTN_SKIP_SITE=1`` skips
them and ``FLOWATTN_SITE_PREBUILT=site`` checks
a site built before instead of building one (both ignored when ``CI`` is set).
"""

import html.parser
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import flowattn_np
from helpers import require_browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
BUILD_TIMEOUT = 900  # seconds; the target in CI is under 5 minutes, the build prints its time
NOTEBOOK = "notebooks/01_cross_attention_from_multinomial_regression/"
PAGES = {  # name: path on the site (a fragment scrolls the screenshot there)
    "landing": "",
    "math": "math/",
    "api-linear_grad_Z": "api/#flowattn_np.models.linear_grad_Z",
    "notebook-01": NOTEBOOK,
    "results": "results/",  # the figures of a full run
}
MATH_PAGES = ("landing", "math", "api-linear_grad_Z", "notebook-01")
# The graded assignments' source notebooks (with solutions); the site shows student versions.
ASSIGNMENT_SOURCES = sorted((ROOT / "notebooks" / "assignments").glob("*.ipynb"))
if ASSIGNMENT_SOURCES:
    PAGES["coursework-" + ASSIGNMENT_SOURCES[0].stem] = f"coursework/{ASSIGNMENT_SOURCES[0].stem}/"

if os.environ.get("FLOWATTN_SKIP_SITE") and not os.environ.get("CI"):
    pytest.skip("FLOWATTN_SKIP_SITE is set (never honoured in CI)", allow_module_level=True)

pytestmark = pytest.mark.slow


def _run_mkdocs_build(site_dir):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", FLOWATTN_SITE_EXECUTE="true")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    print(f"\nmkdocs build --strict: {seconds:.1f} s")
    return seconds


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site's folder (locally, FLOWATTN_SITE_PREBUILT=DIR reuses a site built before)."""
    prebuilt = os.environ.get("FLOWATTN_SITE_PREBUILT")
    if prebuilt and not os.environ.get("CI"):
        return Path(prebuilt).resolve()
    site_dir = tmp_path_factory.mktemp("site") / "site"
    _run_mkdocs_build(site_dir)
    return site_dir


@pytest.fixture(scope="module")
def server(site):
    """Base URL of ``python -m http.server`` serving the site on 127.0.0.1."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(site)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
        match = re.search(r"port (\d+)", line)
        assert match, f"http.server did not start: {line!r}"
        yield f"http://127.0.0.1:{match.group(1)}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless chromium driven by selenium through Debian's chromedriver."""
    chromium, chromedriver = require_browser()  # skips without one, fails under CI=true
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail('selenium is missing: pip install -e ".[test]"')
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


# ------------------------------------------------------------------------ in the browser

_WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
const t0 = Date.now();
(function poll() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done("ok"), e => done("error: " + e));
  } else if (Date.now() - t0 > 30000) {
    done("MathJax never started");
  } else {
    setTimeout(poll, 50);
  }
})();
"""

# Text a reader sees, outside code, typeset math and hidden elements.
_VISIBLE_TEXT = """
const skip = "PRE,CODE,SCRIPT,STYLE,TEXTAREA,MJX-CONTAINER,MJX-ASSISTIVE-MML,NOSCRIPT";
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
const parts = [];
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  let e = n.parentElement, hidden = false;
  for (let a = e; a; a = a.parentElement) {
    if (skip.split(",").includes(a.tagName)) { hidden = true; break; }
  }
  if (!hidden && e.getClientRects().length && getComputedStyle(e).visibility !== "hidden") {
    parts.push(n.nodeValue);
  }
}
return parts.join(" ");
"""

_IMAGES = """
return Array.from(document.images).map(i => ({src: i.currentSrc || i.src, complete: i.complete,
                                                width: i.naturalWidth}));
"""


_SCROLL_TO_FIRST_FIGURE = """
const img = document.querySelector(".jp-RenderedImage img, .md-content img");
if (img) { img.scrollIntoView({block: "center"}); }
return Boolean(img);
"""


def _open(driver, url):
    driver.get("about:blank")
    driver.get_log("browser")  # drop what an earlier page left
    driver.get(url)
    status = driver.execute_async_script(_WAIT_FOR_MATHJAX)
    deadline = time.time() + 30
    while time.time() < deadline and not all(i["complete"] for i in driver.execute_script(_IMAGES)):
        time.sleep(0.1)
    return status


@pytest.fixture(scope="module")
def pages(browser, server):
    """{name: what the browser saw}, one visit per page, each page's screenshot saved."""
    ARTIFACTS.mkdir(exist_ok=True)
    seen = {}
    for name, path in PAGES.items():
        url = server + path
        status = _open(browser, url)
        fragment = urllib.parse.urlsplit(url).fragment
        if fragment:
            browser.execute_script("document.getElementById(arguments[0]).scrollIntoView()", fragment)
        browser.save_screenshot(str(ARTIFACTS / f"site-{name}.png"))
        if browser.execute_script(_SCROLL_TO_FIRST_FIGURE):
            time.sleep(0.5)  # the header's title animates on scrolling
            browser.save_screenshot(str(ARTIFACTS / f"site-{name}-figure.png"))
        seen[name] = {
            "url": url,
            "mathjax": status,
            "log": browser.get_log("browser"),
            "text": browser.execute_script(_VISIBLE_TEXT),
            "math": browser.execute_script("return document.querySelectorAll('mjx-container').length"),
            "math_errors": browser.execute_script(
                "return Array.from(document.querySelectorAll('mjx-merror'))"
                ".map(e => e.getAttribute('data-mjx-error') || e.textContent)"),
            "images": browser.execute_script(_IMAGES),
            "links": browser.execute_script(
                "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"),
            "resources": browser.execute_script(
                "return performance.getEntriesByType('resource').map(r => r.name)"),
            "html": browser.page_source,
        }
    return seen


@pytest.mark.parametrize("name", PAGES)
def test_page_loads_without_console_errors(pages, name):
    errors = [e for e in pages[name]["log"] if e["level"] == "SEVERE"]
    assert not errors, f"{pages[name]['url']}: console errors:\n" + json.dumps(errors, indent=1)


@pytest.mark.parametrize("name", PAGES)
def test_page_loads_nothing_from_another_host(pages, name):
    origin = urllib.parse.urlsplit(pages[name]["url"]).netloc
    foreign = [r for r in pages[name]["resources"]
               if urllib.parse.urlsplit(r).scheme in ("http", "https") and urllib.parse.urlsplit(r).netloc != origin]
    assert not foreign, f"{pages[name]['url']} loads from other hosts: {foreign}"


@pytest.mark.parametrize("name", MATH_PAGES)
def test_mathematics_is_typeset(pages, name):
    page = pages[name]
    assert page["mathjax"] == "ok", f"{page['url']}: {page['mathjax']}"
    assert page["math"] > 0, f"{page['url']}: no typeset mathematics (no mjx-container)"
    assert not page["math_errors"], f"{page['url']}: TeX errors {page['math_errors']}"
    raw = [tok for tok in ("$$", "\\(", "\\)", "\\[", "\\]") if tok in page["text"]]
    raw += sorted(set(re.findall(r"\\[A-Za-z]+|\$[^$\s][^$]*\$", page["text"])))
    assert not raw, f"{page['url']}: raw TeX left in the visible text: {raw[:10]}"


@pytest.mark.parametrize("name", PAGES)
def test_every_image_has_loaded(pages, name):
    bad = [i["src"][:120] for i in pages[name]["images"] if not (i["complete"] and i["width"] > 0)]
    assert not bad, f"{pages[name]['url']}: images that did not load: {bad}"


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        self.ids.update(v for k, v in attrs if k in ("id", "name") and v)


def _fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.mark.parametrize("name", PAGES)
def test_internal_links_resolve(pages, server, name):
    page = pages[name]
    targets = {}
    for href in page["links"]:
        if not href.startswith(server):
            continue
        base, _, fragment = href.partition("#")
        targets.setdefault(base, set()).add(urllib.parse.unquote(fragment))
    assert len(targets) > 3, f"{page['url']}: hardly any same-site links: {sorted(targets)}"
    problems = []
    for base, fragments in sorted(targets.items()):
        # a folder's URL: its index.html, not http.server's listing of a folder without one
        status, text = _fetch(base + "index.html" if base.endswith("/") else base)
        if status != 200:
            problems.append(f"{base}: HTTP {status}")
            continue
        if base.endswith((".ipynb", ".png", ".svg", ".js", ".css")):
            continue
        parser = _Ids()
        parser.feed(text)
        problems += [f"{base}#{f}: no such anchor" for f in sorted(fragments - {""}) if f not in parser.ids]
    assert not problems, f"{page['url']}:\n" + "\n".join(problems)


def test_the_results_page_shows_its_figures(pages):
    images = [i["src"] for i in pages["results"]["images"]]
    assert sum(src.endswith(".png") for src in images) >= 3, images


def test_notebook_page_shows_executed_outputs(pages):
    page = pages["notebook-01"]["html"]
    assert page.count("jp-OutputArea-output") >= 3, "the notebook page shows (almost) no outputs"
    assert 'src="data:image/png;base64,' in page, "the notebook page shows no figure"
    assert "jp-RenderedMarkdown" in page


def test_the_api_entry_of_linear_grad_Z_typesets_its_formula(pages):
    html_text = pages["api-linear_grad_Z"]["html"]
    start = html_text.index('id="flowattn_np.models.linear_grad_Z"')
    end = html_text.find('id="flowattn_np.models.', start + 1)
    entry = html_text[start:end if end > 0 else None]
    assert "mjx-container" in entry, "linear_grad_Z's docstring formula is not typeset"
    assert "eq. 4" in entry


# ------------------------------------------------------------------------ in the built files


def test_every_public_name_is_on_the_api_page(site):
    parser = _Ids()
    parser.feed((site / "api" / "index.html").read_text(encoding="utf-8"))
    documented = {i.rsplit(".", 1)[1] for i in parser.ids if i.startswith("flowattn_np.")}
    missing = sorted(set(flowattn_np.__all__) - documented)
    assert not missing, f"in flowattn_np.__all__ but not documented on the API page: {missing}"


def test_every_notebook_is_a_page_of_the_site(site):
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert (site / "notebooks" / path.stem / "index.html").is_file(), f"{path.name} has no page"


def test_the_readme_links_to_pages_of_the_site(site):
    """README.md links to the pages' sources (docs/*.md, notebooks/*.ipynb: GitHub shows
    both); each one is a page of the site."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paths = re.findall(r"\]\(((?:docs|notebooks)/\w+)\.(?:md|ipynb)\)", readme)
    assert len(paths) >= 8, "README.md hardly links to the site's pages"
    missing = [p for p in paths if not (site / p.removeprefix("docs/") / "index.html").is_file()]
    assert not missing, f"README.md links to pages the site does not have: {missing}"


def _solution_lines(path):
    """The code lines between ### BEGIN SOLUTION and ### END SOLUTION of a source notebook."""
    lines, inside = [], False
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        for line in source.splitlines():
            if "### BEGIN SOLUTION" in line or "### END SOLUTION" in line:
                inside = "BEGIN" in line
            elif inside and len(line.strip()) > 25:
                lines.append(line.strip())
    return lines


def test_assignments_appear_as_student_versions_only(site):
    for path in ASSIGNMENT_SOURCES:
        page = site / "coursework" / path.stem
        assert (page / "index.html").is_file(), f"{path.name} has no student page"
        student = (page / path.name).read_text(encoding="utf-8")
        assert "NotImplementedError" in student, f"{path.name}: the student version has no stubs"
        leaked = [line for line in _solution_lines(path) if line in student]
        assert not leaked, f"{path.name}: solution lines in the student version: {leaked[:3]}"
    # (the API page may describe the markers: only the notebook pages are searched)
    markers = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS")
    leaks = [p.relative_to(site).as_posix() for folder in ("coursework", "notebooks") for p in (site / folder).rglob("*")
             if p.suffix in (".html", ".ipynb") and any(m in p.read_text(encoding="utf-8") for m in markers)]
    assert not leaks, f"solution or hidden-test markers on the notebook pages: {leaks}"


def test_no_page_asks_another_host_for_a_script_style_or_font(site):
    pattern = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["']?(https?:)?//""", re.I)
    canonical = re.compile(r"""<link\b[^>]*\brel=["']?canonical\b[^>]*>""", re.I)  # names site_url, loads nothing
    offenders = [p.relative_to(site).as_posix() for p in site.rglob("*.html")
                 if pattern.search(canonical.sub("", p.read_text(encoding="utf-8")))]
    assert not offenders, f"pages that load from another host: {offenders}"
    assert (site / "assets" / "mathjax" / "tex-chtml.js").is_file()
