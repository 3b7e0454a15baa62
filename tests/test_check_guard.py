"""The checkers keep the package's answers out of reach of the function they check.

A "copying" submission calls a reference (``fa.linear_grad_Z``, ``checks.reference_*``,
``fa.quadratic_grad_Z``), reached through a name imported at the top of the notebook, an
alias or a module attribute: for every exercise of the catalogue it fails with a message
that names what was called. The building blocks an exercise allows still work, the
package's own internal calls are not watched, and the checker's reference is computed
unhindered. A function that never returns is stopped with a message.
"""

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.teaching import checks
from flowattn_np import linear_grad_Z as copied_grad_Z  # as a notebook's first cell would
from flowattn_np import quadratic_grad_Z as copied_quadratic
from flowattn_np.teaching.checks import reference_ca_block_vjp as copied_vjp
from test_check_terms import rk4_attention
from test_checks import CASES

LINEAR = checks.make_linear_inputs(np.random.default_rng(0))
QUADRATIC = checks.make_quadratic_inputs(np.random.default_rng(0))
VJP = checks.make_block_vjp_inputs(np.random.default_rng(0))

# how a copying student reaches a reference -> (the call, the name the message must give)
COPIES = {
    "imported linear_grad_Z": (lambda: copied_grad_Z(*LINEAR), "flowattn_np.linear_grad_Z"),
    "fa.linear_grad_Z": (lambda: fa.linear_grad_Z(*LINEAR), "flowattn_np.linear_grad_Z"),
    "imported reference_ca_block_vjp": (lambda: copied_vjp(*VJP), "checks.reference_ca_block_vjp"),
    "checks.reference_ca_block_vjp": (lambda: checks.reference_ca_block_vjp(*VJP), "checks.reference_ca_block_vjp"),
    "imported quadratic_grad_Z": (lambda: copied_quadratic(*QUADRATIC), "flowattn_np.quadratic_grad_Z"),
    "fa.quadratic_grad_Z": (lambda: fa.quadratic_grad_Z(*QUADRATIC), "flowattn_np.quadratic_grad_Z"),
}


@pytest.mark.parametrize("way", sorted(COPIES))
@pytest.mark.parametrize("name", sorted(checks.EXERCISES))
def test_a_copying_submission_fails_every_exercise_and_the_message_names_the_call(name, way):
    reference, inputs = CASES[name]
    call, called = COPIES[way]

    def student(*args):
        call()
        return reference(*args)

    r = checks.check_function(student, reference, inputs, exercise=name, raise_on_failure=False)
    ex = checks.EXERCISES[name]
    assert not r.passed
    assert f"your {ex.function} called {called}, which computes (part of) the reference" in r.message
    blocks = ", ".join(f"fa.{b}" for b in ex.allowed)
    assert (f"write it from {blocks} and NumPy" if blocks else "write it in plain NumPy") in r.message


def test_the_reference_itself_passed_as_the_students_function_is_caught():
    grad_Z = fa.linear_grad_Z  # the student's "def grad_Z" replaced by the package's
    r = checks.check_function(grad_Z, fa.linear_grad_Z, checks.make_linear_inputs, exercise="linear_grad_Z",
                              raise_on_failure=False)
    assert not r.passed and "your grad_Z called flowattn_np.linear_grad_Z" in r.message
    assert "write it from fa.softmax and NumPy" in r.message


def test_a_caught_guard_error_still_fails_the_check():
    def sly(Z, theta, C):
        try:
            return fa.linear_grad_Z(Z, theta, C)
        except Exception:
            return fa.linear_grad_Z(Z, theta, C)  # the second call runs unwatched: too late

    r = checks.check_function(sly, fa.linear_grad_Z, checks.make_linear_inputs, exercise="linear_grad_Z",
                              raise_on_failure=False)
    assert not r.passed and "called flowattn_np.linear_grad_Z" in r.message


def test_a_method_of_the_packages_blocks_is_out_of_reach_too():
    block = fa.CrossAttentionBlock(fa.BlockConfig(model="linear", targets="labels", learn_h=True))  # made before

    def block_forward(Z, theta, C, h):
        return block.forward(Z, {"theta": theta, "h": np.asarray(h, Z.dtype)}, C)[0]

    r = checks.check_function(block_forward, checks.reference_ca_block, checks.make_block_inputs, exercise="ca_block",
                              raise_on_failure=False)
    assert not r.passed and "your block_forward called flowattn_np.CrossAttentionBlock.forward," in r.message


