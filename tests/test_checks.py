"""The teaching checkers (flowattn_np.teaching.checks): every diagnosis of the catalogue, the report
of where arrays differ, and float32 tolerances.

For every exercise of the catalogue, a "student" who makes exactly one of its mistakes
(the mistake's own ``make``) is diagnosed with that mistake by name; the generic
mistakes (flipped sign, missing transpose, missing max-shift, in-place mutation, float32
upcast) are seeded by hand.
"""

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.teaching import checks


def retract_inputs(rng):
    Z, _, r = checks.make_sphere_inputs(rng)
    return Z, r


def rk4_inputs(rng):
    Z, theta, _, h = checks.make_block_inputs(rng)
    return Z, theta, h


# exercise -> (reference, inputs): what the assignments check each exercise against
CASES = {
    "softmax": (fa.softmax, checks.make_logits_inputs),
    "logsumexp": (fa.logsumexp, lambda r: checks.make_logits_inputs(r, n=5, m=5)),
    "cross_entropy": (fa.linear_loss, checks.make_linear_inputs),
    "linear_grad_Z": (fa.linear_grad_Z, checks.make_linear_inputs),
    "linear_grad_theta": (fa.linear_grad_theta, checks.make_linear_inputs),
    "ca_block": (checks.reference_ca_block, checks.make_block_inputs),
    "ca_block_vjp": (checks.reference_ca_block_vjp, checks.make_block_vjp_inputs),
    "network": (checks.reference_network, checks.make_network_inputs),
    "self_attention": (fa.self_attention, lambda r: checks.make_quadratic_inputs(r)[:2]),
    "self_attention_adjoint": (fa.self_attention_adjoint, lambda r: checks.make_quadratic_inputs(r)[:2]),
    "quadratic_grad_Z": (fa.quadratic_grad_Z, checks.make_quadratic_inputs),
    "quadratic_grad_phi": (fa.quadratic_grad_phi, checks.make_quadratic_phi_inputs),
    "rk4_attention": (lambda Z, th, t: fa.rk_step(lambda Y: fa.linear_flow_A(Y, th), Z, t, "rk4"), rk4_inputs),
    "lie_step": (checks.reference_lie_step, checks.make_block_inputs),
    "strang_step": (checks.reference_strang_step, checks.make_block_inputs),
    "retract": (fa.retract, retract_inputs),
    "retract_vjp": (fa.retract_vjp, checks.make_sphere_inputs),
    "gelu": (fa.gelu, checks.make_activation_inputs),
    "gelu_grad": (fa.gelu_grad, checks.make_activation_inputs),
    "mlp_oracle": (checks.reference_mlp_oracle, checks.make_mlp_inputs),
    "mlp_oracle_vjp": (checks.reference_mlp_oracle_vjp, checks.make_mlp_vjp_inputs),
    "mlp_block": (checks.reference_mlp_block, checks.make_mlp_block_inputs),
    "mlp_block_vjp": (checks.reference_mlp_block_vjp, checks.make_mlp_block_vjp_inputs),
    "mlp_network": (checks.reference_mlp_network, checks.make_mlp_network_inputs),
}
CATALOGUED = [(name, mk) for name, ex in checks.EXERCISES.items() for mk in ex.mistakes]


