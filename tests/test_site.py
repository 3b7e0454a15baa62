"""The course website, built with ``mkdocs build --strict`` and opened in a real browser.

The site is built once for the module (the notebooks execute during the build), served by
``python -m http.server`` on 127.0.0.1 and read by Debian's headless chromium through
selenium and the system chromedriver. For the landing page, the start page, the mathematics, the API entry
of ``linear_grad_Z`` and an executed notebook the tests check: no console error, no
resource from another host, the mathematics typeset by MathJax (no raw TeX left in the
visible text), every image loaded, every same-site link answering HTTP 200 (and its anchor
present); the results page gets the same checks but the mathematics, and must show its
figures. A screenshot of each page is saved under test-artifacts/.

Every page of the course (each notebook, each assignment, the start page and the theory
pages) is also read at 1400 px and at 400 px (a phone), one script per page and width:
no typeset formula is cut (it fits, or the box that clips it scrolls), no page scrolls
sideways at 400 px, no title or table-of-contents entry shows a ``$``, and each notebook
and assignment page links to its ``.ipynb``, which the server returns. The built site is
also opened from disk (file://): it navigates and its search answers.

Without a browser these tests skip, saying what to install, except under ``CI=true``,
where they fail (``helpers.require_browser``). Locally, ``FLOWATTN_SKIP_SITE=1`` skips
them and ``FLOWATTN_SITE_PREBUILT=site`` checks
a site built before instead of building one (both ignored when ``CI`` is set).
"""

import html.parser
import inspect
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
from helpers import require_browser, package_modules

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
BUILD_TIMEOUT = 900  # seconds; the target in CI is under 5 minutes, the build prints its time
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# The graded assignments' source notebooks (with solutions); the site shows student versions.
ASSIGNMENT_SOURCES = sorted((ROOT / "notebooks" / "assignments").glob("*.ipynb"))
PAGES = {  # name: page of the site, without ".html" (a fragment scrolls the screenshot there)
    "landing": "index",
    "start": "start",  # links to every page of the course
    "math": "math",
    "api-linear_grad_Z": "api/equations.models#flowattn_np.equations.models.linear_grad_Z",
    "notebook-01": "notebooks/" + NOTEBOOKS[0].stem,
    "results": "results",  # the figures of a full run
}
MATH_PAGES = ("landing", "math", "api-linear_grad_Z", "notebook-01")
if ASSIGNMENT_SOURCES:
    PAGES["coursework-" + ASSIGNMENT_SOURCES[0].stem] = f"coursework/{ASSIGNMENT_SOURCES[0].stem}"
# The pages a student reads through, checked at both widths.
COURSE_PAGES = {"start": "start", "math": "math", "backward": "backward"}
COURSE_PAGES.update({f"notebook-{p.stem[:2]}": f"notebooks/{p.stem}" for p in NOTEBOOKS})
COURSE_PAGES.update({f"coursework-{p.stem.split('_')[0]}": f"coursework/{p.stem}" for p in ASSIGNMENT_SOURCES})
WIDTHS = (1400, 400)

if os.environ.get("FLOWATTN_SKIP_SITE") and not os.environ.get("CI"):
    pytest.skip("FLOWATTN_SKIP_SITE is set (never honoured in CI)", allow_module_level=True)

pytestmark = pytest.mark.slow


def _page(site, page):
    """URL path of a page: ``page.html`` (this site), or ``page/`` on a site built with
    folder URLs (so these tests can be run against an older build, to compare)."""
    name, _, fragment = page.partition("#")
    if name == "index":
        path = ""
    elif (site / f"{name}.html").is_file():
        path = f"{name}.html"
    else:
        path = f"{name}/"
    return path + (f"#{fragment}" if fragment else "")


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
def pages(browser, server, site):
    """{name: what the browser saw}, one visit per page, each page's screenshot saved."""
    ARTIFACTS.mkdir(exist_ok=True)
    seen = {}
    for name, page in PAGES.items():
        url = server + _page(site, page)
        status = _open(browser, url)
        fragment = urllib.parse.urlsplit(url).fragment
        if fragment:
            browser.execute_script("const e = document.getElementById(arguments[0]); if (e) e.scrollIntoView()",
                                   fragment)  # a missing anchor fails test_internal_links_resolve
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
    start = html_text.index('id="flowattn_np.equations.models.linear_grad_Z"')
    end = html_text.find('id="flowattn_np.equations.models.', start + 1)
    entry = html_text[start:end if end > 0 else None]
    assert "mjx-container" in entry, "linear_grad_Z's docstring formula is not typeset"
    assert "eq. 4" in entry


