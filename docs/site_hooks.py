r"""MkDocs hooks of the course website (named in mkdocs.yml; not a page of the site).

* The notebooks in ``notebooks/`` become pages ``notebooks/NAME.html`` (mkdocs-jupyter
  executes and renders them), so a new notebook appears without editing mkdocs.yml.
* The student versions of the graded assignments (solutions stubbed, hidden tests
  removed; written by ``flowattn_np.teaching.coursework``) become pages ``coursework/NAME.html``,
  shown as a student receives them (not executed). The source notebooks, with the
  solutions, never reach the site.
* MathJax is served from the site itself (``assets/mathjax/``), copied from the
  ``django-static-mathjax`` wheel (a pure data package with no dependencies: MathJax
  3.2.2's own files). The build stops with a clear message when it is not installed.
* Notebook pages carry nbconvert's loaders for MathJax 2 and Mermaid from a CDN; they are
  removed, so no page asks another host for anything (the site's MathJax typesets the
  notebooks' mathematics too).
* The kernels that execute the notebooks import this checkout's ``flowattn_np`` and draw
  their figures inline, into the page.
* The ``The course`` section of the navigation is the course's path: start.md, then each
  notebook (file-name order) followed by the assignments that build on it
  (``ASSIGNMENT_AFTER``); start.md's table of that path, with the time each page takes,
  is written here too.
* Every notebook and assignment page opens with a link to download its ``.ipynb`` (copied
  beside the page), and, when ``repo_url`` names a GitHub repository, a link that opens
  the notebook in Colab (the teaching notebooks only: the repository's assignments hold
  the solutions). Titles and table-of-contents entries lose their TeX (``$\phi$`` -> φ):
  the navigation, the browser's title bar and the search results show plain text.
* The API reference is one page per module, ``api/MODULE.md``, written here for every
  module of the package, with its public names only: the module's ``__all__``, else the
  names the package exports from it, else every name it defines without a leading ``_``.
* The footer shows ``flowattn_np.__version__``. Material's offline plugin makes the site
  work from disk; its file:// shim for the search worker is served from the site
  (docs/javascripts/iframe-worker-shim.js) instead of from unpkg.com.
"""

import ast
import html
import importlib.util
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
COURSE_SECTION = "The course"  # start.md, then notebooks and assignments in course order
START_PAGE = "start.md"
API_SECTION = "API reference"  # api.md, then one generated page per module
API_PAGE = "api.md"
# The notebook (file-name prefix) each assignment (name prefix) follows on the course's
# path; an assignment not listed comes last.
ASSIGNMENT_AFTER = {"a1": "01", "a2": "01", "a3": "02", "a4": "06", "a5": "07"}
# Study time of each page of the course, in minutes (notebooks: reading and trying the
# cells; assignments: the work, estimated), and the seconds a notebook takes to run top to
# bottom (measured by a build of this site on a shared 2-core CPU: the hook logs each
# notebook's time as "... rendered in N s"). A page not listed shows no time.
STUDY_MINUTES = {"01": 45, "02": 45, "03": 45, "04": 45, "05": 20, "06": 60, "07": 45,
                 "a1": 120, "a2": 180, "a3": 150, "a4": 180, "a5": 120}
RUN_SECONDS = {"01": 6, "02": 4, "03": 6, "04": 46, "05": 18, "06": 12, "07": 18}
# The order of the API pages: from the equations to the tools around them (a module not
# listed comes last, in name order).
# the package from the paper up: the equations, the blocks, the fast paths, training, the
# experiments and the course; the modules of no subpackage (backend, validate, ...) first
LAYERS = ("equations", "blocks", "fast", "training", "experiments", "teaching")
API_ORDER = ("backend", "equations.ops", "equations.attention", "equations.models", "equations.flows",
             "equations.integrators", "equations.exact_b", "equations.sphere", "equations.mlp")
