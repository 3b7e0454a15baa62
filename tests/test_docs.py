"""The documentation stays true to the code.

* Every public name has a docstring, so a new public function without documentation
  fails here. Public names: everything in ``flowattn_np.__all__`` (or, without it, the
  package's public functions and classes), plus the public functions and classes of the
  modules in ``MODULES``.
* The site's hook (docs/site_hooks.py) writes one API page per module of the package
  (``::: module`` for mkdocstrings), so a new module cannot be left out of the API
  reference; tests/test_site.py checks in the built site that every name of
  ``flowattn_np.__all__`` is on those pages and that the helpers are not.
* Every function cited on a ``Code:`` line of docs/math.md and docs/backward.md exists,
  in the file the line names, and every ``tests/...py::test_name`` they cite exists.
* Docstrings follow the numpy style that the API page renders (griffe, mkdocstrings'
  parser, reads them without a warning); in the modules of the equations each function
  documents its arguments and states the equation it cites in TeX.

Pure text and import checks: no arrays are computed, the module runs in well under a
second.
"""

import importlib
import importlib.util
import inspect
import re
from pathlib import Path


import flowattn_np
from helpers import package_modules

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE_DIR = Path(flowattn_np.__file__).resolve().parent
# every module of the package, the subpackages searched recursively
MODULES = tuple(m for m in package_modules() if m.rpartition(".")[2] not in ("__init__", "__main__"))
CITING_DOCS = ("math.md", "backward.md")

# Public names that lack a docstring today. Write the docstring, then delete the name
# here: the test fails for a name listed here that has gained one, so this only shrinks.
MISSING_DOCSTRINGS = set()


def _documentable(obj):
    return inspect.isfunction(obj) or inspect.isclass(obj)


def public_names():
    """{qualified name: object} by the definition in the module docstring."""
    out = {}
    pkg = flowattn_np
    if hasattr(pkg, "__all__"):
        names = list(pkg.__all__)
    else:
        names = [k for k, v in vars(pkg).items() if not k.startswith("_") and _documentable(v)]
    for name in names:
        out[f"flowattn_np.{name}"] = getattr(pkg, name)
    for m in MODULES:
        mod = importlib.import_module(f"flowattn_np.{m}")
        if hasattr(mod, "__all__"):
            names = [k for k in mod.__all__ if _documentable(getattr(mod, k, None))]
        else:
            names = [k for k, v in vars(mod).items()
                     if not k.startswith("_") and _documentable(v) and v.__module__ == mod.__name__]
        for name in names:
            out[f"flowattn_np.{m}.{name}"] = getattr(mod, name)
    return out


def own_docstring(obj):
    """The object's own docstring ('' if none; a dataclass's automatic one does not count)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if not isinstance(doc, str) or not doc.strip():
        return ""
    if inspect.isclass(obj) and doc.startswith(obj.__name__ + "("):
        return ""
    return doc.strip()


def _api_text():
    return (DOCS / "api.md").read_text(encoding="utf-8")


def test_every_public_function_and_class_has_a_docstring():
    missing = {q for q, obj in public_names().items() if _documentable(obj) and not own_docstring(obj)}
    # the same object may be public under two names (flowattn_np.fit, flowattn_np.training.train.fit)
    new = sorted(missing - MISSING_DOCSTRINGS)
    assert not new, f"public names without a docstring: {new}"
    fixed = sorted(MISSING_DOCSTRINGS - missing)
    assert not fixed, f"these now have docstrings; remove them from MISSING_DOCSTRINGS: {fixed}"


def test_every_public_method_of_a_public_class_has_a_docstring():
    missing = []
    for q, obj in public_names().items():
        if not inspect.isclass(obj) or not obj.__module__.startswith("flowattn_np"):
            continue
        for name, member in vars(obj).items():
            if name.startswith("_"):
                continue
            fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
            if inspect.isfunction(fn) and not (fn.__doc__ or "").strip():
                missing.append(f"{q}.{name}")
    assert not missing, f"public methods without a docstring: {sorted(set(missing))}"


def _site_hooks():
    spec = importlib.util.spec_from_file_location("site_hooks", DOCS / "site_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_module_is_rendered_on_an_api_page():
    """Each module of the package gets its page, ``::: flowattn_np.NAME`` with the
    module's public names as members, and docs/api.md lists the pages."""
    hooks = _site_hooks()
    modules = set(MODULES)
    assert {"equations.models", "blocks.network", "teaching.checks"} <= modules  # subpackages searched
    assert set(hooks.api_modules()) == modules
    for name in modules:
        page = hooks.api_page(name)
        assert re.search(rf"^::: flowattn_np\.{re.escape(name)}\s*$", page, re.M), page
        members = hooks.public_names(name)
        assert members and not any(m.startswith("_") for m in members), (name, members)
    assert "<!-- api-modules -->" in _api_text(), "docs/api.md lost the place of its table of modules"
    table = _site_hooks().api_table()
    assert all(f"(api/{name}.md)" in table for name in modules)