# ------------------------------------------------------------------------ every course page, two widths

# One call per page and width. A typeset formula (its mjx-math, as wide as the formula) is
# cut when a box that clips (overflow other than visible) ends before the formula does and
# cannot scroll; a box that scrolls is then checked in the formula's place, up to the window.
_LAYOUT = """
const out = {cut: [], sideways: 0, titles: [], download: null, colab: null};
for (const m of document.querySelectorAll("mjx-container")) {
  if (m.parentElement.closest("mjx-container") || !m.getClientRects().length) continue;
  const math = m.querySelector(":scope > mjx-math") || m;  // a displayed formula's box is the column
  let r = math.getBoundingClientRect(), box = null;
  for (let a = math.parentElement; a && a !== document.documentElement; a = a.parentElement) {
    const ox = getComputedStyle(a).overflowX;
    if (ox === "visible") continue;
    const ar = a.getBoundingClientRect();
    if (r.left >= ar.left - 1 && r.right <= ar.right + 1) continue;
    if (ox === "auto" || ox === "scroll") { r = ar; continue; }
    box = a; break;
  }
  const width = document.documentElement.clientWidth;
  if (box || r.right > width + 1 || r.left < -1) {
    const where = box ? box.tagName.toLowerCase() + "." + String(box.className).split(" ")[0] : "the window";
    out.cut.push((m.textContent || "").slice(0, 60) + " [cut by " + where + "]");
  }
}
const root = document.documentElement;
out.sideways = Math.max(root.scrollWidth, document.body.scrollWidth) - root.clientWidth;
out.titles.push(document.title);
for (const a of document.querySelectorAll(".md-nav__link, .md-header__topic")) {
  const t = a.textContent.trim();
  if (t) out.titles.push(t);
}
const d = document.querySelector("a.flowattn-download");
out.download = d ? d.href : null;
const c = document.querySelector("a.flowattn-colab");
out.colab = c ? c.href : null;
out.width = window.innerWidth;
return out;
"""

_SETTLE = """
const done = arguments[arguments.length - 1];
requestAnimationFrame(() => requestAnimationFrame(() => done(window.innerWidth)));
"""


@pytest.fixture(scope="module")
def layouts(browser, server, site):
    """{(name, width): what _LAYOUT saw}: each course page loaded once, read at 1400 px,
    then at 400 px (a screenshot of each saved), the window restored afterwards."""
    ARTIFACTS.mkdir(exist_ok=True)
    seen = {}
    try:
        for name, page in COURSE_PAGES.items():
            browser.set_window_size(WIDTHS[0], 1000)
            url = server + _page(site, page)
            status = _open(browser, url)
            for width in WIDTHS:
                browser.set_window_size(width, 1000)
                browser.execute_async_script(_SETTLE)
                seen[name, width] = dict(browser.execute_script(_LAYOUT), url=url, mathjax=status)
            browser.save_screenshot(str(ARTIFACTS / f"site-{name}-{WIDTHS[-1]}px.png"))
    finally:
        browser.set_window_size(1280, 1000)
    return seen


CASES = [(name, width) for name in COURSE_PAGES for width in WIDTHS]


@pytest.mark.parametrize("name, width", CASES)
def test_no_typeset_formula_is_cut(layouts, name, width):
    seen = layouts[name, width]
    assert seen["width"] == width, f"the window is {seen['width']} px wide, not {width}"
    assert seen["mathjax"] == "ok", f"{seen['url']}: {seen['mathjax']}"
    assert not seen["cut"], f"{seen['url']} at {width} px: formulas cut off:\n" + "\n".join(seen["cut"][:10])


@pytest.mark.parametrize("name", COURSE_PAGES)
def test_no_page_scrolls_sideways_on_a_phone(layouts, name):
    seen = layouts[name, 400]
    assert seen["sideways"] <= 1, f"{seen['url']} scrolls sideways by {seen['sideways']} px at 400 px"


