"""Coursework: the graded assignments and an nbgrader course directory to teach them from.

The five assignments ship inside the package (``flowattn_np/assignments/*.ipynb``) as
nbgrader *source* notebooks: solutions between ``### BEGIN SOLUTION`` / ``### END
SOLUTION``, hidden tests between ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``,
points in the cell metadata.

    flowattn-np coursework init DIR      # DIR/source/<assignment>/<assignment>.ipynb + nbgrader_config.py
    cd DIR && nbgrader generate_assignment a1_linear_model   # student version in DIR/release/
    nbgrader autograde a1_linear_model                        # grades DIR/submitted/<student>/...

``student_notebook(src, dst)`` writes one student version with nbgrader's own
preprocessors (for a course site). Only these two need nbgrader
(``pip install "flowattn-np[coursework]"``); the assignments themselves do not, and a
student checks a notebook from a terminal with ``flowattn-np coursework check NB.ipynb``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ASSIGNMENTS = (
    "a1_linear_model",
    "a2_cross_attention_block",
    "a3_self_attention",
    "a4_splitting_and_normalisation",
    "a5_transformer_block",
)
"""The assignments, in course order (file stems of the source notebooks)."""

COURSE_ID = "flowattn_np"

NBGRADER_CONFIG = '''\
"""nbgrader configuration of a flowattn_np course (written by `flowattn-np coursework init`)."""

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = "{course_id}"
# the stub a student sees in place of each solution region
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# a notebook must run top to bottom well within this (seconds per cell)
c.ExecutePreprocessor.timeout = 300
# a failing test cell scores 0; it never stops the grading of the other cells
c.ExecutePreprocessor.interrupt_on_timeout = True
'''


class CourseworkError(ValueError):
    """A course directory cannot be created, or an assignment is unknown."""


def source_dir():
    """Folder of the assignments' source notebooks (inside the installed package)."""
    here = Path(__file__).resolve().parent / "assignments"
    if not here.is_dir():
        raise CourseworkError(f"the assignment notebooks are missing from the installation ({here})")
    return here


def assignment_path(name):
    """Path of the source notebook of assignment ``name`` (one of ASSIGNMENTS)."""
    if name not in ASSIGNMENTS:
        raise CourseworkError(f"assignment: unknown assignment {name!r}; known: {', '.join(ASSIGNMENTS)}")
    return source_dir() / f"{name}.ipynb"


def init_course(directory, assignments=None, course_id=COURSE_ID):
    """Create an nbgrader course directory: ``source/<name>/<name>.ipynb`` and nbgrader_config.py.

    ``directory`` must not exist or be empty; it is written all at once (a temporary
    sibling renamed into place), so a failure leaves nothing half-written. Returns
    the course directory as a Path.
    """
    directory = Path(directory)
    names = list(ASSIGNMENTS if assignments is None else assignments)
    paths = [assignment_path(n) for n in names]  # unknown names fail before any writing
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise CourseworkError(f"DIR: {directory} already exists and is not an empty folder")
    parent = directory.resolve().parent
    if not parent.is_dir():
        raise CourseworkError(f"DIR: the parent folder {parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=parent))
    try:
        for name, path in zip(names, paths):
            (tmp / "source" / name).mkdir(parents=True)
            shutil.copyfile(path, tmp / "source" / name / path.name)
        (tmp / "nbgrader_config.py").write_text(NBGRADER_CONFIG.format(course_id=course_id), encoding="utf-8")
        if directory.exists():
            directory.rmdir()
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _nbgrader():
    try:
        import nbgrader.preprocessors as pre
    except ImportError:
        raise CourseworkError(
            'nbgrader is not installed: pip install "flowattn-np[coursework]"') from None
    return pre


def student_notebook(src, dst):
    """Write the student version of the source notebook ``src`` to ``dst``.

    Uses nbgrader's own preprocessors, as ``nbgrader generate_assignment`` does:
    solutions become stubs (``raise NotImplementedError()`` / "YOUR ANSWER HERE"),
    hidden tests and outputs are removed. Needs nbgrader. Returns dst as a Path.
    """
    import nbformat

    pre = _nbgrader()
    nb = nbformat.read(str(src), as_version=4)
    resources = {}
    stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    for p in (pre.ClearSolutions(code_stub=stub, text_stub="YOUR ANSWER HERE"), pre.ClearHiddenTests(),
              pre.ClearOutput()):
        nb, resources = p.preprocess(nb, resources)
    dst = Path(dst)
    nbformat.write(nb, str(dst))
    return dst


@dataclass(frozen=True)
class CellOutcome:
    """One graded test cell of a run notebook: its grade id, points, whether it passed, the error."""

    grade_id: str
    points: float
    passed: bool
    message: str = ""


def check_notebook(path, timeout=600):
    """Run a student's notebook top to bottom (a failing cell does not stop it) and report
    each graded test cell: a list of CellOutcome. Only the tests in the notebook run
    (the student version has no hidden tests). Needs nbclient and ipykernel, not nbgrader.
    """
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        raise CourseworkError('running a notebook needs nbclient: pip install "flowattn-np[notebooks]"') from None
    path = Path(path)
    if not path.is_file():
        raise CourseworkError(f"NOTEBOOK: {path} is not a file")
    nb = nbformat.read(str(path), as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.resolve().parent)}}).execute()
    outcomes = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade"):
            continue
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        message = f"{errors[0].ename}: {errors[0].evalue}" if errors else ""
        outcomes.append(CellOutcome(meta.get("grade_id", "?"), float(meta.get("points", 0)), not errors, message))
    return outcomes