def test_the_building_blocks_of_an_exercise_and_the_packages_own_calls_are_allowed():
    # rk4_attention calls fa.cross_attention, which calls fa.softmax inside: not the student's call
    reference, inputs = CASES["rk4_attention"]
    assert checks.check_function(rk4_attention, reference, inputs, exercise="rk4_attention").passed
    # the same building block where the exercise does not allow it
    r = checks.check_function(lambda Z, theta, C: fa.cross_attention(Z, theta) - C @ theta, fa.linear_grad_Z,
                              checks.make_linear_inputs, exercise="linear_grad_Z", raise_on_failure=False)
    assert not r.passed and "called flowattn_np.cross_attention" in r.message


def test_without_an_exercise_only_the_reference_and_checks_reference_functions_are_out_of_reach():
    def softmax_by_lse(S):
        return np.exp(S - fa.logsumexp(S)[..., None])

    assert checks.check_function(softmax_by_lse, fa.softmax, checks.make_logits_inputs).passed
    r = checks.check_function(lambda S: fa.softmax(S) + 0.0, fa.softmax, checks.make_logits_inputs, raise_on_failure=False)
    assert not r.passed and "called flowattn_np.softmax" in r.message
    r = checks.check_gradient(lambda Z, th, C: checks.reference_ca_block_vjp(Z, Z, th, C, 0.5)[0], fa.linear_loss,
                              checks.make_linear_inputs, raise_on_failure=False)
    assert not r.passed and "called checks.reference_ca_block_vjp" in r.message


def test_the_guard_leaves_no_profile_hook_behind_and_guard_false_turns_it_off():
    before = sys.getprofile()
    checks.check_function(lambda *a: fa.linear_grad_Z(*a), fa.linear_grad_Z, checks.make_linear_inputs,
                          exercise="linear_grad_Z", raise_on_failure=False)
    assert sys.getprofile() is before
    assert checks.check_function(lambda *a: fa.linear_grad_Z(*a), fa.linear_grad_Z, checks.make_linear_inputs,
                                 exercise="linear_grad_Z", guard=False).passed


def test_a_function_that_never_returns_is_stopped_with_a_message():
    def softmax(S):
        while True:
            S = S + 0.0

    start = time.perf_counter()
    r = checks.check_function(softmax, fa.softmax, checks.make_logits_inputs, exercise="softmax", timeout=0.5,
                              raise_on_failure=False)
    assert time.perf_counter() - start < 5
    assert not r.passed and "your softmax did not return within 0.5 s" in r.message
    assert _checking_threads() == 0  # the runaway loop was stopped, not left spinning
    with pytest.raises(ValueError, match="timeout: expected a positive finite number, got 0"):
        checks.check_function(softmax, fa.softmax, checks.make_logits_inputs, timeout=0)


def test_an_exception_of_the_students_function_reaches_the_notebook_unchanged():
    def stub(S):
        raise NotImplementedError("write me")

    with pytest.raises(NotImplementedError, match="write me"):
        checks.check_function(stub, fa.softmax, checks.make_logits_inputs, exercise="softmax")


def _checking_threads():
    """How many of the checkers' worker threads still run, after waiting up to 5 s for them to end."""
    deadline = time.perf_counter() + 5
    while True:
        alive = [t for t in threading.enumerate() if t.name == "flowattn_np check" and t.is_alive()]
        if not alive or time.perf_counter() > deadline:
            return len(alive)
        time.sleep(0.05)


def test_ctrl_c_during_a_check_reaches_the_notebook_and_stops_the_students_function():
    steps = [0]

    def softmax(S):
        while True:
            steps[0] += 1

    def ctrl_c_once_it_runs():
        while steps[0] == 0:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_once_it_runs, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        checks.check_function(softmax, fa.softmax, checks.make_logits_inputs, exercise="softmax", timeout=60)
    assert _checking_threads() == 0 and sys.getprofile() is None
    before = steps[0]
    time.sleep(0.2)
    assert steps[0] == before > 0  # the loop ran, and runs no more


def test_the_guard_and_the_timeout_raise_their_own_kinds_of_check_failure():
    with pytest.raises(checks.ReferenceCalled, match="your grad_Z called flowattn_np.linear_grad_Z"):
        checks.check_function(lambda Z, th, C: copied_grad_Z(Z, th, C), fa.linear_grad_Z, checks.make_linear_inputs,
                              exercise="linear_grad_Z")
    with pytest.raises(checks.StudentTimeout, match="did not return within 0.2 s"):
        checks.check_function(lambda S: time.sleep(0.6), fa.softmax, checks.make_logits_inputs, timeout=0.2)
    assert issubclass(checks.ReferenceCalled, checks.CheckFailure) and issubclass(checks.StudentTimeout, AssertionError)
