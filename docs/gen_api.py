"""Generate docs/api.md from the docstrings of flowattn_np.

    python docs/gen_api.py            # (re)write docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md is out of date

The public names are

* every name in ``flowattn_np.__all__`` (or, without ``__all__``, every public
  function or class attribute of the package), and
* the public functions and classes of the modules in ``MODULES`` (the names in the
  module's ``__all__`` that are functions or classes, or else those defined in the
  module itself and not starting with ``_``).

Each name gets a ``### name`` heading under the module that defines it, its signature
(``inspect.signature``, without annotations: annotations print differently across
Python versions) and its docstring verbatim. Classes also list their public methods
and properties (``#### Class.method``). The output depends only on the code, so
tests/test_docs.py can regenerate it and compare.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pprint
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_MD = ROOT / "docs" / "api.md"

PACKAGE = "flowattn_np"
# Modules whose own public functions and classes are documented (besides the package's).
MODULES = ("data", "train", "optim", "experiment", "experiment_mlp", "mlp", "layers", "network", "flows",
           "backend", "plotting", "random", "checkpoint", "files", "progress")
# Order of the sections: the order a student meets the modules in.
SECTION_ORDER = ("backend", "random", "ops", "attention", "models", "flows", "gradient_check", "mlp", "layers",
                 "network", "optim", "progress", "train", "checkpoint", "files", "data", "experiment",
                 "experiment_mlp", "plotting")

_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")


def _import(name):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(name)


def is_documentable(obj):
    return inspect.isfunction(obj) or inspect.isclass(obj)


def own_doc(obj):
    """The object's OWN docstring, cleaned ('' if none).

    Classes do not inherit ``__doc__``; a dataclass without a docstring gets an
    automatic one, ``Name(field, ...)``, which does not count.
    """
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return ""
    doc = inspect.cleandoc(doc)
    if inspect.isclass(obj) and doc.startswith(obj.__name__ + "("):
        return ""  # the dataclass default, not written by anyone
    return doc


def package_public_names(package=None):
    """Names of the package's public API: ``__all__`` if defined, else its public
    function/class attributes."""
    package = package or _import(PACKAGE)
    if hasattr(package, "__all__"):
        return list(package.__all__)
    return sorted(k for k, v in vars(package).items() if not k.startswith("_") and is_documentable(v))


def module_public_names(module):
    """Public functions and classes of a module (its ``__all__`` if defined)."""
    if hasattr(module, "__all__"):
        return [k for k in module.__all__ if is_documentable(getattr(module, k, None))]
    return [k for k, v in vars(module).items()
            if not k.startswith("_") and is_documentable(v) and v.__module__ == module.__name__]


def public_api():
    """All public names as a list of dicts: name, obj, home (module short name),
    exported (also ``flowattn_np.name``)."""
    package = _import(PACKAGE)
    modules = {m: _import(f"{PACKAGE}.{m}") for m in SECTION_ORDER}
    exported = set(package_public_names(package))
    entries = {}

    def home_of(name, obj):
        if is_documentable(obj) and obj.__module__.startswith(PACKAGE + "."):
            return obj.__module__.split(".", 1)[1]
        for m in SECTION_ORDER:  # a constant: the first module holding this very object
            if getattr(modules[m], name, None) is obj:
                return m
        return "__init__"

    for name in package_public_names(package):
        obj = getattr(package, name)
        entries[(home_of(name, obj), name)] = obj
    for m in MODULES:
        for name in module_public_names(modules[m]):
            obj = getattr(modules[m], name)
            entries.setdefault((home_of(name, obj), name), obj)
    out = []
    for (home, name), obj in entries.items():
        out.append({"name": name, "obj": obj, "home": home, "exported": name in exported
                    and getattr(package, name, None) is obj})
    names = [e["name"] for e in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RuntimeError(f"gen_api: public names defined in two modules: {dupes}; "
                           "headings must be unique")
    return out


def _signature(obj, drop_first=False):
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    if drop_first and params:
        params = params[1:]
    text = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
    return _ADDRESS.sub("", text)


def _line_of(obj, module, name):
    """Source line, so that entries come in the order of the module's source."""
    try:
        return inspect.getsourcelines(obj)[1]
    except (TypeError, OSError):
        src = inspect.getsource(module)
        m = re.search(rf"^{re.escape(name)}\s*[:=]", src, re.M)
        return src[:m.start()].count("\n") + 1 if m else 10**9


