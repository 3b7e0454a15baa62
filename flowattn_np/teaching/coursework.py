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

# the feedback a student gets: no hidden test (nbgrader's ClearHiddenTests, as for the
# release), and each error as its message alone (the checker's message), without the
# traceback that quotes the test's source and the checker's internals
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import ClearHiddenTests, GetGrades  # noqa: E402

from flowattn_np.teaching.coursework import ErrorMessagesOnly  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, CSSHTMLHeaderPreprocessor, ClearHiddenTests, ErrorMessagesOnly]
'''


class ErrorMessagesOnly:
    """An nbconvert preprocessor for ``nbgrader generate_feedback`` (set by ``coursework init``):
    every error output keeps only its one-line header ``ename: evalue``, which for a failed
    check is the checker's whole message, and loses its traceback, which quotes the test
    cell's source (hidden tests included) and the checker's internals."""

    enabled = True

    def __call__(self, nb, resources):
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output['ename']}: {output['evalue']}"]
        return nb, resources


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


CHECK_TIMEOUT = 300
"""Seconds a cell may run under ``coursework check`` before it is interrupted (``--timeout``)."""

MAX_NOTEBOOK_BYTES = 200 * 2 ** 20
"""A notebook larger than this is refused before it is read (outputs included)."""


@dataclass(frozen=True)
class CellOutcome:
    """One graded test cell of a run notebook: its grade id, points, whether it passed, the error."""

    grade_id: str
    points: float
    passed: bool
    message: str = ""


@dataclass(frozen=True)
class CheckReport:
    """A run notebook: an outcome per graded test cell, and the first error of any cell ("" if none)."""

    outcomes: list
    first_error: str = ""


def read_notebook(path):
    """The notebook at ``path`` (nbformat 4), validated before anything runs.

    A file that is not a notebook (binary, not JSON, JSON without cells, a cell that
    breaks the notebook format) is a CourseworkError naming the file and what is wrong.
    """
    import json

    import nbformat

    path = Path(path)
    if not path.is_file():
        raise CourseworkError(f"NOTEBOOK: {path} is not a file")
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        raise CourseworkError(f"NOTEBOOK: {path} is not a notebook: {path.stat().st_size} bytes, "
                              f"more than the {MAX_NOTEBOOK_BYTES} a notebook may have here")
    try:
        text = path.read_bytes().decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError:
        raise CourseworkError(f"NOTEBOOK: {path} is not a notebook: it is not UTF-8 text (a binary file?)") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        why = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "nested too deep"
        raise CourseworkError(f"NOTEBOOK: {path} is not a notebook: it is not JSON ({why})") from None
    if not isinstance(data, dict) or not {"cells", "nbformat"} <= set(data):
        found = ", ".join(map(repr, list(data)[:5])) if isinstance(data, dict) else type(data).__name__
        raise CourseworkError(f"NOTEBOOK: {path} is not a notebook: expected the keys 'cells' and 'nbformat', "
                              f"found {found or 'an empty object'}")
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path)
        raise CourseworkError(f"NOTEBOOK: {path} is not a valid notebook: {f'at {where}: ' if where else ''}"
                              f"{exc.message.splitlines()[0][:200]}") from None
    except Exception as exc:  # nbformat's own errors (a version it does not know, ...)
        raise CourseworkError(f"NOTEBOOK: {path} is not a valid notebook: {str(exc).splitlines()[0][:200]}") from None
    return nb


def graded_cells(nb, path="the notebook"):
    """[(cell index, grade_id, points)] of the graded code cells; a CourseworkError naming the
    cell when a ``points`` value is not a finite number >= 0."""
    import math

    found = []
    for index, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade"):
            continue
        grade_id, points = meta.get("grade_id", f"cell {index + 1}"), meta.get("points", 0)
        if isinstance(points, bool) or not isinstance(points, (int, float)) or not math.isfinite(points) \
                or points < 0:
            raise CourseworkError(f"NOTEBOOK: {path}: cell {index + 1} (grade_id {grade_id!r}) has points "
                                  f"{points!r}: expected a number >= 0")
        found.append((index, grade_id, float(points)))
    return found


def _cell_name(nb, index):
    """How a report names cell ``index``: its nbgrader grade_id, or its number and first line."""
    cell = nb.cells[index]
    grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
    if grade_id:
        return f"cell {index + 1} ({grade_id})"
    lines = [line.strip() for line in cell.source.splitlines() if line.strip() and not line.strip().startswith("#")]
    return f"cell {index + 1} (`{lines[0][:50]}`)" if lines else f"cell {index + 1}"


def _run_cells(nb, path, timeout):
    """Run every code cell in order (a failing cell does not stop it). {index: error text} of the
    cells that failed; after a timeout the cell is interrupted and the run goes on; after the
    kernel dies the cells not run are marked so."""
    import logging
    import subprocess

    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from nbclient.util import run_sync

    log = logging.getLogger("flowattn_np.teaching.coursework.kernel")  # nbclient's log lines say what the report says
    log.addHandler(logging.NullHandler())
    log.propagate = False
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True, log=log,
                            resources={"metadata": {"path": str(Path(path).resolve().parent)}})
    errors, dead = {}, None
    # the kernel's own stderr (e.g. its warning about TCP transport) is not the student's output
    with client.setup_kernel(stderr=subprocess.DEVNULL):
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if dead is not None:
                errors[index] = f"not run: the kernel died while running {dead}"
                continue
            try:
                client.execute_cell(cell, index)
            except CellTimeoutError:
                errors[index] = f"TimeoutError: the cell ran longer than {timeout:g} s (--timeout) and was interrupted"
                _interrupt_and_wait(client, run_sync)  # then the run goes on with the next cell
            except DeadKernelError:
                dead = _cell_name(nb, index)
                errors[index] = ("DeadKernelError: the kernel died while running this cell (a crash, os._exit "
                                 "or running out of memory); the cells after it were not run")
            else:
                shown = [o for o in cell.get("outputs", []) if o.output_type == "error"]
                if shown:
                    errors[index] = f"{shown[0].ename}: {shown[0].evalue}"
                elif cell.get("execution_count") is None:  # an execute request the kernel aborted
                    errors[index] = "not run: the kernel skipped this cell"
    return errors


def _interrupt_and_wait(client, run_sync, seconds=30):
    """Interrupt the kernel and wait until it answers again (the interrupted cell has ended),
    so that the next cell is not sent into the queue the kernel aborts after the interrupt."""
    from queue import Empty

    run_sync(client.km.interrupt_kernel)()
    msg_id = client.kc.kernel_info()
    try:
        while True:
            reply = run_sync(client.kc.shell_channel.get_msg)(timeout=seconds)
            if reply["parent_header"].get("msg_id") == msg_id:
                return
    except Empty:
        return


def check_notebook(path, timeout=CHECK_TIMEOUT):
    """Run a student's notebook top to bottom (a failing cell does not stop it) and report each
    graded test cell: a CheckReport. The notebook and its points are checked before anything
    runs; a cell running longer than ``timeout`` seconds is interrupted; a kernel that dies
    leaves the tests after it reported as not run. Only the tests in the notebook run (the
    student version has no hidden tests). Needs nbclient and ipykernel, not nbgrader.
    """
    try:
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401
    except ImportError:
        raise CourseworkError('running a notebook needs nbclient: pip install "flowattn-np[notebooks]"') from None
    nb = read_notebook(path)
    graded = graded_cells(nb, path)
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        raise CourseworkError("no python3 Jupyter kernel to run the notebook: pip install ipykernel") from None
    errors = _run_cells(nb, path, timeout)
    outcomes = [CellOutcome(grade_id, points, index not in errors, errors.get(index, ""))
                for index, grade_id, points in graded]
    first = min(errors, default=None)
    return CheckReport(outcomes, "" if first is None else f"{_cell_name(nb, first)}: {errors[first]}")


def _print_report(report, name=None):
    if report.first_error:
        print(f"first error: {report.first_error}".replace("\n", "\n    "))
    for o in report.outcomes:
        print(f"{'passed' if o.passed else 'FAILED'}  {o.grade_id} ({o.points:g} points)")
        if not o.passed:
            print("    " + o.message.replace("\n", "\n    "))
    got = sum(o.points for o in report.outcomes if o.passed)
    total = sum(o.points for o in report.outcomes)
    print(f"{got:g} of {total:g} points on the tests in this notebook "
          "(hidden tests and written answers are graded by your teacher)")
    return 0 if got == total else 1


def find_assignments(directory):
    """{assignment: notebook path} of the assignments in ``directory``: ``NAME.ipynb`` or
    ``NAME/NAME.ipynb`` for each NAME of ASSIGNMENTS; a CourseworkError when there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CourseworkError(f"DIR: {directory} is not a folder")
    found = {}
    for name in ASSIGNMENTS:
        for candidate in (directory / f"{name}.ipynb", directory / name / f"{name}.ipynb"):
            if candidate.is_file():
                found[name] = candidate
                break
    if not found:
        raise CourseworkError(f"DIR: {directory} holds no assignment notebook (NAME.ipynb or NAME/NAME.ipynb "
                              f"for NAME one of {', '.join(ASSIGNMENTS)})")
    return found


def status(directory, timeout=CHECK_TIMEOUT):
    """Check every assignment notebook in ``directory``: {assignment: CheckReport}. Every
    notebook is read and its points checked before any runs."""
    found = find_assignments(directory)
    for path in found.values():
        graded_cells(read_notebook(path), path)
    return {name: check_notebook(path, timeout) for name, path in found.items()}


def _print_status(reports):
    width = max(len(o.grade_id) for r in reports.values() for o in r.outcomes) if reports else 4
    width = max(width, 4)
    print(f"{'assignment':32s} {'test':{width}s} {'points':>6s}  result")
    for name, report in reports.items():
        for o in report.outcomes:
            print(f"{name:32s} {o.grade_id:{width}s} {o.points:6g}  {'passed' if o.passed else 'FAILED'}")
        got = sum(o.points for o in report.outcomes if o.passed)
        total = sum(o.points for o in report.outcomes)
        print(f"{name:32s} {'total':{width}s} {f'{got:g}/{total:g}':>6s}"
              + (f"  first error: {report.first_error.splitlines()[0]}" if report.first_error else ""))
    return 0 if all(o.passed for r in reports.values() for o in r.outcomes) else 1


# ---------------------------------------------------------------- command line


def add_parser(subparsers):
    """The ``coursework`` subcommand of the flowattn-np command line."""
    import argparse

    from flowattn_np.links import page_url

    cw = subparsers.add_parser("coursework", help="graded assignments: create an nbgrader course directory",
                               description=f"Graded assignments (nbgrader). See\n{page_url('teaching')}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)  # the address unbroken
    cw.set_defaults(parser=cw)
    sub = cw.add_subparsers(dest="coursework_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="create DIR/source/<assignment>/ and DIR/nbgrader_config.py")
    init.add_argument("dir", metavar="DIR", help="the course directory to create (new or empty)")
    init.add_argument("--assignments", help=f"comma-separated subset of: {', '.join(ASSIGNMENTS)}")
    sub.add_parser("list", help="the assignments and where their source notebooks are")
    chk = sub.add_parser("check", help="run a notebook and report its graded tests (for students; no nbgrader)")
    chk.add_argument("notebook", metavar="NOTEBOOK", help="an assignment notebook (.ipynb)")
    st = sub.add_parser("status", help="run every assignment notebook in DIR and print all their tests in one table")
    st.add_argument("dir", metavar="DIR", help="a folder holding NAME.ipynb or NAME/NAME.ipynb per assignment")
    for action in (chk, st):
        action.add_argument("--timeout", type=_seconds, default=CHECK_TIMEOUT, metavar="SECONDS",
                            help=f"interrupt a cell that runs longer than this (default {CHECK_TIMEOUT})")
    return cw


def _seconds(text):
    """argparse type of --timeout: a finite number of seconds > 0."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def run_command(args, prog="flowattn-np"):
    """Run a parsed ``coursework`` command; returns the exit status."""
    try:
        if args.coursework_command == "list":
            for name in ASSIGNMENTS:
                print(f"{name}: {assignment_path(name)}")
            return 0
        if args.coursework_command == "check":
            return _print_report(check_notebook(args.notebook, args.timeout))
        if args.coursework_command == "status":
            return _print_status(status(args.dir, args.timeout))
        names = None if args.assignments is None else [s.strip() for s in args.assignments.split(",") if s.strip()]
        course = init_course(args.dir, names)
    except (CourseworkError, OSError) as exc:
        print(f"{prog} coursework: error: {exc}", file=sys.stderr)
        return 2
    made = ", ".join(sorted(p.name for p in (course / "source").iterdir()))
    print(f"Created the nbgrader course {course} with {made}.\n"
          f"Next: cd {course} && nbgrader generate_assignment {ASSIGNMENTS[0] if names is None else names[0]}")
    return 0