SHIM = "javascripts/iframe-worker-shim.js"
# The branch whose notebooks the Colab links open: the one the site is published from
# (not MkDocs' default edit_uri, which still names "master").
REPO_BRANCH = "main"
log = logging.getLogger("mkdocs.hooks.flowattn_np")
# Student versions are written here at build time (a folder .gitignore leaves out); the
# source notebooks, with their solutions, are never a page of the site.
STUDENT_DIR = ROOT / ".cache" / "site-coursework"
MATHJAX_DEST = "assets/mathjax"
# Of MathJax's es5 folder: the one combined file the pages load, and the folders it loads
# from on demand (TeX extensions, CommonHTML fonts, the menu and its accessibility tools).
MATHJAX_FILES = ("tex-chtml.js",)
MATHJAX_DIRS = ("input", "output/chtml", "ui", "a11y", "sre", "adaptors")

_CDN_BLOCKS = (
    re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S),
    re.compile(r'<script type="module">\s*document\.addEventListener\("DOMContentLoaded", async \(\) => \{'
               r'\s*const diagrams = document\.querySelectorAll\("\.jp-Mermaid.*?</script>', re.S),
)


def notebooks():
    """The notebooks to render, as paths relative to the repository root."""
    return [p.relative_to(ROOT).as_posix() for p in sorted(NOTEBOOK_DIR.glob("*.ipynb"))]


def student_notebooks():
    """Write the student version of every assignment; their paths under STUDENT_DIR.

    None when this checkout has no coursework module. Uses the package's own
    ``coursework.student_notebook`` (nbgrader's preprocessors): solutions become stubs,
    hidden tests and outputs go.
    """
    if not (ROOT / "flowattn_np" / "teaching" / "coursework.py").is_file():
        return None
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this checkout's package, not another installed one
    from flowattn_np.teaching import coursework

    out = []
    (STUDENT_DIR / "coursework").mkdir(parents=True, exist_ok=True)
    for name in coursework.ASSIGNMENTS:
        dst = STUDENT_DIR / "coursework" / f"{name}.ipynb"
        try:
            coursework.student_notebook(coursework.assignment_path(name), dst)
        except coursework.CourseworkError as exc:
            raise PluginError(f"the student version of {name} could not be written: {exc}") from exc
        out.append(dst)
    return out


def mathjax_root():
    """MathJax's es5 folder inside the installed django-static-mathjax package."""
    spec = importlib.util.find_spec("mathjax")
    root = None
    if spec is not None and spec.submodule_search_locations:
        root = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax" / "es5"
    if root is None or not (root / "tex-chtml.js").is_file():
        raise PluginError(
            "MathJax is missing, so the site's mathematics could not be typeset: install the "
            "docs extra (pip install \".[docs]\"), which brings django-static-mathjax.")
    return root


def _package():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this checkout's package, not another installed one
    import flowattn_np

    return flowattn_np


def course_path(notebook_paths, assignment_paths):
    """The pages of the course in the order to take them: each notebook, then the
    assignments that follow it (``ASSIGNMENT_AFTER``); assignments not placed come last."""
    placed = {}
    rest = []
    for path in assignment_paths:
        after = ASSIGNMENT_AFTER.get(Path(path).stem.split("_")[0])
        if after is None or not any(Path(nb).stem.startswith(after + "_") for nb in notebook_paths):
            rest.append(path)
        else:
            placed.setdefault(after, []).append(path)
    out = []
    for nb in notebook_paths:
        out.append(nb)
        out += placed.get(Path(nb).stem.split("_")[0], [])
    return out + rest


def _notebook_title(path):
    """The first level-1 heading of a notebook's Markdown cells, in plain text."""
    for cell in json.loads(Path(path).read_text(encoding="utf-8"))["cells"]:
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            match = re.search(r"^# (.+)$", source, re.M)
            if match:
                return plain_title(match.group(1).strip())
    return Path(path).stem


