"""Diagnosis by terms: realistic mistakes that the catalogue does not list are named by a
least-squares fit of the exercise's named terms, exact on every input set, in the
equation's words; an answer computed by an equal formula passes; an answer that is no
exact combination of terms gets no term diagnosis; underflow is worded apart from overflow.
"""

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.teaching import checks


def _cols(S):  # the softmax over axis -2 (a student's wrong axis)
    e = np.exp(S - S.max(axis=-2, keepdims=True))
    return e / e.sum(axis=-2, keepdims=True)


def _T(A):
    return A.swapaxes(-1, -2)


def grad_theta_averaged(Z, theta, C):
    return (fa.softmax(Z @ theta.T) - C).T @ Z / Z.shape[0]


def grad_Z_doubled_label(Z, theta, C):
    return fa.softmax(Z @ theta.T) @ theta - 2.0 * (C @ theta)


def block_half_step(Z, theta, C, h):
    return Z - (h / 2) * (fa.softmax(Z @ theta.T) @ theta) + h * (C @ theta)


def block_wrong_axis_in_attention(Z, theta, C, h):
    return Z - h * (_cols(Z @ theta.T) @ theta) + h * (C @ theta)


def vjp_h_bar_without_label_term(Z_out_bar, Z, theta, C, h):
    P = fa.softmax(Z @ theta.T)
    return None, None, -(Z_out_bar * (P @ theta)).sum()


def quadratic_SA_twice_no_adjoint(Z, theta, C):
    Y = Z @ theta
    return 2.0 * (fa.softmax(Y @ _T(Z)) @ Y) - (C + _T(C)) @ Y


def quadratic_label_transpose_flipped(Z, theta, C):
    Y = Z @ theta
    P = fa.softmax(Y @ _T(Z))
    return P @ Y + _T(P) @ Y - C @ Y + _T(C) @ Y