def _print_outcomes(outcomes):
    for o in outcomes:
        print(f"{'passed' if o.passed else 'FAILED'}  {o.grade_id} ({o.points:g} points)")
        if not o.passed:
            print("    " + o.message.replace("\n", "\n    "))
    got = sum(o.points for o in outcomes if o.passed)
    total = sum(o.points for o in outcomes)
    print(f"{got:g} of {total:g} points on the tests in this notebook "
          "(hidden tests and written answers are graded by your teacher)")
    return 0 if got == total else 1


# ---------------------------------------------------------------- command line


def add_parser(subparsers):
    """The ``coursework`` subcommand of the flowattn-np command line."""
    cw = subparsers.add_parser("coursework", help="graded assignments: create an nbgrader course directory",
                               description="Graded assignments (nbgrader). See docs/teaching.md.")
    cw.set_defaults(parser=cw)
    sub = cw.add_subparsers(dest="coursework_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="create DIR/source/<assignment>/ and DIR/nbgrader_config.py")
    init.add_argument("dir", metavar="DIR", help="the course directory to create (new or empty)")
    init.add_argument("--assignments", help=f"comma-separated subset of: {', '.join(ASSIGNMENTS)}")
    sub.add_parser("list", help="the assignments and where their source notebooks are")
    chk = sub.add_parser("check", help="run a notebook and report its graded tests (for students; no nbgrader)")
    chk.add_argument("notebook", metavar="NOTEBOOK", help="an assignment notebook (.ipynb)")
    return cw


def main(args, prog="flowattn-np"):
    """Run a parsed ``coursework`` command; returns the exit status."""
    try:
        if args.coursework_command == "list":
            for name in ASSIGNMENTS:
                print(f"{name}: {assignment_path(name)}")
            return 0
        if args.coursework_command == "check":
            return _print_outcomes(check_notebook(args.notebook))
        names = None if args.assignments is None else [s.strip() for s in args.assignments.split(",") if s.strip()]
        course = init_course(args.dir, names)
    except CourseworkError as exc:
        print(f"{prog} coursework: error: {exc}", file=sys.stderr)
        return 2
    made = ", ".join(sorted(p.name for p in (course / "source").iterdir()))
    print(f"Created the nbgrader course {course} with {made}.\n"
          f"Next: cd {course} && nbgrader generate_assignment {ASSIGNMENTS[0] if names is None else names[0]}")
    return 0