def _minutes(minutes):
    hours, rest = divmod(minutes, 60)
    return f"{minutes} min" if not hours else f"{hours} h" + (f" {rest} min" if rest else "")


def course_table():
    """The table of the course's path that docs/start.md shows in place of its marker."""
    rows = ["| step | page | runs in | study time |", "|---|---|---|---|"]
    students = {p.relative_to(STUDENT_DIR).as_posix(): p for p in _students}
    for step, uri in enumerate(course_path(notebooks(), list(students)), 1):
        key = Path(uri).stem.split("_")[0]
        source = students.get(uri, ROOT / uri)
        run = f"{RUN_SECONDS[key]} s" if key in RUN_SECONDS else "–"
        study = _minutes(STUDY_MINUTES[key]) if key in STUDY_MINUTES else "–"
        title = re.sub(r"^(\d+)\. ", r"Notebook \1: ", _notebook_title(source))
        rows.append(f"| {step} | [{title}]({uri}) | {run} | {study} |")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------ the API pages


def api_modules():
    """The package's modules, in the order of the API pages."""
    package = ROOT / "flowattn_np"
    names = set()
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] not in ("__init__", "__main__") and (len(parts) == 1 or parts[0] in LAYERS):
            names.add(".".join(parts))
    rank = {layer: i + 1 for i, layer in enumerate(LAYERS)}
    rest = sorted(names - set(API_ORDER), key=lambda m: (rank.get(m.split(".")[0], 0) if "." in m else 0, m))
    return [m for m in API_ORDER if m in names] + rest


def module_path(module):
    """The source file of ``flowattn_np.MODULE`` (``"equations.ops"``: flowattn_np/equations/ops.py)."""
    return ROOT / "flowattn_np" / (module.replace(".", "/") + ".py")


def _defined_names(module):
    """Names a module's source defines at its top level, without a leading underscore."""
    tree = ast.parse(module_path(module).read_text(encoding="utf-8"))
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in dict.fromkeys(names) if not n.startswith("_")]


def public_names(module):
    """The public names of ``flowattn_np.MODULE``: its ``__all__``; else the names the
    package exports from it; else every name it defines without a leading underscore."""
    pkg = _package()
    mod = importlib.import_module(f"flowattn_np.{module}")
    if hasattr(mod, "__all__"):
        return list(mod.__all__)
    defined = _defined_names(module)
    exported = [n for n in defined if n in getattr(pkg, "__all__", ())]
    return exported or defined


def api_page(module):
    """Markdown of the API page of one module (mkdocstrings renders it)."""
    # quoted: YAML would read a bare OFF, NO or YES as a boolean
    members = ", ".join(f'"{name}"' for name in public_names(module))
    return (f"# flowattn_np.{module}\n\n"
            f"::: flowattn_np.{module}\n"
            f"    options:\n"
            f"      show_root_heading: false\n"
            f"      show_root_toc_entry: false\n"
            f"      members: [{members}]\n")


def _summary(module):
    doc = ast.get_docstring(ast.parse(module_path(module).read_text(encoding="utf-8"))) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ").replace("|", "\\|")


def api_table():
    """The table of the API pages that docs/api.md shows in place of its marker."""
    rows = [f"| [`{m}`](api/{m}.md) | {_summary(m)} |" for m in api_modules()]
    return "| module | what it holds |\n|---|---|\n" + "\n".join(rows) + "\n"


# ------------------------------------------------------------------ titles and links


_GREEK = {name: chr(code) for name, code in (
    ("alpha", 945), ("beta", 946), ("gamma", 947), ("delta", 948), ("epsilon", 949), ("varepsilon", 949),
    ("zeta", 950), ("eta", 951), ("theta", 952), ("lambda", 955), ("mu", 956), ("nu", 957), ("pi", 960),
    ("rho", 961), ("sigma", 963), ("tau", 964), ("phi", 966), ("varphi", 966), ("chi", 967), ("psi", 968),
    ("omega", 969), ("Gamma", 915), ("Delta", 916), ("Theta", 920), ("Lambda", 923), ("Sigma", 931),
    ("Phi", 934), ("Psi", 936), ("Omega", 937))}