def test_every_exercise_of_the_catalogue_has_a_case_here():
    assert set(CASES) == set(checks.EXERCISES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_reference_passes_its_own_check_in_float64_and_float32(name):
    reference, inputs = CASES[name]
    result = checks.check_function(reference, reference, inputs, exercise=name, guard=False)
    assert result.passed and "float32" in result.message


@pytest.mark.parametrize("name, mistake", CATALOGUED, ids=[f"{n}: {m.name}" for n, m in CATALOGUED])
def test_each_catalogued_mistake_is_diagnosed_by_name(name, mistake):
    reference, inputs = CASES[name]
    ex = checks.EXERCISES[name]

    def student(*args):
        return mistake.make(*args)

    with pytest.raises(checks.CheckFailure) as failure:
        checks.check_function(student, reference, inputs, exercise=name, dtypes=("float64",), guard=False)
    message = str(failure.value)
    assert f"Diagnosis - {mistake.name}: {mistake.message}" in message
    assert ex.equation in message  # the equation, and the term inside the mistake's message


# ---------------------------------------------------------------- the generic mistakes


def grad_Z_flipped(Z, theta, C):
    return (C - fa.softmax(Z @ theta.T)) @ theta


def test_flipped_sign_and_where_the_arrays_differ():
    r = checks.check_function(grad_Z_flipped, fa.linear_grad_Z, checks.make_linear_inputs, exercise="linear_grad_Z",
                              raise_on_failure=False)
    assert not r.passed and r.diagnoses == ("flipped sign",)
    Z, theta, C = checks.make_linear_inputs(np.random.default_rng(0))
    expected = fa.linear_grad_Z(Z, theta, C)
    i, j = np.unravel_index(np.argmax(np.abs(2 * expected)), expected.shape)
    assert r.where["index"] == (i, j) and r.where["count"] == expected.size
    assert r.where["expected"] == pytest.approx(expected[i, j]) and r.where["got"] == pytest.approx(-expected[i, j])
    assert f"row {i}, column {j}: expected {expected[i, j]:.6g}, got {-expected[i, j]:.6g}" in r.message
    assert "input set 1 of 3 (float64; Z (5, 3), theta (4, 3), C (5, 4))" in r.message


def test_one_wrong_entry_is_located():
    def almost(Z, theta, C):
        G = (fa.softmax(Z @ theta.T) - C) @ theta
        G[3, 1] += 0.5
        return G

    r = checks.check_function(almost, fa.linear_grad_Z, checks.make_linear_inputs, raise_on_failure=False)
    assert r.where["index"] == (3, 1) and r.where["count"] == 1 and "1 of 15 entries differ" in r.message
    assert r.diagnoses == ()


def test_missing_transpose_wrong_shape_and_square():
    r = checks.check_function(lambda Z, th, C: Z.T @ (fa.softmax(Z @ th.T) - C), fa.linear_grad_theta,
                              checks.make_linear_inputs, exercise="linear_grad_theta", raise_on_failure=False)
    assert r.diagnoses == ("missing transpose",) and "shape (3, 4), expected (4, 3)" in r.message
    square = lambda r: checks.make_linear_inputs(r, n=4, m=4, d=4)  # noqa: E731
    r = checks.check_function(lambda Z, th, C: Z.T @ (fa.softmax(Z @ th.T) - C), fa.linear_grad_theta, square,
                              raise_on_failure=False)
    assert r.diagnoses == ("missing transpose",)


def test_missing_max_shift_overflows_at_large_logits():
    def naive(S):
        e = np.exp(S)
        return e / e.sum(axis=-1, keepdims=True)

    assert checks.check_function(naive, fa.softmax, checks.make_logits_inputs).passed  # harmless at small logits
    r = checks.check_function(naive, fa.softmax, lambda r: checks.make_logits_inputs(r, scale=1e4), exercise="softmax",
                              raise_on_failure=False)
    assert r.diagnoses == ("missing max-shift (overflow at large logits)",) and "got nan" in r.message


def test_in_place_mutation_of_an_input_is_named_even_when_the_values_are_right():
    def softmax_in_place(S):
        S -= S.max(axis=-1, keepdims=True)
        np.exp(S, out=S)
        return S / S.sum(axis=-1, keepdims=True)

    r = checks.check_function(softmax_in_place, fa.softmax, checks.make_logits_inputs, raise_on_failure=False)
    assert r.diagnoses == ("in-place mutation of an input",) and "argument `S`" in r.message


def test_float32_upcast_is_named():
    def upcast(Z, theta, C):
        return (fa.softmax(Z @ theta.T) - C) @ theta * np.float64(1.0)

    assert checks.check_function(upcast, fa.linear_grad_Z, checks.make_linear_inputs, dtypes=("float64",)).passed
    r = checks.check_function(upcast, fa.linear_grad_Z, checks.make_linear_inputs, raise_on_failure=False)
    assert r.diagnoses == ("float32 upcast",) and "float64 for float32 inputs" in r.message


def test_a_correct_float32_function_passes_with_float32_tolerances_and_a_wrong_one_does_not():
    def softmax_by_lse(S):  # another correct formula: round-off differs from the reference's
        return np.exp(S - fa.logsumexp(S)[..., None])

    r = checks.check_function(softmax_by_lse, fa.softmax, checks.make_logits_inputs, dtypes=("float32",))
    assert r.passed
    Z, theta, C = (a.astype(np.float32) for a in checks.make_linear_inputs(np.random.default_rng(0)))
    ours = softmax_by_lse(Z @ theta.T)
    assert ours.dtype == np.float32 and not np.array_equal(ours, fa.softmax(Z @ theta.T))  # round-off differs
    off = lambda S: softmax_by_lse(S) * np.float32(1.001)  # noqa: E731  a 0.1 % error
    assert not checks.check_function(off, fa.softmax, checks.make_logits_inputs, dtypes=("float32",),
                                     raise_on_failure=False).passed


def test_check_gradient_uses_finite_differences_without_a_reference():
    def fd_loss(Z, theta, C):
        return fa.linear_loss(Z, theta, C)

    ok = checks.check_gradient(lambda Z, th, C: (fa.softmax(Z @ th.T) - C) @ th, fd_loss, checks.make_linear_inputs)
    assert ok.passed and "finite differences" in ok.message and "float32" not in ok.message
    r = checks.check_gradient(lambda Z, th, C: fa.softmax(Z @ th.T) @ th, fd_loss, checks.make_linear_inputs,
                              exercise="linear_grad_Z", raise_on_failure=False)
    assert r.diagnoses == ("missing - C theta",)


def test_tuple_outputs_are_checked_one_by_one_and_named():
    def no_residual(Z_bar, Z, theta, C, h):
        Z_in, th, hb = checks.reference_ca_block_vjp(Z_bar, Z, theta, C, h)
        return Z_in - Z_bar, th, hb

    r = checks.check_function(no_residual, checks.reference_ca_block_vjp, checks.make_block_vjp_inputs,
                              exercise="ca_block_vjp", raise_on_failure=False, guard=False)
    assert "`Z_bar`" in r.message and r.diagnoses == ("missing residual path in Z_bar",)
    assert checks.check_function(no_residual, checks.reference_ca_block_vjp, checks.make_block_vjp_inputs,
                                 exercise="ca_block_vjp", output=1, guard=False).passed


def test_returned_none_and_unknown_exercise_and_not_implemented():
    r = checks.check_function(lambda S: None, fa.softmax, checks.make_logits_inputs, raise_on_failure=False)
    assert "did you forget `return`" in r.message
    with pytest.raises(ValueError, match="exercise: unknown exercise 'nope'"):
        checks.check_function(fa.softmax, fa.softmax, checks.make_logits_inputs, exercise="nope")

    def stub(S):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        checks.check_function(stub, fa.softmax, checks.make_logits_inputs)


def test_check_failure_is_an_assertion_error_so_a_test_cell_fails():
    assert issubclass(checks.CheckFailure, AssertionError)


def test_bad_arguments_of_a_check_are_named():
    with pytest.raises(TypeError, match="student_fn: expected a function"):
        checks.check_function(None, fa.softmax, checks.make_logits_inputs)
    with pytest.raises(TypeError, match="make_inputs: expected a function"):
        checks.check_function(fa.softmax, fa.softmax, 3)
    with pytest.raises(ValueError, match="dtypes: expected some of float64, float32"):
        checks.check_function(fa.softmax, fa.softmax, checks.make_logits_inputs, dtypes=("float16",))
    with pytest.raises(ValueError, match="no input sets"):
        checks.check_function(fa.softmax, fa.softmax, checks.make_logits_inputs, seeds=())
    fixed = [(np.array([[1.0, 2.0], [3.0, -1.0]]),)]
    assert checks.check_function(fa.softmax, fa.softmax, fixed, guard=False).passed  # a list of fixed inputs
