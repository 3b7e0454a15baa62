"""The graded assignments and the teacher's workflow, with nbgrader's own commands.

One course directory is made for the whole module (``flowattn_np.teaching.coursework.init_course``),
``nbgrader generate_assignment`` writes the student versions, and one ``nbgrader
autograde`` run grades every submission at once:

* ``instructor``: the source notebooks themselves: every autograded cell scores full marks;
* ``blank``: the untouched student versions: 0 everywhere, and the grader does not crash;
* one seeded buggy student per diagnosed mistake (``BUGS``): exactly the tests that the
  bug affects lose their points, and the checker's message in the graded notebook names
  the mistake.

The student versions are searched for every solution line and every hidden test line.
Each source notebook also runs top to bottom in a kernel where nbgrader cannot be imported
(a student needs only the package), and its wall time is recorded.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import jupytext
import pytest

from flowattn_np.teaching import coursework

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "notebooks" / "assignments"
NAMES = coursework.ASSIGNMENTS
MAX_SECONDS = 120  # each instructor notebook, top to bottom, on a 2-core CI machine


@dataclass(frozen=True)
class Bug:
    """A seeded mistake: replace ``old`` by ``new`` in a solution; the tests it must fail."""

    student: str
    assignment: str
    old: str
    new: str
    failing: frozenset
    diagnosis: str


A1, A2, A3, A4, A5 = NAMES
BUGS = (
    Bug("sign_of_C_theta", A1, "residual = softmax(Z @ theta.T) - C", "residual = softmax(Z @ theta.T) + C",
        frozenset({"test_grad_Z", "test_grad_Z_finite_differences", "test_use_gradcheck"}),
        "sign of - C theta flipped"),
    # grad_Z and grad_theta call the student's softmax: their tests fail with it
    Bug("softmax_wrong_axis", A1, "S.max(axis=-1, keepdims=True)\n    e = np.exp(shifted)\n    return e / e.sum(axis=-1",
        "S.max(axis=0, keepdims=True)\n    e = np.exp(shifted)\n    return e / e.sum(axis=0",
        frozenset({"test_softmax", "test_softmax_large_logits", "test_grad_Z", "test_grad_Z_finite_differences",
                   "test_use_gradcheck", "test_grad_theta"}),
        "softmax over the wrong axis"),
    Bug("no_max_shift", A1, "shifted = S - S.max(axis=-1, keepdims=True)", "shifted = S",
        frozenset({"test_softmax_large_logits"}), "missing max-shift"),
    Bug("in_place", A1, "shifted = S - S.max(axis=-1, keepdims=True)",
        "S -= S.max(axis=-1, keepdims=True)\n    shifted = S",
        frozenset({"test_softmax", "test_softmax_large_logits"}), "in-place mutation of an input"),
    Bug("grad_theta_transpose", A1, "return G.T @ Z", "return Z.T @ G",
        frozenset({"test_grad_theta"}), "missing transpose"),
    # the network's gradients use the block's backward; its training still succeeds with the
    # wrong gradient (Adam on a 2-D problem is forgiving), so the training test awards its
    # points only after a finite-difference check of the network's gradients
    Bug("softmax_vjp_sign", A2, "S_bar = fa.softmax_vjp(P, -h * G)", "S_bar = fa.softmax_vjp(P, h * G)",
        frozenset({"test_block_backward_Z", "test_block_backward_theta", "test_network", "test_training"}),
        "sign of the softmax VJP flipped"),
    # log of a softmax: right at ordinary logits, NaN where a probability underflows to 0
    Bug("log_of_softmax", A1, "return -(C * logits).sum() + logsumexp(logits).sum()",
        "return -(C * np.log(softmax(logits))).sum()", frozenset({"test_cross_entropy"}),
        "underflow: log of a softmax"),
    Bug("sa_adjoint_transpose", A3, "return scores.swapaxes(-1, -2) @ Y", "return scores @ Y",
        frozenset({"test_SA_adjoint", "test_grad_Z", "test_grad_Z_finite_differences"}),
        "missing transpose in SA*"),
    Bug("missing_label_term", A3, "return SA(Z, theta) + SA_adjoint(Z, theta) - label_term",
        "return SA(Z, theta) + SA_adjoint(Z, theta)",
        frozenset({"test_grad_Z", "test_grad_Z_finite_differences"}), "missing - (C + C^T) Z theta"),
    Bug("retract_vjp_projection", A4,
        "return (r / norms) * (Y_bar - unit * (unit * Y_bar).sum(axis=-1, keepdims=True))",
        "return (r / norms) * Y_bar", frozenset({"test_retract_vjp"}), "missing tangent projection"),
    # the block's backward and the network's training use the oracle's backward
    Bug("gelu_derivative", A5, "A_bar = (Y_bar @ W2) * gelu_grad(A)", "A_bar = Y_bar @ W2",
        frozenset({"test_oracle_backward_Z", "test_oracle_backward_weights", "test_block_backward_Z",
                   "test_block_backward_params", "test_training"}), "missing activation derivative"),
    Bug("oracle_at_Z", A5, "oracle_forward(Z_half, W1, b1, W2, b2)", "oracle_forward(Z, W1, b1, W2, b2)",
        frozenset({"test_block_forward", "test_block_backward_Z", "test_block_backward_params", "test_training"}),
        "oracle evaluated at Z"),
)


# A "copying" submission: each function the student writes returns what a reference computes,
# reached as a student would (fa.*, an alias imported in the function, checks.reference_*).
# Every test that checks one of these functions must score 0 and say why; the tests that grade
# something else (a1's use of fa.gradcheck, a3's training, a4's measured orders) keep their points.
COPYING = {
    A1: ({"softmax": "return fa.softmax(S)", "logsumexp": "return fa.logsumexp(S)",
          "cross_entropy": "return fa.linear_loss(Z, theta, C)",
          "grad_Z": "from flowattn_np import linear_grad_Z as copied\n    return copied(Z, theta, C)",
          "grad_theta": "return fa.linear_grad_theta(Z, theta, C)"},
         {"test_softmax", "test_softmax_large_logits", "test_logsumexp", "test_cross_entropy", "test_grad_Z",
          "test_grad_Z_finite_differences", "test_grad_theta"}),
    A2: ({"block_forward": "return checks.reference_ca_block(Z, theta, C, h), (Z, theta, C, h)",
          "block_backward": "return checks.reference_ca_block_vjp(Z_bar, *cache)",
          "network_loss_and_grads": "return checks.reference_network(X, y, theta, h, L)"},
         {"test_block_forward", "test_block_backward_Z", "test_block_backward_theta", "test_block_backward_h",
          "test_network", "test_training"}),
    A3: ({"SA": "return fa.self_attention(Z, theta)", "SA_adjoint": "return fa.self_attention_adjoint(Z, theta)",
          "grad_Z": "return fa.quadratic_grad_Z(Z, theta, C)", "grad_phi": "return fa.quadratic_grad_phi(Z, phi, C)"},
         {"test_SA", "test_SA_adjoint", "test_grad_Z", "test_grad_Z_finite_differences", "test_grad_phi"}),
    A4: ({"rk4_attention": "return checks.reference_rk4_attention(Z, theta, t)",
          "lie_step": "return checks.reference_lie_step(Z, theta, C, h)",
          "strang_step": "return checks.reference_strang_step(Z, theta, C, h)",
          "retract": "return fa.retract(Z, r)", "retract_vjp": "return fa.retract_vjp(Z, Y_bar, r)"},
         {"test_rk4_attention", "test_lie_step", "test_strang_step", "test_retract", "test_retract_vjp"}),
    A5: ({"gelu": "return fa.gelu(x)", "gelu_grad": "return fa.gelu_grad(x)",
          "oracle_forward": "return checks.reference_mlp_oracle(Z, W1, b1, W2, b2), (Z, W1, b1, W2, b2)",
          "oracle_backward": "return checks.reference_mlp_oracle_vjp(C_bar, *cache)",
          "block_forward": "return checks.reference_mlp_block(Z, theta, h, W1, b1, W2, b2), (Z, theta, h, W1, b1, W2, b2)",
          "block_backward": "return checks.reference_mlp_block_vjp(Z_bar, *cache)"},
         {"test_gelu", "test_gelu_grad", "test_oracle_forward", "test_oracle_backward_Z",
          "test_oracle_backward_weights", "test_block_forward", "test_block_backward_Z", "test_block_backward_params",
          "test_training"}),
}


def copying(name):
    """The instructor notebook of ``name`` with each function of COPYING's solutions replaced by its copy."""
    copies = COPYING[name][0]
    nb = nbformat.read(str(SOURCES / f"{name}.ipynb"), as_version=4)
    done = set()
    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.metadata.get("nbgrader", {}).get("solution"):
            continue
        out, function, skipping = [], None, False
        for line in cell.source.splitlines():
            match = re.match(r"def (\w+)\(", line)
            function = match.group(1) if match else function
            if line.strip() == "### BEGIN SOLUTION" and function in copies:
                out.append("    " + copies[function])
                done.add(function)
                skipping = True
            elif line.strip() == "### END SOLUTION" and skipping:
                skipping = False
            elif not skipping:
                out.append(line)
        cell.source = "\n".join(out)
    assert done == set(copies), f"{name}: no solution found for {set(copies) - done}"
    return nb