_SYMBOLS = {"ast": "*", "top": "\u1d40", "le": "\u2264", "leq": "\u2264", "ge": "\u2265", "geq": "\u2265",
            "to": "\u2192", "times": "\u00d7", "cdot": "\u00b7", "nabla": "\u2207", "infty": "\u221e",
            "approx": "\u2248", "ne": "\u2260", "in": "\u2208", "ell": "\u2113", "partial": "\u2202",
            "dots": "\u2026", "ldots": "\u2026", "circ": "\u2218", "odot": "\u2299", "hat": "", "bar": "",
            "tilde": "", "dot": "", "mathrm": "", "operatorname": "", "text": "", "mathbf": "", "boldsymbol": "",
            "mathcal": "", "mathbb": "", "left": "", "right": "", "big": "", "Big": ""}
_MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)", re.S)


def _tex_to_text(tex):
    """Plain text of a short TeX formula: Greek letters and common symbols as Unicode,
    other commands, braces and sub/superscript marks dropped."""
    text = re.sub(r"\\([A-Za-z]+)\s*",
                  lambda m: _GREEK.get(m.group(1), _SYMBOLS.get(m.group(1), m.group(1))), tex)
    text = re.sub(r"\\[,;:! ]", " ", text)
    text = text.replace("^*", "*").replace("\\", "")
    text = re.sub(r"[{}]", "", text)
    text = re.sub(r"(?<=\w)[_^](?=\w)", "", text)
    return re.sub(r"\s+", " ", text).strip()


def plain_title(title):
    """A title with every ``$...$`` / ``\\(...\\)`` formula written as plain text."""
    if title is None:
        return None
    return _MATH.sub(lambda m: _tex_to_text(next(g for g in m.groups() if g is not None)), title)


def _plain_toc(items):
    for item in items:
        item.title = plain_title(item.title)
        _plain_toc(item.children)


def colab_url(repo_url, path, branch="main"):
    """The Colab address of the notebook at ``path`` of a GitHub repository; None when the
    repository is unknown or not on GitHub (Colab opens notebooks from GitHub only)."""
    match = re.fullmatch(r"https?://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", repo_url or "")
    if not match:
        return None
    return f"https://colab.research.google.com/github/{match.group(1)}/{match.group(2)}/blob/{branch}/{path}"


def notebook_links(page, config):
    """HTML of the links at the top of a notebook or assignment page."""
    name = Path(page.file.abs_src_path).name
    student = page.file.src_uri.startswith("coursework/")
    what = "assignment" if student else "notebook"
    links = [f'<a class="md-button flowattn-download" href="{html.escape(name)}" download>'
             f'Download the {what} (.ipynb)</a>']
    colab = None if student else colab_url(config.get("repo_url"), f"notebooks/{name}", REPO_BRANCH)
    if colab:
        links.append(f'<a class="md-button flowattn-colab" href="{html.escape(colab)}">Open in Colab</a>')
    hint = ("Open it in Jupyter after <code>pip install flowattn-np</code>"
            + ("; in Colab, run <code>%pip install flowattn-np</code> first." if colab else "."))
    return f'<div class="flowattn-notebook-links">{" ".join(links)}<p>{hint}</p></div>\n'


# ------------------------------------------------------------------ events


_students = []
_started = {}


def _fill(nav, config):
    """Fill the sections of the navigation that mkdocs.yml leaves empty, in place."""
    for entry in nav:
        if not isinstance(entry, dict):
            continue
        for key, value in entry.items():
            if key == COURSE_SECTION and value == []:
                start = [START_PAGE] if (ROOT / config.docs_dir / START_PAGE).is_file() else []
                entry[key] = start + course_path(notebooks(), [p.relative_to(STUDENT_DIR).as_posix()
                                                               for p in _students])
            elif key == API_SECTION and value == []:
                entry[key] = [API_PAGE] + [f"api/{m}.md" for m in api_modules()]
            elif isinstance(value, list):
                _fill(value, config)
    nav[:] = [e for e in nav if not (isinstance(e, dict) and list(e.values()) == [[]])]