@pytest.mark.parametrize("name", COURSE_PAGES)
def test_no_title_or_table_of_contents_entry_shows_tex(layouts, name):
    seen = layouts[name, 1400]
    assert len(seen["titles"]) > 5, f"{seen['url']}: no navigation found"
    raw = [t for t in seen["titles"] if "$" in t or "\\(" in t]
    assert not raw, f"{seen['url']}: TeX in titles or table-of-contents entries: {raw}"


def _configured_repo_url():
    match = re.search(r"^repo_url:\s*[\"']?([^\"'\s#]+)", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M)
    return match.group(1) if match else None


@pytest.mark.parametrize("name", [n for n in COURSE_PAGES if n.startswith(("notebook-", "coursework-"))])
def test_each_notebook_page_links_to_its_notebook(layouts, name):
    seen = layouts[name, 1400]
    assert seen["download"], f"{seen['url']}: no download link"
    assert seen["download"].endswith(".ipynb"), seen["download"]
    status, text = _fetch(seen["download"])
    assert status == 200, f"{seen['download']}: HTTP {status}"
    notebook = json.loads(text)
    stem = urllib.parse.unquote(seen["download"].rsplit("/", 1)[1])[:-len(".ipynb")]
    if name.startswith("notebook-"):
        assert notebook == json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text(encoding="utf-8")), \
            f"{seen['download']} is not notebooks/{stem}.ipynb"
    else:
        assert "NotImplementedError" in text and notebook["cells"], f"{seen['download']}: not a student version"
    repo = _configured_repo_url()
    if name.startswith("notebook-") and repo and "github.com/" in repo:
        owner_repo = repo.split("github.com/", 1)[1].strip("/").removesuffix(".git")
        assert seen["colab"] == ("https://colab.research.google.com/github/"
                                 f"{owner_repo}/blob/main/notebooks/{stem}.ipynb"), seen["colab"]
    else:  # without a GitHub repository Colab has nothing to open; assignments: solutions
        assert seen["colab"] is None, seen["colab"]


_SEARCH = """
const done = arguments[arguments.length - 1];
const t0 = Date.now();
(function poll() {
  const items = document.querySelectorAll(".md-search-result__item");
  if (items.length) { done(Array.from(items).slice(0, 3).map(i => i.textContent.trim().slice(0, 80))); }
  else if (Date.now() - t0 > 20000) {
    const meta = document.querySelector(".md-search-result__meta");
    done("no results after 20 s: " + (meta ? meta.textContent : "no result list"));
  } else { setTimeout(poll, 100); }
})();
"""


def test_the_site_works_from_disk(browser, site):
    """Opened as files (a copied site/ folder): its links open pages, its search answers."""
    from selenium.webdriver.common.by import By

    browser.set_window_size(1400, 1000)
    try:
        browser.get((site / "index.html").as_uri())
        links = browser.execute_script(
            "return Array.from(document.querySelectorAll('.md-nav--primary a.md-nav__link[href]'))"
            ".map(a => a.href)")
        pages = [h.split("#")[0] for h in links if h.startswith("file:")]
        assert len(pages) > 10, f"hardly any navigation: {links}"
        folders = sorted({h for h in pages if not h.endswith(".html")})
        assert not folders, f"links that open a folder, not a page, from disk: {folders[:5]}"
        target = next(h for h in pages if h.endswith("backward.html"))
        browser.execute_script("document.querySelector(`.md-nav--primary a[href$='backward.html']`).click()")
        deadline = time.time() + 30
        while time.time() < deadline and browser.current_url.split("#")[0] != target:
            time.sleep(0.1)
        assert browser.current_url.split("#")[0] == target
        assert browser.execute_async_script(_WAIT_FOR_MATHJAX) == "ok"
        assert "Backward" in browser.find_element(By.CSS_SELECTOR, "h1").text
        browser.find_element(By.CSS_SELECTOR, "label.md-search__icon, .md-search__input").click()
        box = browser.find_element(By.CSS_SELECTOR, ".md-search__input")
        box.send_keys("cross-attention")
        found = browser.execute_async_script(_SEARCH)
        assert isinstance(found, list) and found, f"search from disk: {found}"
    finally:
        browser.set_window_size(1280, 1000)


