"""The package stays readable: every function under 60 lines, and no ``_private`` name
imported from another module (a helper used across modules is public in its home).

Read from the source with ``ast``, nothing is imported. ``PENDING`` lists what is known
and being reworked; a test fails once an entry there is no longer needed, so the list
only shrinks.
"""

import ast
from pathlib import Path

import pytest
from helpers import package_modules

PACKAGE = Path(__file__).resolve().parents[1] / "flowattn_np"
MAX_LINES = 60

# (module, function) pairs still too long, and (module, name) private imports still in use
PENDING_LONG = set()
PENDING_PRIVATE = set()


def _modules():
    """Every module of the package, the subpackages searched recursively."""
    return list(package_modules().values())


def _name(path):
    """The module's path below flowattn_np/ (``blocks/network.py``)."""
    return path.relative_to(PACKAGE).as_posix()


def _long_functions(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {(_name(path), node.name, node.end_lineno - node.lineno + 1)
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 >= MAX_LINES}


def _private_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {(_name(path), alias.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith(
                "flowattn_np"))
            for alias in node.names
            if alias.name.startswith("_") and not alias.name.startswith("__")}


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_every_function_is_under_60_lines(path):
    too_long = {(m, f, n) for m, f, n in _long_functions(path) if (m, f) not in PENDING_LONG}
    assert not too_long, "functions of 60 lines or more (split them): " + ", ".join(
        f"{m}:{f} ({n} lines)" for m, f, n in sorted(too_long))


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_no_private_name_is_imported_across_modules(path):
    found = _private_imports(path) - PENDING_PRIVATE
    assert not found, "private names imported from another module (make them public in " \
        "their home module): " + ", ".join(f"{m} imports {n}" for m, n in sorted(found))


def test_pending_exemptions_are_still_needed():
    """Once a long function is split or a private import is gone, drop it from PENDING_*."""
    long_now = {(m, f) for p in _modules() for m, f, _ in _long_functions(p)}
    private_now = set().union(*(_private_imports(p) for p in _modules()))
    stale = (PENDING_LONG - long_now) | (PENDING_PRIVATE - private_now)
    assert not stale, f"remove from PENDING_LONG / PENDING_PRIVATE: {sorted(stale)}"
