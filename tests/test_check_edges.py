"""The edges of the checkers and of the softmax they check: 1-D and 0-d logits, integer
inputs and bad steps of check_gradient, a NaN loss, results that are not arrays, a single
NaN at ordinary logits, failures traced to the student's functions they use, and the
notebook's own names in the messages.
"""

import numpy as np
import pytest
import scipy.special

import flowattn_np as fa
from flowattn_np.teaching import checks


def student_softmax(S):
    e = np.exp(S - S.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def student_logsumexp(S):
    c = S.max(axis=-1, keepdims=True)
    return (c + np.log(np.exp(S - c).sum(axis=-1, keepdims=True)))[..., 0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_log_softmax_and_logsumexp_of_a_1d_row_and_a_0d_logit(dtype):
    s = np.array([1.0, -2.0, 1e4, 0.5], dtype=dtype)
    P = fa.softmax(s)
    assert P.shape == (4,) and P.dtype == dtype
    np.testing.assert_allclose(P, scipy.special.softmax(s.astype(np.float64)), atol=1e-7)
    np.testing.assert_allclose(fa.log_softmax(s), scipy.special.log_softmax(s.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(fa.softmax(s, heads=(2, 2))[:2], scipy.special.softmax(s[:2].astype(np.float64)),
                               rtol=1e-6)
    z = np.array(3.0, dtype=dtype)
    assert np.shape(fa.softmax(z)) == () and fa.softmax(z) == 1.0 and fa.softmax(z).dtype == dtype
    assert np.shape(fa.log_softmax(z)) == () and fa.log_softmax(z) == 0.0
    assert np.shape(fa.logsumexp(z)) == () and fa.logsumexp(z) == 3.0


def test_a_correct_1d_softmax_passes_its_check():
    r = checks.check_function(student_softmax, fa.softmax, lambda rng: (3.0 * rng.standard_normal(7),),
                              exercise="softmax")
    assert r.passed


def test_check_gradient_takes_integer_inputs_as_float64():
    def loss(x):
        return (x ** 2).sum()

    r = checks.check_gradient(lambda x: 2.0 * x, loss, [(np.array([3, -1, 4]),)], raise_on_failure=False)
    assert r.passed, r.message


@pytest.mark.parametrize("eps", [0, -1e-6, float("nan"), float("inf")])
def test_check_gradient_refuses_a_step_that_is_not_positive_and_finite(eps):
    with pytest.raises(ValueError, match=r"eps: expected a positive finite number, got"):
        checks.check_gradient(lambda x: 2 * x, lambda x: (x ** 2).sum(), [(np.ones(3),)], eps=eps)


@pytest.mark.parametrize("check", ["function", "gradient"])
@pytest.mark.parametrize("tol", [float("nan"), float("inf"), -1.0, "1e-7"])
def test_the_checks_refuse_a_tolerance_that_is_not_positive_and_finite(check, tol):
    with pytest.raises(ValueError, match=r"tol: expected a positive finite number, got"):
        if check == "function":
            checks.check_function(student_softmax, fa.softmax, checks.make_logits_inputs, tol=tol)
        else:
            checks.check_gradient(lambda x: 2 * x, lambda x: (x ** 2).sum(), [(np.ones(3),)], tol=tol)


def test_a_nan_loss_is_reported_as_such():
    r = checks.check_gradient(lambda x: 2 * x, lambda x: np.nan * x.sum(), [(np.ones(3),)], raise_on_failure=False)
    assert not r.passed and "the loss is nan at these inputs" in r.message and "of 3 entries differ" not in r.message
    r = checks.check_gradient(lambda x: 2 * x, lambda x: np.log(x).sum(), [(np.array([1.0, 1e-7, 2.0]),)],
                              raise_on_failure=False)  # finite at x, nan at x - eps
    assert not r.passed and "not finite within eps = 1e-06 of these inputs" in r.message


@pytest.mark.parametrize("returned, words", [
    (lambda S: student_softmax(S).tolist(), "your softmax returned a list; return a NumPy array"),
    (lambda S: tuple(student_softmax(S)), "your softmax returned a tuple; return a NumPy array"),
    (lambda S: student_softmax(S).astype(complex), "your softmax returned a complex array (complex128)"),
    (lambda S: student_softmax(S).astype(object), "your softmax returned an array of dtype object"),
    (lambda S: {"P": student_softmax(S)}, "your softmax returned a dict; return a NumPy array"),
])
def test_a_result_that_is_not_a_real_array_is_refused_by_name(returned, words):
    r = checks.check_function(returned, fa.softmax, checks.make_logits_inputs, exercise="softmax", raise_on_failure=False)
    assert not r.passed and words in r.message and "float32 upcast" not in r.message


def test_a_python_float_is_fine_for_a_scalar_result():
    def cross_entropy(Z, theta, C):
        S = Z @ theta.T
        return float(-(C * S).sum() + student_logsumexp(S).sum())

    assert checks.check_function(cross_entropy, fa.linear_loss, checks.make_linear_inputs, dtypes=("float64",),
                                 exercise="cross_entropy").passed


def test_a_single_nan_at_ordinary_logits_is_not_called_a_missing_max_shift():
    def one_nan(S):
        P = student_softmax(S)
        P[0, 0] = np.nan
        return P

    r = checks.check_function(one_nan, fa.softmax, checks.make_logits_inputs, exercise="softmax", raise_on_failure=False)
    assert not r.passed and "missing max-shift" not in r.message and r.diagnoses == ()
    assert "1 of 20 entries differ" in r.message and "got nan" in r.message


def test_a_failure_is_traced_to_a_function_it_uses_that_fails_its_own_test():
    def logsumexp(S):  # forgets the max added back
        return np.log(np.exp(S - S.max(axis=-1, keepdims=True)).sum(axis=-1))

    def cross_entropy(Z, theta, C):
        S = Z @ theta.T
        return -(C * S).sum() + logsumexp(S).sum()

    r = checks.check_function(cross_entropy, fa.linear_loss, checks.make_linear_inputs, exercise="cross_entropy",
                              uses={"logsumexp": logsumexp}, raise_on_failure=False)
    assert not r.passed and "This uses your `logsumexp`, which fails its own test above:" in r.message
    assert "max not added back" in r.message  # the dependency's own diagnosis, shown with it
    fine = checks.check_function(cross_entropy, fa.linear_loss, checks.make_linear_inputs, exercise="cross_entropy",
                                 uses={"logsumexp": student_logsumexp}, raise_on_failure=False)
    assert not fine.passed and "This uses your" not in fine.message  # its own mistake, no blame on logsumexp


def test_a_dependency_under_another_exercise_name_and_a_passing_check_with_dependencies():
    def forward_only(Z, theta, C, h):
        return Z + h * ((C - student_softmax(Z @ theta.T)) @ theta)

    def lie_step(Z, theta, C, h):  # not the Lie step: uses the student's block, which is right
        return forward_only(Z, theta, C, h)

    r = checks.check_function(lie_step, checks.reference_lie_step, checks.make_block_inputs, exercise="lie_step",
                              uses={"block_forward": (forward_only, "ca_block")}, raise_on_failure=False)
    assert not r.passed and "This uses your" not in r.message
    ok = checks.check_function(forward_only, checks.reference_ca_block, checks.make_block_inputs, exercise="ca_block",
                               uses={"softmax": student_softmax})
    assert ok.passed
    with pytest.raises(ValueError, match="uses: exercise 'rk4_attention' has no reference"):
        checks.check_function(forward_only, checks.reference_ca_block, checks.make_block_inputs,
                              uses={"rk4": (forward_only, "rk4_attention")})


def test_the_block_backward_messages_use_the_notebooks_names():
    def block_backward(Z_out_bar, Z, theta, C, h):
        P = fa.softmax(Z @ theta.T)
        S_bar = fa.softmax_vjp(P, -h * (Z_out_bar @ theta.T))
        return S_bar @ theta, h * ((C - P).T @ Z_out_bar) + S_bar.T @ Z, (Z_out_bar * ((C - P) @ theta)).sum()

    def student_vjp(Z_bar, Z, theta, C, h):  # a test cell's wrapper, with its own name for the upstream
        return block_backward(Z_bar, Z, theta, C, h)

    r = checks.check_function(student_vjp, checks.reference_ca_block_vjp, checks.make_block_vjp_inputs,
                              exercise="ca_block_vjp", raise_on_failure=False)
    assert "`Z_bar`:" in r.message and "Z_out_bar (5, 3)" in r.message and "Z_bar_in" not in r.message
    assert r.diagnoses == ("missing residual path in Z_bar",)
    assert "Z_bar = Z_out_bar + S_bar theta" in r.message


def test_numerical_gradient_differentiates_an_integer_array_as_float64_and_refuses_a_bad_step():
    g = fa.numerical_gradient(lambda x: (x ** 2).sum(), np.array([3, -1]))
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, [6.0, -2.0], rtol=1e-8)
    for eps in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="eps: expected a positive finite step"):
            fa.numerical_gradient(lambda x: (x ** 2).sum(), np.ones(2), eps=eps)