def test_the_landing_page_shows_the_version(pages):
    assert f"flowattn_np {flowattn_np.__version__}" in pages["landing"]["text"], \
        "the landing page does not show flowattn_np.__version__"


@pytest.mark.parametrize("name", [n for n in PAGES if n != "results"])
def test_no_link_is_shown_as_a_file_name(pages, name):
    """Links read as the page's title ('the backward passes'), not as 'backward.md'."""
    shown = re.findall(r"<a\b[^>]*>\s*([\w-]+\.md)\s*</a>", pages[name]["html"])
    assert not shown, f"{pages[name]['url']}: links shown as file names: {shown}"


# ------------------------------------------------------------------------ in the built files


def _api_ids(site):
    """{module: ids of the names documented on its API page}."""
    out = {}
    for path in sorted((site / "api").glob("*.html")):
        parser = _Ids()
        parser.feed(path.read_text(encoding="utf-8"))
        prefix = f"flowattn_np.{path.stem}."
        out[path.stem] = {i[len(prefix):] for i in parser.ids if i.startswith(prefix) and "." not in i[len(prefix):]}
    return out


def test_every_public_name_is_on_the_api_pages(site):
    pages = _api_ids(site)
    documented = set().union(*pages.values())
    # a module exported by name (fa.checks, fa.plotting) is documented by its own page
    modules = {name for name in flowattn_np.__all__ if inspect.ismodule(getattr(flowattn_np, name))
               and getattr(flowattn_np, name).__name__.removeprefix("flowattn_np.") in pages}
    missing = sorted(set(flowattn_np.__all__) - documented - modules)
    assert not missing, f"in flowattn_np.__all__ but not documented on the API pages: {missing}"


def test_the_api_reference_is_one_page_per_module_with_public_names_only(site):
    modules = {m for m in package_modules() if m.rpartition(".")[2] not in ("__init__", "__main__")}
    assert {"equations.models", "blocks.network", "teaching.checks"} <= modules  # subpackages searched
    pages = _api_ids(site)
    assert set(pages) == modules, f"modules without an API page: {sorted(modules - set(pages))}"
    # ops's helpers, used by the equation modules but not offered to a user
    helpers = {"swap_last", "matmul_rows", "sum_leading", "gram_sum"} & pages["equations.ops"]
    assert not helpers, f"internal helpers on the API page of flowattn_np.equations.ops: {sorted(helpers)}"
    private = sorted(f"{m}.{n}" for m, names in pages.items() for n in names if n.startswith("_"))
    assert not private, f"private names on the API pages: {private}"


def test_every_notebook_is_a_page_of_the_site(site):
    for path in NOTEBOOKS:
        assert (site / "notebooks" / f"{path.stem}.html").is_file(), f"{path.name} has no page"


def test_the_readme_links_to_pages_of_the_site(site):
    """README.md links to the pages' sources (docs/*.md, notebooks/*.ipynb: GitHub shows
    both); each one is a page of the site."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paths = re.findall(r"\]\(((?:docs|notebooks)/\w+)\.(?:md|ipynb)\)", readme)
    assert len(paths) >= 8, "README.md hardly links to the site's pages"
    missing = [p for p in paths if not (site / (p.removeprefix("docs/") + ".html")).is_file()]
    assert not missing, f"README.md links to pages the site does not have: {missing}"


def test_no_search_title_shows_tex(site):
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    raw = sorted({d["title"] for d in index["docs"] if "$" in d["title"] or "\\(" in d["title"]})
    assert not raw, f"search results titled with raw TeX: {raw[:10]}"


def test_student_pages_hold_no_notes_for_developers(site):
    """The course's pages speak to a reader, not to whoever maintains the site's tests."""
    pages = [site / "index.html", site / "start.html", site / "math.html", site / "backward.html"]
    pages += sorted((site / "notebooks").glob("*.html")) + sorted((site / "coursework").glob("*.html"))
    notes = [p.relative_to(site).as_posix() for p in pages if p.is_file()
             and re.search(r"test_docs\.py|test_site\.py|mkdocs build", p.read_text(encoding="utf-8"))]
    assert not notes, f"pages with notes about the site's own build or tests: {notes}"


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
        assert (site / "coursework" / f"{path.stem}.html").is_file(), f"{path.name} has no student page"
        student = (site / "coursework" / path.name).read_text(encoding="utf-8")
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