def rk4_attention(Z, theta, t):
    """A student's RK4 step of dZ/dt = -CA(Z, theta), from the building block fa.cross_attention."""
    def f(Y):
        return -fa.cross_attention(Y, theta)
    k1 = f(Z)
    k2 = f(Z + (0.5 * t) * k1)
    k3 = f(Z + (0.5 * t) * k2)
    k4 = f(Z + t * k3)
    return Z + (t / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


def lie_half_label_step(Z, theta, C, h):
    return rk4_attention(Z, theta, h) + (h / 2) * (C @ theta)


# (exercise, student, reference, inputs, output, the diagnosis names, words in the message)
MISTAKES = {
    "average where the equation sums": (
        "linear_grad_theta", grad_theta_averaged, fa.linear_grad_theta, checks.make_linear_inputs, None,
        ("whole result divided by the number of rows 5 (an average where the equation sums)",),
        "exactly (1/5) softmax part - (1/5) label part: the whole result is divided by the number of rows 5"),
    "a term doubled": (
        "linear_grad_Z", grad_Z_doubled_label, fa.linear_grad_Z, checks.make_linear_inputs, None,
        ("- C theta doubled",), "exactly CA(Z, theta) - 2 C theta: the term - C theta is doubled"),
    "a step h/2": (
        "ca_block", block_half_step, checks.reference_ca_block, checks.make_block_inputs, None,
        ("- h CA(Z, theta) taken with a step h/2 instead of h",), "Z - (1/2) h CA(Z, theta) + h C theta"),
    "softmax over the wrong axis inside one term": (
        "ca_block", block_wrong_axis_in_attention, checks.reference_ca_block, checks.make_block_inputs, None,
        ("h CA(Z, theta) with the softmax over the columns instead of the rows",),
        "- h CA(Z, theta) is computed with the softmax over the columns instead of the rows"),
    "a term left out of h_bar": (
        "ca_block_vjp", vjp_h_bar_without_label_term, checks.reference_ca_block_vjp, checks.make_block_vjp_inputs, 2,
        ("missing <Z_out_bar, C theta>",), "`h_bar`"),
    "SA* missing, SA doubled": (
        "quadratic_grad_Z", quadratic_SA_twice_no_adjoint, fa.quadratic_grad_Z, checks.make_quadratic_inputs, None,
        ("SA(Z, theta) doubled or multiplied by the batch size 2 (a sum where the equation averages)",
         "missing SA*(Z, theta)"), "the term SA*(Z, theta) is missing"),
    "- C^T Z theta with its sign flipped": (
        "quadratic_grad_Z", quadratic_label_transpose_flipped, fa.quadratic_grad_Z, checks.make_quadratic_inputs, None,
        ("sign of - C^T Z theta flipped",), "the sign of the term - C^T Z theta is flipped"),
    "a label step h/2 in the Lie step": (
        "lie_step", lie_half_label_step, checks.reference_lie_step, checks.make_block_inputs, None,
        ("h C theta taken with a step h/2 instead of h",), "exactly A(h) Z + (1/2) h C theta"),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_a_mistake_outside_the_catalogue_is_named_by_the_term_fit(case):
    name, student, reference, inputs, output, diagnoses, words = MISTAKES[case]
    ex = checks.EXERCISES[name]
    assert all(mk.name not in diagnoses for mk in ex.mistakes)  # not in the catalogue
    r = checks.check_function(student, reference, inputs, exercise=name, output=output, raise_on_failure=False)
    assert not r.passed
    assert r.diagnoses == diagnoses
    assert "Diagnosis by terms - on every input set your result is exactly" in r.message and words in r.message


def grad_Z_other_order(Z, theta, C):
    return fa.softmax(Z @ theta.T) @ theta - C @ theta


def quadratic_grad_Z_grouped(Z, theta, C):
    Y = Z @ theta
    P = fa.softmax(Y @ _T(Z))
    return (P + _T(P) - C - _T(C)) @ Y


def block_forward_two_lines(Z, theta, C, h):
    Z_half = Z - h * (fa.softmax(Z @ theta.T) @ theta)
    return Z_half + h * (C @ theta)


@pytest.mark.parametrize("name, student, reference, inputs", [
    ("linear_grad_Z", grad_Z_other_order, fa.linear_grad_Z, checks.make_linear_inputs),
    ("quadratic_grad_Z", quadratic_grad_Z_grouped, fa.quadratic_grad_Z, checks.make_quadratic_inputs),
    ("ca_block", block_forward_two_lines, checks.reference_ca_block, checks.make_block_inputs),
])
def test_an_answer_computed_by_an_equal_formula_passes(name, student, reference, inputs):
    assert checks.check_function(student, reference, inputs, exercise=name).passed


@pytest.mark.parametrize("student", [
    lambda Z, theta, C: (fa.softmax(1.1 * (Z @ theta.T)) - C) @ theta,  # a temperature: no combination of terms
    lambda Z, theta, C: grad_Z_doubled_label(Z, theta, C) + 1e-6 * np.sin(Z),  # "doubled" but for 3e-7: not exactly
    lambda Z, theta, C: (fa.softmax(Z @ theta.T) - 1.5 * C) @ theta,  # a coefficient no equation has
])
def test_an_answer_that_no_exact_fit_reproduces_gets_no_term_diagnosis(student):
    r = checks.check_function(student, fa.linear_grad_Z, checks.make_linear_inputs, exercise="linear_grad_Z",
                              raise_on_failure=False)
    assert not r.passed and r.diagnoses == () and "Diagnosis by terms" not in r.message
    assert "No common mistake of this exercise matches" in r.message


def test_fit_terms_says_nothing_when_two_different_fits_are_exact():
    a, b = np.arange(6.0), np.arange(6.0) ** 2
    same = [[checks.Term("A", 1.0, a), checks.Term("B", 1.0, b), checks.Term("A again", -1.0, 2 * a)]]
    # the student's 2 a is "A doubled" or "A again with its sign flipped": ambiguous
    assert checks.fit_terms(same, [2 * a], 1e-9) is None
    assert checks.fit_terms([[checks.Term("A", 1.0, a), checks.Term("B", 1.0, b)]], [a - b], 1e-9)[1] == \
        ("sign of B flipped",)


def logsumexp_global_max(S):
    c = S.max()
    return c + np.log(np.exp(S - c).sum(axis=-1))


def logsumexp_unshifted(S):
    return np.log(np.exp(S).sum(axis=-1))


def test_a_logsumexp_shifted_by_the_global_max_is_an_underflow_not_a_missing_max_shift():
    r = checks.check_function(logsumexp_global_max, fa.logsumexp, checks.make_logits_inputs, exercise="logsumexp",
                              raise_on_failure=False)
    assert r.diagnoses == ("underflow: shifted by the global maximum",)
    assert "got -inf" in r.message and "log 0 = -inf" in r.message
    r = checks.check_function(logsumexp_unshifted, fa.logsumexp, checks.make_logits_inputs, exercise="logsumexp",
                              raise_on_failure=False)
    assert r.diagnoses == ("missing max-shift (overflow at large logits)",)


def cross_entropy_log_of_softmax(Z, theta, C):
    S = Z @ theta.T
    e = np.exp(S - S.max(axis=-1, keepdims=True))
    return -(C * np.log(e / e.sum(axis=-1, keepdims=True))).sum()


def cross_entropy_stable(Z, theta, C):
    S = Z @ theta.T
    c = S.max(axis=-1, keepdims=True)
    return (-(C * S).sum() + (c + np.log(np.exp(S - c).sum(axis=-1, keepdims=True))).sum())


def test_cross_entropy_as_log_of_softmax_fails_at_logit_scale_300_and_a_stable_one_passes():
    r = checks.check_function(cross_entropy_log_of_softmax, fa.linear_loss, checks.make_linear_inputs,
                              exercise="cross_entropy", raise_on_failure=False)
    assert not r.passed and r.diagnoses == ("underflow: log of a softmax",)
    assert "logits at scale 300, regime underflow" in r.message and "got nan" in r.message
    ok = checks.check_function(cross_entropy_stable, fa.linear_loss, checks.make_linear_inputs, exercise="cross_entropy")
    assert ok.passed and "on 6 input sets" in ok.message


def test_a_naive_softmax_fails_the_default_softmax_check_by_its_large_logit_sets():
    def naive(S):
        e = np.exp(S)
        return e / e.sum(axis=-1, keepdims=True)

    r = checks.check_function(naive, fa.softmax, checks.make_logits_inputs, exercise="softmax", raise_on_failure=False)
    assert not r.passed and "regime overflow" in r.message
    assert r.diagnoses == ("missing max-shift (overflow at large logits)",)
    assert checks.check_function(naive, fa.softmax, checks.make_logits_inputs, exercise="softmax", stress=False).passed


def test_the_large_logit_regimes_overflow_and_underflow_as_documented():
    over, under, mixed = checks.make_large_logits(np.random.default_rng(0))
    log_max = np.log(np.finfo(np.float64).max)
    assert over.min() > log_max and np.ptp(over, axis=-1).max() < 100  # exp overflows, no row spreads
    assert np.all(under.max(axis=-1) == 0.0) and under.min() < -746  # nothing overflows, exp underflows
    assert mixed.max() > log_max and (mixed.max() - mixed.max(axis=-1)).max() > 746
    Z, theta, C = checks.make_large_linear_inputs(np.random.default_rng(0))[1]  # the underflow regime as Z theta^T
    np.testing.assert_allclose((Z @ theta.T).max(axis=-1), 0.0, atol=1e-9)
    assert (Z @ theta.T).min() < -746