def test_public_names_of_a_module_are_its_all_or_what_the_package_exports():
    hooks = _site_hooks()
    assert hooks.public_names("training.train") == list(importlib.import_module("flowattn_np.training.train").__all__)
    ops = hooks.public_names("equations.ops")
    assert "softmax" in ops and "swap_last" not in ops and "matmul_rows" not in ops
    assert "Cosine" in hooks.public_names("training.optim")
    assert "ASSIGNMENTS" in hooks.public_names("teaching.coursework")  # nothing exported: all it defines


# ---------------------------------------------------------------- citations in math.md, backward.md

_TOKEN = re.compile(r"`([A-Za-z_][\w.]*)`|\(([\w/]+\.py)\)")


def code_citations():
    """(doc, line number, dotted name, cited file or None) for every name on a Code: line.

    A parenthesised file name, e.g. ``(equations/models.py)``, applies to the names before it on the
    line back to the previous file name.
    """
    out = []
    for doc in CITING_DOCS:
        for number, line in enumerate((DOCS / doc).read_text(encoding="utf-8").splitlines(), 1):
            if not line.lstrip("> ").startswith("Code:"):
                continue
            pending, found = [], []
            for name, file in _TOKEN.findall(line):
                if name:
                    pending.append(name)
                else:
                    found += [(doc, number, n, file) for n in pending]
                    pending = []
            found += [(doc, number, n, None) for n in pending]
            assert found, f"{doc}:{number}: a Code: line that cites no function: {line!r}"
            out += found
    return out


def resolve(dotted):
    """The object named ``flowattn_np.a.b`` or ``module.a.b`` (module of flowattn_np)."""
    parts = dotted.split(".")
    if parts[0] != "flowattn_np":
        parts = ["flowattn_np"] + parts
    obj = importlib.import_module("flowattn_np")
    path = "flowattn_np"
    for part in parts[1:]:
        path += "." + part
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif inspect.ismodule(obj):
            obj = importlib.import_module(path)  # a submodule not yet imported
        else:
            raise AttributeError(f"{dotted}: {path} does not exist")
    return obj


def test_math_and_backward_docs_cite_code_on_code_lines():
    cites = code_citations()
    for doc in CITING_DOCS:
        assert sum(c[0] == doc for c in cites) >= 10, f"{doc} has hardly any Code: lines"


def test_every_function_cited_on_a_code_line_exists_in_the_named_file():
    problems = []
    for doc, number, name, file in code_citations():
        try:
            obj = resolve(name)
        except (AttributeError, ImportError) as exc:
            problems.append(f"{doc}:{number}: `{name}` does not resolve ({exc})")
            continue
        target = inspect.unwrap(obj.fget if isinstance(obj, property) else obj)
        if file and (inspect.isfunction(target) or inspect.isclass(target) or inspect.ismethod(target)):
            # the file below flowattn_np/, e.g. equations/models.py
            where = Path(inspect.getsourcefile(target)).resolve().relative_to(PACKAGE_DIR).as_posix()
            if where != file:
                problems.append(f"{doc}:{number}: `{name}` is defined in {where}, not {file}")
    assert not problems, "\n".join(problems)


def test_every_test_cited_in_the_docs_exists():
    problems = []
    for doc in CITING_DOCS:
        text = (DOCS / doc).read_text(encoding="utf-8")
        for path, name in re.findall(r"(tests/\w+\.py)(?:::(\w+))?", text):
            file = ROOT / path
            if not file.exists():
                problems.append(f"{doc}: {path} does not exist")
            elif name and not re.search(rf"^def {name}\(", file.read_text(encoding="utf-8"), re.M):
                problems.append(f"{doc}: {path}::{name} does not exist")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- docstring conventions

