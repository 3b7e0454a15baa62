"""MkDocs hooks of the course website (named in mkdocs.yml; not a page of the site).

* The notebooks in ``notebooks/`` become pages ``notebooks/NAME/`` (mkdocs-jupyter
  executes and renders them) and fill the ``Notebooks`` section of the navigation, in
  file-name order, so a new notebook appears without editing mkdocs.yml.
* The student versions of the graded assignments (solutions stubbed, hidden tests
  removed; written by ``flowattn_np.coursework``) become pages ``coursework/NAME/``,
  shown as a student receives them (not executed), after docs/teaching.md in the
  ``Coursework`` section. The source notebooks, with the solutions, never reach the site.
* MathJax is served from the site itself (``assets/mathjax/``), copied from the
  ``django-static-mathjax`` wheel (a pure data package with no dependencies: MathJax
  3.2.2's own files). The build stops with a clear message when it is not installed.
* Notebook pages carry nbconvert's loaders for MathJax 2 and Mermaid from a CDN; they are
  removed, so no page asks another host for anything (the site's MathJax typesets the
  notebooks' mathematics too).
* The kernels that execute the notebooks import this checkout's ``flowattn_np`` and draw
  their figures inline, into the page.
"""

import importlib.util
import os
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOK_SECTION = "Notebooks"
COURSEWORK_SECTION = "Coursework"
COURSEWORK_PAGE = "teaching.md"  # the teacher's guide, first in its section when it exists
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
    if not (ROOT / "flowattn_np" / "coursework.py").is_file():
        return None
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this checkout's package, not another installed one
    from flowattn_np import coursework

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


_students = []


def on_config(config):
    students = student_notebooks()
    _students[:] = students or []
    nav = config.nav or []
    for entry in nav:
        if isinstance(entry, dict) and NOTEBOOK_SECTION in entry:
            entry[NOTEBOOK_SECTION] = notebooks()
        if isinstance(entry, dict) and COURSEWORK_SECTION in entry:
            guide = [COURSEWORK_PAGE] if (ROOT / config.docs_dir / COURSEWORK_PAGE).is_file() else []
            entry[COURSEWORK_SECTION] = guide + [p.relative_to(STUDENT_DIR).as_posix() for p in _students]
    nav[:] = [e for e in nav if not (isinstance(e, dict) and list(e.values()) == [[]])]
    if "mkdocs-jupyter" in config.plugins and notebooks():
        paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        # the kernel's own inline backend puts the figures into the page (a backend such as
        # Agg, inherited from the environment, would leave them out)
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
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
    root = mathjax_root()
    sources = [root / name for name in MATHJAX_FILES] + [root / "LICENSE"]
    sources = [p for p in sources if p.is_file()]
    for folder in MATHJAX_DIRS:
        sources += sorted(p for p in (root / folder).rglob("*") if p.is_file())
    for src in sources:
        uri = f"{MATHJAX_DEST}/{src.relative_to(root).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(src)))
    return files


def on_post_page(output, page, config):
    if page.file.src_uri.endswith(".ipynb"):
        for block in _CDN_BLOCKS:
            output = block.sub("", output)
    return output