def _members(cls):
    """Public methods and properties of a class, own or inherited from package classes."""
    seen = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith(PACKAGE):
            continue
        for k, v in vars(klass).items():
            if k.startswith("_"):
                continue
            if isinstance(v, (staticmethod, classmethod, property)) or inspect.isfunction(v):
                seen[k] = (klass, v)
    rows = []
    for k, (klass, v) in seen.items():
        if isinstance(v, property):
            kind, sig, doc = "property", "", own_doc(v.fget) if v.fget else ""
        elif isinstance(v, staticmethod):
            kind, sig, doc = "staticmethod", _signature(v.__func__), own_doc(v.__func__)
        elif isinstance(v, classmethod):
            kind, sig, doc = "classmethod", _signature(v.__func__, drop_first=True), own_doc(v.__func__)
        else:
            kind, sig, doc = "method", _signature(v, drop_first=True), own_doc(v)
        try:
            line = inspect.getsourcelines(v.fget if isinstance(v, property) else
                                          getattr(v, "__func__", v))[1]
        except (TypeError, OSError):
            line = 10**9
        rows.append((klass is not cls, line, k, kind, sig, doc, klass.__name__))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return rows


def _fence(text, lang="text"):
    return f"```{lang}\n{text}\n```"


def _first_paragraph(doc):
    return doc.strip().split("\n\n")[0].replace("\n", " ") if doc else ""


def _entry(e, module):
    name, obj = e["name"], e["obj"]
    where = [f"`{PACKAGE}.{name}`"] if e["exported"] else []
    if e["home"] != "__init__":
        where.append(f"`{PACKAGE}.{e['home']}.{name}`")
    lines = [f"### {name}", ""]
    if inspect.isclass(obj):
        bases = [b for b in obj.__bases__ if b is not object]
        kind = "exception" if issubclass(obj, BaseException) else "class"
        base_txt = (" (bases: " + ", ".join(f"`{b.__name__}`" for b in bases) + ")") if bases else ""
        lines += [f"*{kind}*{base_txt}; import as " + " or ".join(where), ""]
        sig = _signature(obj)
        if sig != "(...)":  # exceptions take the message only
            lines += [_fence(f"{name}{sig}", "python"), ""]
    elif inspect.isfunction(obj):
        lines += ["*function*; import as " + " or ".join(where), ""]
        lines += [_fence(f"{name}{_signature(obj)}", "python"), ""]
    else:
        lines += [f"*constant* (`{type(obj).__name__}`); import as " + " or ".join(where), ""]
        value = pprint.pformat(obj, width=88, sort_dicts=False)
        lines += [_fence(_ADDRESS.sub("", f"{name} = {value}"), "python"), ""]
    doc = own_doc(obj) if is_documentable(obj) else ""
    if is_documentable(obj):
        lines += [_fence(doc) if doc else "*(no docstring)*", ""]
    if inspect.isclass(obj):
        for inherited, _, k, kind, sig, mdoc, owner in _members(obj):
            lines += [f"#### {name}.{k}", ""]
            note = f"*{kind}*" + (f", inherited from `{owner}`" if inherited else "")
            lines += [note, ""]
            if sig:
                lines += [_fence(f"{k}{sig}", "python"), ""]
            lines += [_fence(mdoc) if mdoc else "*(no docstring)*", ""]
    return lines


def render():
    """The text of docs/api.md."""
    api = public_api()
    sections = {}
    for e in api:
        sections.setdefault(e["home"], []).append(e)
    order = [m for m in SECTION_ORDER if m in sections] + sorted(set(sections) - set(SECTION_ORDER))
    out = [
        "# API reference",
        "",
        "<!-- Generated by docs/gen_api.py from the docstrings; do not edit by hand. -->",
        "<!-- Regenerate: python docs/gen_api.py (tests/test_docs.py checks it is current). -->",
        "",
        "The public names of `flowattn_np`: everything in `flowattn_np.__all__`, plus the public",
        "functions and classes of the modules " + ", ".join(f"`{m}`" for m in MODULES) + ".",
        "Each name sits under the module that defines it; names importable from the package",
        "itself say so. Signatures are shown without type annotations. The mathematics behind",
        "the names is in [math.md](math.md), the backward passes in [backward.md](backward.md).",
        "",
        "## Contents",
        "",
    ]
    for m in order:
        mod_name = PACKAGE if m == "__init__" else f"{PACKAGE}.{m}"
        names = sorted(sections[m], key=lambda e: _line_of(e["obj"], _import(mod_name), e["name"]))
        sections[m] = names
        links = ", ".join(f"[{e['name']}](#{e['name'].lower()})" for e in names)
        out.append(f"- `{mod_name}`: {links}")
    out.append("")
    for m in order:
        mod_name = PACKAGE if m == "__init__" else f"{PACKAGE}.{m}"
        module = _import(mod_name)
        out += [f"## {mod_name}", ""]
        summary = _first_paragraph(module.__doc__ or "")
        if summary:
            out += [summary, ""]
        for e in sections[m]:
            out += _entry(e, module)
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate docs/api.md from the docstrings.")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date")
    parser.add_argument("--out", default=str(API_MD), help="output file (default docs/api.md)")
    args = parser.parse_args(argv)
    text = render()
    path = Path(args.out)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {path} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