EQUATION_MODULES = ("ops", "attention", "models", "flows", "integrators", "exact_b")


def _griffe_package():
    import griffe  # comes with mkdocstrings (the docs extra, part of the test extra)

    return griffe, griffe.load("flowattn_np", search_paths=[str(ROOT)], docstring_parser="numpy")


def _public_objects(obj):
    for name, member in obj.members.items():
        if name.startswith("_") or member.is_alias:
            continue
        yield member
        if member.is_class:
            yield from _public_objects(member)


def test_docstrings_parse_in_numpy_style_without_warnings():
    """What the API page renders: numpy-style sections that match the signatures."""
    import logging

    griffe, package = _griffe_package()
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("griffe")
    logger.addHandler(handler)
    try:
        for module in package.modules.values():
            for obj in _public_objects(module):
                if obj.docstring:
                    obj.docstring.parse("numpy")
    finally:
        logger.removeHandler(handler)
    assert not [m for m in messages if ".py:" in m], "\n".join(m for m in messages if ".py:" in m)


def test_equation_functions_document_parameters_and_typeset_their_equation():
    """In the modules of the equations, a function with arguments has a numpy Parameters
    section with each argument, and a docstring that cites an equation states it in TeX."""
    _, package = _griffe_package()
    problems = []
    for name in EQUATION_MODULES:
        for obj in _public_objects(package.modules["equations"].modules[name]):
            if not obj.is_function or obj.parent.is_class:
                continue
            text = obj.docstring.value if obj.docstring else ""
            args = [p.name for p in obj.parameters if p.name not in ("self", "cls")]
            if args and not re.search(r"^Parameters\n-{10}", text, re.M):
                problems.append(f"{name}.{obj.name}: no Parameters section")
            elif args:
                missing = [a for a in args if not re.search(rf"^(?:.*, )?{a}(?:, .*)?(?: :|$)", text, re.M)]
                if missing:
                    problems.append(f"{name}.{obj.name}: arguments not documented: {missing}")
            if re.search(r"\beqs?\. ?\(?\d", text) and "$" not in text:
                problems.append(f"{name}.{obj.name}: cites an equation but states no formula in TeX")
    assert not problems, "\n".join(problems)


def test_titles_lose_their_tex():
    plain = _site_hooks().plain_title
    assert plain(r"3. The gradient in the factor $\phi$ (3 points)") == "3. The gradient in the factor φ (3 points)"
    assert plain("Part 1. Multinomial regression ($L = 0$)") == "Part 1. Multinomial regression (L = 0)"
    assert plain(r"A retrieval task with a hidden $\theta^\ast$") == "A retrieval task with a hidden θ*"
    assert plain(r"5.3 Gradients in \(\theta\) and \(\phi\)") == "5.3 Gradients in θ and φ"
    assert plain("Backward passes, derived") == "Backward passes, derived"


def test_the_course_path_puts_each_assignment_after_its_notebook():
    hooks = _site_hooks()
    nbs = ["notebooks/01_a.ipynb", "notebooks/02_b.ipynb", "notebooks/06_c.ipynb", "notebooks/07_d.ipynb"]
    work = ["coursework/a1_x.ipynb", "coursework/a2_y.ipynb", "coursework/a4_z.ipynb",
            "coursework/a5_transformer_block.ipynb", "coursework/a9_new.ipynb"]
    assert hooks.course_path(nbs, work) == [
        "notebooks/01_a.ipynb", "coursework/a1_x.ipynb", "coursework/a2_y.ipynb", "notebooks/02_b.ipynb",
        "notebooks/06_c.ipynb", "coursework/a4_z.ipynb", "notebooks/07_d.ipynb",
        "coursework/a5_transformer_block.ipynb", "coursework/a9_new.ipynb"]


def test_colab_links_only_for_a_github_repository():
    colab = _site_hooks().colab_url
    assert colab("https://github.com/someone/flowattn_np/", "notebooks/01_a.ipynb") == \
        "https://colab.research.google.com/github/someone/flowattn_np/blob/main/notebooks/01_a.ipynb"
    assert colab("https://github.com/someone/flowattn_np.git", "n.ipynb", "dev").endswith("flowattn_np/blob/dev/n.ipynb")
    assert colab(None, "n.ipynb") is None
    assert colab("https://gitlab.com/someone/flowattn_np", "n.ipynb") is None