@event_priority(-50)  # after Material's offline plugin, whose polyfill it replaces
def on_config(config):
    students = student_notebooks()
    _students[:] = students or []
    _fill(config.nav or [], config)
    if "mkdocs-jupyter" in config.plugins and notebooks():
        paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        # the kernel's own inline backend puts the figures into the page (a backend such as
        # Agg, inherited from the environment, would leave them out)
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    # the offline plugin's shim for the search worker on file://, from this site, not unpkg.com
    polyfills = config.extra.get("polyfills")
    if polyfills:
        config.extra["polyfills"] = [SHIM if "iframe-worker" in str(url) else url for url in polyfills]
    version = _package().__version__
    config.copyright = f"{config.copyright} · flowattn_np {version}" if config.copyright else f"flowattn_np {version}"
    mathjax_root()  # fail before the notebooks run, not after
    return config


@event_priority(100)  # before mkdocs-jupyter wraps the notebooks as pages
def on_files(files, config):
    # real source folders, not File.generated: mkdocs-jupyter's wrapper of the file
    # recomputes abs_src_path from src_dir
    for path in notebooks():
        files.append(File(path, str(ROOT), config.site_dir, config.use_directory_urls))
    for path in _students:
        files.append(File(path.relative_to(STUDENT_DIR).as_posix(), str(STUDENT_DIR), config.site_dir,
                          config.use_directory_urls))
    for module in api_modules():
        files.append(File.generated(config, f"api/{module}.md", content=api_page(module)))
    root = mathjax_root()
    sources = [root / name for name in MATHJAX_FILES] + [root / "LICENSE"]
    sources = [p for p in sources if p.is_file()]
    for folder in MATHJAX_DIRS:
        sources += sorted(p for p in (root / folder).rglob("*") if p.is_file())
    for src in sources:
        uri = f"{MATHJAX_DEST}/{src.relative_to(root).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(src)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == API_PAGE:
        markdown = markdown.replace("<!-- api-modules -->", api_table())
    if page.file.src_uri == START_PAGE:
        markdown = markdown.replace("<!-- course-path -->", course_table())
    return markdown


def on_pre_page(page, config, files):
    _started[page.file.src_uri] = time.perf_counter()
    return page


def on_page_content(content, page, config, files):
    page.title = plain_title(page.title)
    _plain_toc(page.toc.items if page.toc else [])
    if page.file.src_uri.endswith(".ipynb"):
        seconds = time.perf_counter() - _started.get(page.file.src_uri, time.perf_counter())
        log.info("%s rendered in %.1f s", page.file.src_uri, seconds)
        content = notebook_links(page, config) + content
    return content


def on_post_page(output, page, config):
    if page.file.src_uri.endswith(".ipynb"):
        for block in _CDN_BLOCKS:
            output = block.sub("", output)
    # Material asks the GitHub API for the repository's stars and forks: a request to
    # another host on every page. Without this attribute the header links the repository only.
    return output.replace('data-md-component="source"', "")


@event_priority(-50)  # after the search plugin writes its index, before the offline plugin copies it
def on_post_build(config):
    # The search plugin titles each section with its heading's text, TeX and nbconvert's
    # permalink sign included: search results show the same plain titles as the navigation.
    path = Path(config.site_dir) / "search" / "search_index.json"
    if not path.is_file():
        return
    index = json.loads(path.read_text(encoding="utf-8"))
    for doc in index.get("docs", []):
        doc["title"] = plain_title(doc.get("title", "")).rstrip("¶").rstrip()
    path.write_text(json.dumps(index, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