def kernel_env(extra_path=()):
    """Environment for nbgrader and its kernels: this checkout importable, plotting headless."""
    env = dict(os.environ)
    parts = [*map(str, extra_path), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["MPLBACKEND"] = "Agg"
    return env


def run_nbgrader(course, *args):
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=kernel_env(),
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def grade_cells(nb):
    """{grade_id: cell} of the cells nbgrader grades."""
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade")}


def regions(source, begin, end):
    """The lines strictly between the markers ``begin`` and ``end`` (stripped, non-empty)."""
    out, inside = [], False
    for line in source.splitlines():
        s = line.strip()
        if s == begin:
            inside = True
        elif s == end:
            inside = False
        elif inside and s:
            out.append(s)
    return out


def submit(course, student, name, nb):
    folder = course / "submitted" / student / name
    folder.mkdir(parents=True)
    nbformat.write(nb, str(folder / f"{name}.ipynb"))


def seeded(bug):
    """The instructor notebook with ``bug`` planted in its solution."""
    nb = nbformat.read(str(SOURCES / f"{bug.assignment}.ipynb"), as_version=4)
    hits = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution") and bug.old in c.source]
    assert len(hits) == 1, f"{bug.student}: {bug.old!r} is not in exactly one solution cell"
    hits[0].source = hits[0].source.replace(bug.old, bug.new)
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course directory, generated, submitted (instructor, blank, one per bug) and autograded once."""
    course = coursework.init_course(tmp_path_factory.mktemp("course") / "flowattn_course")
    run_nbgrader(course, "generate_assignment", "*")
    for name in NAMES:
        submit(course, "instructor", name, nbformat.read(str(SOURCES / f"{name}.ipynb"), as_version=4))
        submit(course, "blank", name, nbformat.read(str(course / "release" / name / f"{name}.ipynb"), as_version=4))
    for bug in BUGS:
        submit(course, bug.student, bug.assignment, seeded(bug))
    for name in NAMES:
        submit(course, "copying", name, copying(name))
    start = time.perf_counter()
    run_nbgrader(course, "autograde", "*")
    print(f"\nautograde of {len(NAMES) * 3 + len(BUGS)} submissions: {time.perf_counter() - start:.1f} s")
    return course


@pytest.fixture(scope="module")
def feedback(course):
    """The course after one ``nbgrader generate_feedback`` of every graded submission."""
    run_nbgrader(course, "generate_feedback", "*")
    return course


def html_text(path):
    """The text a reader sees in an HTML file: tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def scores(course, student, name):
    """{grade_id: (auto_score, max_score, needs_manual_grade)} from nbgrader's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        nb = gb.find_submission_notebook(name, name, student)
        return {g.name: (g.auto_score, g.max_score, g.needs_manual_grade, g.cell_type) for g in nb.grades}


def graded_output(course, student, name, grade_id):
    """Every output text of one graded cell in the autograded notebook."""
    nb = nbformat.read(str(course / "autograded" / student / name / f"{name}.ipynb"), as_version=4)
    return json.dumps(grade_cells(nb)[grade_id].get("outputs", []))


# ---------------------------------------------------------------- the source notebooks


@pytest.mark.parametrize("name", NAMES)
def test_source_pair_is_in_sync_with_its_nbgrader_metadata(name):
    py = jupytext.read(SOURCES / f"{name}.py")
    nb = nbformat.read(str(SOURCES / f"{name}.ipynb"), as_version=4)
    assert len(py.cells) == len(nb.cells)
    for i, (a, b) in enumerate(zip(py.cells, nb.cells)):
        assert (a.cell_type, a.source.strip()) == (b.cell_type, b.source.strip()), f"{name}: cell {i} differs"
        assert a.metadata.get("nbgrader") == b.metadata.get("nbgrader"), f"{name}: cell {i} metadata differs"
    for cell in nb.cells:
        assert cell.cell_type == "markdown" or (cell.outputs == [] and cell.execution_count is None)


@pytest.mark.parametrize("name", NAMES)
def test_source_has_solutions_hidden_tests_points_and_written_answers(name):
    nb = nbformat.read(str(SOURCES / f"{name}.ipynb"), as_version=4)
    meta = [c.metadata["nbgrader"] for c in nb.cells if "nbgrader" in c.metadata]
    ids = [m["grade_id"] for m in meta]
    assert len(ids) == len(set(ids)), "grade_ids must be unique"
    tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"]
    written = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "markdown"]
    assert tests and written
    assert all(c.metadata["nbgrader"]["locked"] and c.metadata["nbgrader"]["points"] > 0 for c in tests)
    assert any("### BEGIN HIDDEN TESTS" in c.source for c in tests)
    for c in nb.cells:
        m = c.metadata.get("nbgrader", {})
        if m.get("solution") and c.cell_type == "code":
            assert "### BEGIN SOLUTION" in c.source and "### END SOLUTION" in c.source


def test_every_assignment_ships_in_the_package():
    shipped = sorted(p.stem for p in coursework.source_dir().glob("*.ipynb"))
    assert shipped == sorted(NAMES)
    assert [coursework.assignment_path(n).exists() for n in NAMES] == [True] * len(NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_instructor_notebook_runs_top_to_bottom_without_nbgrader(name, tmp_path, record_property):
    """All visible and hidden tests pass; a kernel where `import nbgrader` fails is enough."""
    import nbclient

    blocker = tmp_path / "nbgrader"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('nbgrader is not installed')\n")
    nb = nbformat.read(str(SOURCES / f"{name}.ipynb"), as_version=4)
    saved = dict(os.environ)
    os.environ.update(kernel_env(extra_path=[tmp_path]))
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        start = time.perf_counter()
        client.execute()  # raises CellExecutionError if any cell (any test) fails
        seconds = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)
    record_property("seconds", round(seconds, 1))
    print(f"\n{name}: {seconds:.1f} s")
    assert seconds < MAX_SECONDS
    assert "passed" in json.dumps([c.get("outputs") for c in nb.cells if c.cell_type == "code"])


# ---------------------------------------------------------------- the student versions


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_student_version_has_stubs_and_no_solution_or_hidden_test(course, name):
    source = nbformat.read(str(SOURCES / f"{name}.ipynb"), as_version=4)
    student = nbformat.read(str(course / "release" / name / f"{name}.ipynb"), as_version=4)
    text = "\n".join(c.source for c in student.cells)
    lines = {line.strip() for line in text.splitlines()}
    secret = []
    for c in source.cells:
        m = c.metadata.get("nbgrader", {})
        secret += regions(c.source, "### BEGIN SOLUTION", "### END SOLUTION")
        secret += regions(c.source, "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
        if m.get("solution") and c.cell_type == "markdown":
            secret += [s.strip() for s in c.source.splitlines() if s.strip()]
    assert len(secret) > 20
    leaked = [line for line in secret if line in lines]
    assert not leaked, f"{name}: the student version contains {leaked}"
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    solutions = [c for c in student.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert all("raise NotImplementedError" in c.source for c in solutions if c.cell_type == "code")
    assert all(c.source.strip() == "YOUR ANSWER HERE" for c in solutions if c.cell_type == "markdown")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_student_notebook_function_matches_generate_assignment(course, name, tmp_path):
    mine = coursework.student_notebook(SOURCES / f"{name}.ipynb", tmp_path / f"{name}.ipynb")
    ours = [(c.cell_type, c.source) for c in nbformat.read(str(mine), as_version=4).cells]
    release = nbformat.read(str(course / "release" / name / f"{name}.ipynb"), as_version=4)
    assert ours == [(c.cell_type, c.source) for c in release.cells]


# ---------------------------------------------------------------- grading


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_instructor_submission_gets_full_marks(course, name):
    grades = scores(course, "instructor", name)
    auto = {k: v for k, v in grades.items() if v[3] == "code"}
    assert auto and all(score == top for score, top, _, _ in auto.values()), auto
    # written answers wait for a person
    assert all(manual for _, _, manual, kind in grades.values() if kind == "markdown")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_untouched_student_version_scores_zero(course, name):
    grades = scores(course, "blank", name)
    assert grades and all(score == 0 for score, _, _, _ in grades.values()), grades
    assert "NotImplementedError" in graded_output(course, "blank", name, next(iter(grade_cells(
        nbformat.read(str(SOURCES / f"{name}.ipynb"), as_version=4)))))


@pytest.mark.slow
@pytest.mark.parametrize("bug", BUGS, ids=[b.student for b in BUGS])
def test_a_seeded_mistake_loses_exactly_its_tests_and_is_named(course, bug):
    grades = scores(course, bug.student, bug.assignment)
    lost = {k for k, (score, top, _, kind) in grades.items() if kind == "code" and score < top}
    kept = {k for k, (score, top, _, kind) in grades.items() if kind == "code" and score == top}
    assert lost == bug.failing
    assert kept and not kept & bug.failing
    first = next(k for k in grade_cells(nbformat.read(str(SOURCES / f"{bug.assignment}.ipynb"), as_version=4))
                 if k in bug.failing)
    message = graded_output(course, bug.student, bug.assignment, first)
    assert "CheckFailure" in message and f"Diagnosis - {bug.diagnosis}" in message, message[:2000]
    if bug.diagnosis.startswith("underflow"):
        assert "missing max-shift" not in message, message[:2000]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_a_copying_submission_scores_zero_on_the_tests_of_what_it_copied_and_is_told_why(feedback, name):
    """Functions that call the package's references (the answer key) score 0 on their tests under
    nbgrader autograde; the graded notebook and the feedback page say what was called."""
    grades = scores(feedback, "copying", name)
    lost = {k for k, (score, top, _, kind) in grades.items() if kind == "code" and score < top}
    assert lost == COPYING[name][1]
    assert all(grades[k][0] == 0 for k in lost), grades
    for grade_id in lost:
        message = graded_output(feedback, "copying", name, grade_id)
        assert "ReferenceCalled" in message and "out of reach while your function is checked" in message, \
            (grade_id, message[:2000])
    text = html_text(feedback / "feedback" / "copying" / name / f"{name}.html")
    assert "ReferenceCalled: " in text and "which computes (part of) the reference of this exercise" in text


@pytest.mark.slow
@pytest.mark.parametrize("student,name", [("blank", n) for n in NAMES] + [(b.student, b.assignment) for b in BUGS],
                         ids=[f"blank-{n}" for n in NAMES] + [b.student for b in BUGS])
def test_feedback_shows_the_checkers_message_and_no_hidden_test(feedback, student, name):
    """What a student reads: each failed test's message, no line of a hidden test, no traceback."""
    source = nbformat.read(str(SOURCES / f"{name}.ipynb"), as_version=4)
    released = nbformat.read(str(feedback / "release" / name / f"{name}.ipynb"), as_version=4)
    visible = {line.strip() for c in released.cells for line in c.source.splitlines()}
    hidden = {line for c in source.cells for line in regions(c.source, "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")}
    text = html_text(feedback / "feedback" / student / name / f"{name}.html")
    assert hidden - visible, name
    shown = [line for line in hidden - visible if line in text]
    assert not shown, f"{student}/{name}: the feedback shows hidden-test lines {shown[:3]}"
    assert "Traceback (most recent call last)" not in text and "checks.py" not in text
    assert "HIDDEN TESTS" not in text
    bug = next((b for b in BUGS if b.student == student), None)
    if bug is not None:
        assert "CheckFailure: " in text and f"Diagnosis - {bug.diagnosis}" in text
    else:
        assert "NotImplementedError" in text


# ---------------------------------------------------------------- course directory


def test_init_course_writes_the_nbgrader_layout(tmp_path):
    course = coursework.init_course(tmp_path / "course", ["a1_linear_model"])
    assert sorted(p.relative_to(course).as_posix() for p in course.rglob("*") if p.is_file()) == [
        "nbgrader_config.py", "source/a1_linear_model/a1_linear_model.ipynb"]
    config = (course / "nbgrader_config.py").read_text()
    assert "c.CourseDirectory.course_id" in config and "NotImplementedError" in config
    compile(config, "nbgrader_config.py", "exec")


def test_init_course_refuses_a_non_empty_folder_and_unknown_names_writing_nothing(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(coursework.CourseworkError, match="already exists"):
        coursework.init_course(full)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    with pytest.raises(coursework.CourseworkError, match="unknown assignment 'a9'"):
        coursework.init_course(tmp_path / "new", ["a1_linear_model", "a9"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no temporary folder left either


def test_cli_coursework_init_and_its_error_line(tmp_path, capsys):
    from flowattn_np.cli import main

    assert main(["coursework", "init", str(tmp_path / "c"), "--assignments", "a3_self_attention"]) == 0
    assert (tmp_path / "c" / "source" / "a3_self_attention" / "a3_self_attention.ipynb").exists()
    assert "nbgrader generate_assignment a3_self_attention" in capsys.readouterr().out
    assert main(["coursework", "init", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowattn-np coursework: error: DIR:")
    assert main(["coursework", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(n in listed for n in NAMES)


def test_the_points_in_docs_teaching_md_are_the_notebooks_points():
    table = (ROOT / "docs" / "teaching.md").read_text(encoding="utf-8")
    for name in NAMES:
        nb = nbformat.read(str(SOURCES / f"{name}.ipynb"), as_version=4)
        graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        auto = sum(c.metadata["nbgrader"]["points"] for c in graded if c.cell_type == "code")
        written = sum(c.metadata["nbgrader"]["points"] for c in graded if c.cell_type == "markdown")
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert row.rstrip().endswith(f"| {auto:g} + {written:g} |"), (name, auto, written)


def test_assignment_sources_are_linted_like_the_package():
    """Undefined names, unused imports and syntax errors in an assignment fail like in the code."""
    paths = [str(p) for p in sorted(SOURCES.glob("*.py"))]
    assert len(paths) == len(NAMES)
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *paths],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_a_student_checks_a_notebook_from_the_terminal(tmp_path, capsys, monkeypatch):
    """`flowattn-np coursework check NB`: runs the notebook (no nbgrader), one line per graded test."""
    from flowattn_np.cli import main

    for key, value in kernel_env().items():
        monkeypatch.setenv(key, value)
    bug = BUGS[0]
    path = tmp_path / f"{bug.assignment}.ipynb"
    nbformat.write(seeded(bug), str(path))
    assert main(["coursework", "check", str(path)]) == 1
    out = capsys.readouterr().out
    failed = {line.split()[1] for line in out.splitlines() if line.startswith("FAILED")}
    passed = {line.split()[1] for line in out.splitlines() if line.startswith("passed")}
    assert failed == bug.failing and passed and not passed & failed
    assert f"Diagnosis - {bug.diagnosis}" in out and "11 of 18 points" in out
    assert main(["coursework", "check", str(tmp_path / "missing.ipynb")]) == 2
    assert "error: NOTEBOOK:" in capsys.readouterr().err


# ---------------------------------------------------------------- coursework check and status on small notebooks


def tiny_notebook(path, *cells):
    """Write a notebook of code cells; a cell given as (source, grade_id, points) is a graded test."""
    from nbformat.v4 import new_code_cell, new_notebook

    out = []
    for cell in cells:
        if isinstance(cell, str):
            out.append(new_code_cell(cell))
            continue
        source, grade_id, points = cell
        graded = new_code_cell(source)
        graded.metadata["nbgrader"] = {"grade": True, "grade_id": grade_id, "locked": True, "points": points,
                                       "schema_version": 3, "solution": False, "task": False}
        out.append(graded)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(new_notebook(cells=out), version=nbformat.NO_CONVERT), encoding="utf-8")
    return path


def run_cli(monkeypatch, capfd, *argv):
    """(exit status, stdout, stderr) of the command line, the kernel's own output included."""
    from flowattn_np.cli import main

    for key, value in kernel_env().items():
        monkeypatch.setenv(key, value)
    status = main(list(argv))
    out, err = capfd.readouterr()
    return status, out, err


@pytest.mark.slow
@pytest.mark.parametrize("stall,first", [
    ("import time\ntime.sleep(120)\ny = 2", "cell 3 (`import time`): TimeoutError: the cell ran longer than 2 s"),
    ("import os\nos._exit(0)\ny = 2", "cell 3 (`import os`): DeadKernelError: the kernel died"),
    ("y = undefined_name", "cell 3 (`y = undefined_name`): NameError: name 'undefined_name' is not defined"),
], ids=["timeout", "dead_kernel", "first_error"])
def test_check_reports_every_test_and_the_first_error(tmp_path, monkeypatch, capfd, stall, first):
    """A cell that never ends is interrupted after --timeout, a kernel that dies leaves the tests
    after it reported as not run, and the first error is named where it happened (not only the
    NameError it causes later); the kernel's own warnings (TCP transport) are not printed."""
    path = tiny_notebook(tmp_path / "nb.ipynb", "x = 1", ("assert x == 1", "test_before", 1), stall,
                         ("assert y == 2", "test_after", 2))
    start = time.perf_counter()
    status, out, err = run_cli(monkeypatch, capfd, "coursework", "check", str(path), "--timeout", "2")
    assert time.perf_counter() - start < 60
    assert status == 1 and err == "", err
    lines = out.splitlines()
    assert lines[0].startswith(f"first error: {first}"), out
    assert "passed  test_before (1 points)" in lines and "FAILED  test_after (2 points)" in lines
    after = lines[lines.index("FAILED  test_after (2 points)") + 1]
    assert ("not run: the kernel died while running cell 3" in after) == ("os._exit" in stall), after
    assert lines[-1].startswith("1 of 3 points")


@pytest.mark.parametrize("content,why", [
    ('{"foo": 1}', "is not a notebook: expected the keys 'cells' and 'nbformat', found 'foo'"),
    (bytes(range(256)), "is not a notebook: it is not UTF-8 text"),
    ("[1, 2", "is not a notebook: it is not JSON"),
    ('{"cells": [{"cell_type": "code"}], "nbformat": 4, "nbformat_minor": 5, "metadata": {}}',
     "is not a valid notebook: The notebook is invalid and is missing an expected key: metadata"),
    ('{"cells": [{"cell_type": "code", "source": 1, "metadata": {}, "outputs": [], "execution_count": null}], '
     '"nbformat": 4, "nbformat_minor": 4, "metadata": {}}', "is not a valid notebook: at cells/0/source: 1 is not"),
], ids=["foo", "binary", "truncated", "cell_without_keys", "bad_source"])
def test_check_refuses_a_malformed_notebook_in_one_line_before_running(tmp_path, monkeypatch, capfd, content, why):
    path = tmp_path / "broken.ipynb"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    status, out, err = run_cli(monkeypatch, capfd, "coursework", "check", str(path))
    assert status == 2 and out == ""
    assert err.splitlines() == [err.strip()] and err.startswith(f"flowattn-np coursework: error: NOTEBOOK: {path} {why}"), err


@pytest.mark.parametrize("points", ["many", -1, True, None])
def test_check_refuses_a_bad_points_value_naming_the_cell_before_running(tmp_path, monkeypatch, capfd, points):
    marker = tmp_path / "ran"
    path = tiny_notebook(tmp_path / "nb.ipynb", f"open({str(marker)!r}, 'w').close()", ("assert True", "test_ok", 1),
                         ("assert True", "test_bad", points))
    status, out, err = run_cli(monkeypatch, capfd, "coursework", "check", str(path))
    assert status == 2 and out == "" and not marker.exists()
    assert err.strip() == (f"flowattn-np coursework: error: NOTEBOOK: {path}: cell 3 (grade_id 'test_bad') has "
                           f"points {points!r}: expected a number >= 0")


@pytest.mark.parametrize("timeout", ["0", "-5", "nan", "soon"])
def test_check_timeout_must_be_a_positive_number(tmp_path, monkeypatch, capfd, timeout):
    from flowattn_np.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["coursework", "check", str(tmp_path / "nb.ipynb"), f"--timeout={timeout}"])
    assert stop.value.code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"--timeout: expected a number of seconds > 0, got {timeout!r}")
    assert "Traceback" not in "".join(err)


@pytest.mark.slow
def test_status_prints_every_assignments_tests_in_one_table(tmp_path, monkeypatch, capfd):
    tiny_notebook(tmp_path / f"{A1}.ipynb", "x = 1", ("assert x == 1", "test_one", 2), ("assert x == 2", "test_two", 3))
    tiny_notebook(tmp_path / A3 / f"{A3}.ipynb", ("assert True", "test_three", 4))
    status, out, err = run_cli(monkeypatch, capfd, "coursework", "status", str(tmp_path))
    assert status == 1 and err == ""
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["assignment", "test", "points", "result"]
    assert [A1, "test_one", "2", "passed"] in rows and [A1, "test_two", "3", "FAILED"] in rows
    assert [A3, "test_three", "4", "passed"] in rows
    assert [A1, "total", "2/5", "first", "error:", "cell", "3", "(test_two):", "AssertionError:"] in rows
    assert [A3, "total", "4/4"] in rows and not any(r[0] in (A2, A4, A5) for r in rows[1:])
    empty = tmp_path / "empty"
    empty.mkdir()
    status, out, err = run_cli(monkeypatch, capfd, "coursework", "status", str(empty))
    assert status == 2 and err.startswith("flowattn-np coursework: error: DIR:") and len(err.splitlines()) == 1
