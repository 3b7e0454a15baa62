"""The folders are the architecture: every module belongs to one layer, and imports run
only downward, never in a circle.

    layer 0  backend, validate, random, threads, links    arrays, checks, seeds, CPUs, URLs
    layer 1  equations/                                   the paper's equations, functions only
    layer 2  blocks/                                      blocks, label sources, the network
    layer 3  fast/                                        fused implementations of the blocks
    layer 4  training/                                    optimisers, the loop, checkpoints
    layer 5  experiments/                                 data, parts 1-5, figures
    layer 6  teaching/                                    checkers, gradient check, coursework
    layer 7  __init__, __main__, cli                      the entry points: may import anything

A module may import from its own layer and the layers below. Imports inside functions
count too (they are how a circle hides). Read from the source with ``ast``.
"""

import ast
import re
from pathlib import Path

import pytest

from helpers import LAYERS, package_modules

BASE = ("backend", "validate", "random", "threads", "links")
ENTRY = ("__init__", "__main__", "cli")


def layer_of(module):
    """The layer of a module named below flowattn_np (``"blocks.network"``), or None when
    the module is in no layer (a new top-level module must be placed in BASE or ENTRY)."""
    head, _, rest = module.partition(".")
    if not rest:
        return 0 if head in BASE else len(LAYERS) + 1 if head in ENTRY else None
    return LAYERS.index(head) + 1 if head in LAYERS else None


def _imported(module, path, known):
    """The modules of the package that ``module`` imports (anywhere in its source), each
    once, as dotted names below flowattn_np (a subpackage itself: its ``__init__``)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    package = module.split(".")[:-1] if not module.endswith("__init__") else module.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "flowattn_np"]
            out |= {_resolve(n.split(".")[1:], known) for n in names if n != "flowattn_np"}
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[:len(package) - node.level + 1] if node.level > 1 else package
            parts = base + (node.module.split(".") if node.module else [])
        elif (node.module or "").split(".")[0] == "flowattn_np":
            parts = node.module.split(".")[1:]
        else:
            continue
        for alias in node.names:  # `from flowattn_np.blocks import network` imports a module
            sub = ".".join(parts + [alias.name])
            out.add(sub if sub in known else _resolve(parts, known))
    out.discard(None)
    out.discard(module)
    return out


def _resolve(parts, known):
    name = ".".join(parts)
    if name in known:
        return name
    if f"{name}.__init__" in known:
        return f"{name}.__init__"
    return "__init__" if not parts else None


def import_graph(modules):
    """{module: set of modules it imports} for {dotted name: path}."""
    known = set(modules)
    return {m: _imported(m, p, known) for m, p in modules.items()}


def layer_problems(graph):
    """Lines naming every module outside the layers and every upward import."""
    problems = [f"{m}: in no layer (add it to a subpackage, or to BASE or ENTRY here)"
                for m in graph if layer_of(m) is None]
    for m, targets in graph.items():
        for t in sorted(targets):
            if None not in (layer_of(m), layer_of(t)) and layer_of(t) > layer_of(m):
                problems.append(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)}): upward")
    return problems


def cycles(graph):
    """Every import circle, each once, as a list of modules [a, b, ..., a]."""
    found, state, stack = [], {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def _package_graph():
    # __init__ imports everything and nothing imports it back but its own re-exports:
    # an `import flowattn_np` inside a module is a use of the public API, not a circle
    graph = import_graph(package_modules())
    return {m: {t for t in ts if t != "__init__"} for m, ts in graph.items()}


def test_every_module_is_in_a_layer_and_imports_only_downward():
    graph = _package_graph()
    assert {"equations.models", "blocks.network", "fast.fused_quadratic", "training.train",
            "experiments.data", "teaching.checks"} <= set(graph)  # the subpackages are searched
    problems = layer_problems(graph)
    assert not problems, "\n".join(problems)


def test_no_module_imports_in_a_circle():
    circles = cycles(_package_graph())
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_equations_hold_no_state_of_the_layers_above():
    """The equations import nothing but the base layer and each other."""
    graph = _package_graph()
    for m, targets in graph.items():
        if m.startswith("equations."):
            assert all(layer_of(t) <= 1 for t in targets), (m, targets)


@pytest.fixture
def fake_package(tmp_path):
    """A package laid out like flowattn_np, with one upward import and one circle."""
    root = tmp_path / "flowattn_np"
    files = {
        "__init__.py": "from flowattn_np.blocks import network\n",
        "backend.py": "import numpy\n",
        "equations/__init__.py": "",
        "equations/ops.py": "from flowattn_np.backend import get_array_module\n",
        "equations/models.py": "def f():\n    from flowattn_np.blocks.network import Network\n",
        "blocks/__init__.py": "",
        "blocks/network.py": "from flowattn_np.equations import ops\nfrom . import layers\n",
        "blocks/layers.py": "def g():\n    from .network import Network\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return {name[:-3].replace("/", "."): root / name for name in files}


def test_the_checks_catch_an_upward_import_and_a_circle(fake_package):
    graph = import_graph(fake_package)
    assert graph["blocks.network"] == {"equations.ops", "blocks.layers"}
    problems = layer_problems(graph)
    assert any("equations.models (layer 1) imports blocks.network (layer 2): upward" in p for p in problems)
    assert cycles(graph) == [["blocks.network", "blocks.layers", "blocks.network"]]


# ---------------------------------------------------------------- the README's table of modules


def readme_table_paths(text):
    """The module paths (``flowattn_np/...py`` in backquotes) in the first column of the
    README's table under "## Where things are"."""
    section = text.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [p for row in rows for p in re.findall(r"`(flowattn_np/[\w/]+\.py)`", row.split("|")[1])]


def test_every_module_is_in_the_readme_table_by_path():
    """Every module of the package has a row (a subpackage's ``__init__`` holds only the
    folder's docstring: the rows of its modules say what the folder holds), and every path
    in the table is a module."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    listed = readme_table_paths(readme)
    assert len(listed) == len(set(listed)), "a module is listed twice"
    modules = {f"flowattn_np/{m.replace('.', '/')}.py" for m in package_modules()
               if "." not in m or not m.endswith(".__init__")}
    missing, stale = sorted(modules - set(listed)), sorted(set(listed) - modules)
    assert not missing, f"modules missing from README.md's table (## Where things are): {missing}"
    assert not stale, f"README.md's table lists modules that do not exist: {stale}"


def test_the_readme_check_reads_the_first_column_only():
    text = ("# x\n## Where things are\n\n| module | what |\n|---|---|\n"
            "| `flowattn_np/a.py`, `flowattn_np/b/c.py` | see `flowattn_np/d.py` |\n\n## Next\n"
            "| `flowattn_np/e.py` | |\n")
    assert readme_table_paths(text) == ["flowattn_np/a.py", "flowattn_np/b/c.py"]
