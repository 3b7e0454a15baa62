"""The public API the course uses: ``import flowattn_np as fa`` and ``fa.<name>``.

* Every notebook and assignment source imports only the public API: ``import flowattn_np``
  (as fa) or ``from flowattn_np import NAME`` with NAME in ``flowattn_np.__all__``; never a
  submodule (``flowattn_np.experiments.data``, ``flowattn_np.teaching.checks``), which may
  move. Read from the jupytext sources with ``ast`` (test_notebooks.py keeps each .ipynb
  equal to its source).
* Every VJP the package exports comes with the forward that returns what it needs.
* Importing the package imports neither matplotlib nor nbgrader (the course's figures
  and coursework load them only when used).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import flowattn_np as fa

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("*.py")) + sorted((ROOT / "notebooks" / "assignments").glob("*.py"))


def private_imports(text, public=frozenset(fa.__all__)):
    """Lines ``(line number, what)`` of ``text`` that import from flowattn_np other than its public API."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name.startswith("flowattn_np.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flowattn_np":
            if node.module != "flowattn_np":
                found.append((node.lineno, f"from {node.module} import ..."))
            else:
                found += [(node.lineno, f"from flowattn_np import {a.name} (not in flowattn_np.__all__)")
                          for a in node.names if a.name not in public]
    return found


def test_the_sources_are_found():
    names = {p.name for p in SOURCES}
    assert "04_fashion_mnist.py" in names and "a1_linear_model.py" in names and len(SOURCES) >= 12


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebooks_and_assignments_import_only_the_public_api(source):
    found = private_imports(source.read_text(encoding="utf-8"))
    assert not found, "\n".join(f"{source.relative_to(ROOT)}:{n}: {what}: use `import flowattn_np as fa` "
                                f"and fa.NAME (export the name from flowattn_np/__init__.py)" for n, what in found)


def test_the_import_check_catches_every_way_into_a_submodule():
    old = ("import flowattn_np as fa\n"
           "from flowattn_np.teaching import checks\n"
           "from flowattn_np.experiments.data import make_blobs\n"
           "import flowattn_np.training.optim\n"
           "from flowattn_np import Adam, RunFolder\n"
           "def f():\n    from flowattn_np.backend import synchronize\n")
    found = [what for _, what in private_imports(old)]
    assert found == ["from flowattn_np.teaching import ...", "from flowattn_np.experiments.data import ...",
                     "import flowattn_np.training.optim",
                     "from flowattn_np import RunFolder (not in flowattn_np.__all__)",
                     "from flowattn_np.backend import ..."], found
    assert private_imports("import flowattn_np as fa\nfrom flowattn_np import checks, make_blobs\n") == []


def _forward_inputs(rng):
    """Inputs of each forward defined beside an exported VJP (small, float64)."""
    Z2, Z3, S = rng.normal(size=(4, 3)), rng.normal(size=(2, 4, 3)), rng.normal(size=(3, 3))
    return {"cross_attention_forward": (Z2, rng.normal(size=(5, 3))),
            "self_attention_sum_forward": (Z3, S + S.T),
            "retract_forward": (Z2, 2.0), "layer_retract_forward": (Z2,)}


def test_every_exported_vjp_comes_with_its_forward():
    """``X_vjp`` takes what a forward returns (P, Y, a cache). Where the module defines an
    ``X_forward`` that returns more than the value (a tuple: the value and what the VJP
    needs), it is exported beside the VJP; otherwise ``X`` itself is."""
    import numpy as np

    inputs, missing = _forward_inputs(np.random.default_rng(0)), []
    for name in fa.__all__:
        home = getattr(getattr(fa, name), "__module__", None) or ""
        if not (name.endswith("_vjp") and home.startswith("flowattn_np.equations.")):
            continue  # check_vjp is the gradient checker, not a VJP
        module = sys.modules[home]
        base = name[: -len("_vjp")]
        forward = getattr(module, f"{base}_forward", None)
        assert forward is not None or base in fa.__all__, f"{name}: no forward {base} or {base}_forward"
        if forward is None:
            continue
        assert forward.__name__ in inputs, f"add inputs of {forward.__name__} to _forward_inputs"
        if isinstance(forward(*inputs[forward.__name__]), tuple) and forward.__name__ not in fa.__all__:
            missing.append(f"{name} without {forward.__name__}, which returns what it needs")
        elif base not in fa.__all__ and forward.__name__ not in fa.__all__:
            missing.append(f"{name} without {base}")
    assert not missing, missing


def test_every_exported_name_is_there_and_the_checkers_are_one_module():
    assert [n for n in fa.__all__ if not hasattr(fa, n)] == []
    assert len(set(fa.__all__)) == len(fa.__all__)
    from flowattn_np.teaching import checks

    assert fa.checks is checks and callable(fa.checks.check_function)
    assert callable(fa.plotting.figure1) and fa.method_color is fa.plotting.method_color


def test_importing_the_package_loads_neither_matplotlib_nor_nbgrader():
    code = ("import sys, flowattn_np as fa; fa.checks, fa.plotting; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'nbgrader', 'jupytext'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
