"""Bad inputs at the public boundary raise a clear error that names the argument."""

import numpy as np
import pytest
import scipy.special

import flowattn_np as fa

N, D, M = 4, 3, 5


def _good(seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(N, D))
    theta = rng.normal(size=(M, D))
    C = scipy.special.softmax(rng.normal(size=(N, M)), axis=1)
    phi = np.tril(rng.normal(size=(D, D))) + 2 * np.eye(D)
    Cq = scipy.special.softmax(rng.normal(size=(N, N)), axis=1)
    return dict(Z=Z, theta=theta, C=C, phi=phi, thq=phi @ phi.T, Cq=Cq)


# Every public function that validates, with how to call it from the dict above.
LINEAR_WITH_C = {
    "linear_loss": lambda a: fa.linear_loss(a["Z"], a["theta"], a["C"]),
    "linear_grad_Z": lambda a: fa.linear_grad_Z(a["Z"], a["theta"], a["C"]),
    "linear_grad_theta": lambda a: fa.linear_grad_theta(a["Z"], a["theta"], a["C"]),
    "linear_flow": lambda a: fa.linear_flow(a["Z"], a["theta"], a["C"]),
    "linear_flow_B": lambda a: fa.linear_flow_B(a["Z"], a["theta"], a["C"]),
    "linear_B_exact": lambda a: fa.linear_B_exact(a["Z"], a["theta"], a["C"], 0.1),
}
LINEAR_NO_C = {
    "cross_attention": lambda a: fa.cross_attention(a["Z"], a["theta"]),
    "linear_flow_A": lambda a: fa.linear_flow_A(a["Z"], a["theta"]),
}
QUAD_WITH_C = {
    "quadratic_loss": lambda a: fa.quadratic_loss(a["Z"], a["thq"], a["Cq"]),
    "quadratic_grad_Z": lambda a: fa.quadratic_grad_Z(a["Z"], a["thq"], a["Cq"]),
    "quadratic_grad_theta": lambda a: fa.quadratic_grad_theta(a["Z"], a["thq"], a["Cq"]),
    "quadratic_flow": lambda a: fa.quadratic_flow(a["Z"], a["thq"], a["Cq"]),
    "quadratic_flow_B": lambda a: fa.quadratic_flow_B(a["Z"], a["thq"], a["Cq"]),
    "quadratic_B_exact": lambda a: fa.quadratic_B_exact(a["Z"], a["thq"], a["Cq"], 0.1),
}
QUAD_NO_C = {
    "self_attention": lambda a: fa.self_attention(a["Z"], a["thq"]),
    "self_attention_adjoint": lambda a: fa.self_attention_adjoint(a["Z"], a["thq"]),
    "quadratic_flow_A": lambda a: fa.quadratic_flow_A(a["Z"], a["thq"]),
}
LINEAR = {**LINEAR_WITH_C, **LINEAR_NO_C}
QUAD = {**QUAD_WITH_C, **QUAD_NO_C}
WITH_C = {**LINEAR_WITH_C, **QUAD_WITH_C}


def _raises(fn, args, exc_type, *needles):
    with pytest.raises(exc_type) as info:
        fn(args)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in error message: {msg}"
    return msg


@pytest.mark.parametrize("name", sorted(LINEAR) + sorted(QUAD) + ["quadratic_grad_phi"])
def test_the_valid_inputs_used_here_are_accepted(name):
    fn = {**LINEAR, **QUAD, "quadratic_grad_phi": lambda a: fa.quadratic_grad_phi(a["Z"], a["phi"], a["Cq"])}
    assert np.isfinite(fn[name](_good())).all()


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", sorted(LINEAR))
def test_theta_with_the_wrong_number_of_columns_is_rejected_naming_theta(name):
    a = _good()
    a["theta"] = np.ones((M, D + 1))
    msg = _raises(LINEAR[name], a, ValueError, "theta")
    assert str(D) in msg and str(D + 1) in msg


@pytest.mark.parametrize("name", sorted(LINEAR_WITH_C))
def test_labels_with_the_wrong_number_of_rows_are_rejected_naming_C(name):
    a = _good()
    a["C"] = np.full((N + 1, M), 1.0 / M)
    _raises(LINEAR_WITH_C[name], a, ValueError, "C:")


@pytest.mark.parametrize("name", sorted(LINEAR_WITH_C))
def test_labels_with_the_wrong_number_of_classes_are_rejected_naming_C(name):
    a = _good()
    a["C"] = np.full((N, M + 1), 1.0 / (M + 1))
    _raises(LINEAR_WITH_C[name], a, ValueError, "C:", "classes")


@pytest.mark.parametrize("name", sorted(QUAD))
def test_quadratic_theta_of_the_wrong_size_is_rejected_naming_theta(name):
    a = _good()
    a["thq"] = np.eye(D + 1)
    _raises(QUAD[name], a, ValueError, "theta")


@pytest.mark.parametrize("name", sorted(QUAD_WITH_C))
def test_quadratic_labels_that_are_not_n_by_n_are_rejected_naming_C(name):
    a = _good()
    a["Cq"] = np.full((N, N + 1), 1.0 / (N + 1))
    _raises(QUAD_WITH_C[name], a, ValueError, "C:")


def test_quadratic_batch_labels_must_match_the_batch_of_Z():
    a = _good()
    Z = np.stack([a["Z"], a["Z"]])
    with pytest.raises(ValueError, match="C:"):
        fa.quadratic_loss(Z, a["thq"], np.stack([a["Cq"]] * 3))


@pytest.mark.parametrize("name", sorted(LINEAR))
def test_features_that_are_not_a_matrix_are_rejected_naming_Z(name):
    a = _good()
    a["Z"] = a["Z"][0]
    _raises(LINEAR[name], a, ValueError, "Z:", "2-D")


def test_phi_of_the_wrong_size_is_rejected_naming_phi():
    a = _good()
    with pytest.raises(ValueError, match="phi"):
        fa.quadratic_grad_phi(a["Z"], np.eye(D + 1), a["Cq"])


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize("name", sorted(WITH_C))
def test_label_rows_with_negative_entries_are_rejected(name):
    a = _good()
    for key in ("C", "Cq"):
        a[key] = a[key].copy()
        a[key][0] = 0.0
        a[key][0, :2] = [-0.5, 1.5]  # still sums to 1, so only the sign is wrong
    msg = _raises(WITH_C[name], a, ValueError, "C:", "negative")
    assert "probability" in msg


@pytest.mark.parametrize("name", sorted(WITH_C))
@pytest.mark.parametrize("factor", [0.5, 1.01])
def test_label_rows_that_do_not_sum_to_1_are_rejected(name, factor):
    a = _good()
    a["C"], a["Cq"] = a["C"] * factor, a["Cq"] * factor
    _raises(WITH_C[name], a, ValueError, "C:", "sum to 1")


def test_label_rows_within_round_off_of_1_are_accepted():
    a = _good()
    fa.linear_loss(a["Z"], a["theta"], a["C"] * (1 + 1e-12))
    C32 = (a["C"] * (1 + 1e-6)).astype(np.float32)
    fa.linear_loss(a["Z"].astype(np.float32), a["theta"].astype(np.float32), C32)


def test_each_head_of_the_labels_must_sum_to_1():
    a = _good()
    C = np.hstack([np.eye(3)[[0, 1, 2, 0]], np.full((N, 2), 0.5)])
    fa.linear_loss(a["Z"], a["theta"], C, heads=(3, 2))  # valid
    C[:, 3:] = 0.25
    with pytest.raises(ValueError, match="head 1") as info:
        fa.linear_loss(a["Z"], a["theta"], C, heads=(3, 2))
    assert "C:" in str(info.value) and "sum to 1" in str(info.value)


# ---------------------------------------------------------------- NaN / inf


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("arg", ["Z", "theta", "C"])
@pytest.mark.parametrize("name", sorted(LINEAR_WITH_C))
def test_non_finite_linear_inputs_are_rejected_naming_the_argument(name, arg, bad):
    a = _good()
    a[arg] = a[arg].copy()
    a[arg][1, 1] = bad
    _raises(LINEAR_WITH_C[name], a, ValueError, f"{arg}:", "finite")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("arg,label", [("Z", "Z"), ("thq", "theta"), ("Cq", "C")])
@pytest.mark.parametrize("name", sorted(QUAD_WITH_C))
def test_non_finite_quadratic_inputs_are_rejected_naming_the_argument(name, arg, label, bad):
    a = _good()
    a[arg] = a[arg].copy()
    a[arg][1, 1] = bad
    _raises(QUAD_WITH_C[name], a, ValueError, f"{label}:", "finite")


@pytest.mark.parametrize("arg", ["Z", "phi", "Cq"])
def test_non_finite_inputs_to_grad_phi_are_rejected_naming_the_argument(arg):
    a = _good()
    a[arg] = a[arg].copy()
    a[arg][1, 0] = np.nan
    with pytest.raises(ValueError, match={"Z": "Z:", "phi": "phi:", "Cq": "C:"}[arg]):
        fa.quadratic_grad_phi(a["Z"], a["phi"], a["Cq"])


# ---------------------------------------------------------------- dtypes, types


@pytest.mark.parametrize("name", sorted(LINEAR) + sorted(QUAD))
def test_integer_features_raise_a_type_error_naming_Z(name):
    a = _good()
    a["Z"] = np.ones((N, D), dtype=np.int64)
    _raises({**LINEAR, **QUAD}[name], a, TypeError, "Z:", "floating")


def test_integer_theta_and_labels_raise_type_errors_naming_them():
    a = _good()
    with pytest.raises(TypeError, match="theta:"):
        fa.linear_grad_Z(a["Z"], np.ones((M, D), dtype=np.int32), a["C"])
    with pytest.raises(TypeError, match="C:"):
        fa.linear_grad_Z(a["Z"], a["theta"], np.eye(M, dtype=np.int64)[[0, 1, 2, 3]])
    with pytest.raises(TypeError, match="phi:"):
        fa.quadratic_grad_phi(a["Z"], np.eye(D, dtype=np.int64), a["Cq"])


def test_a_list_instead_of_an_array_raises_a_type_error_naming_it():
    a = _good()
    with pytest.raises(TypeError, match="Z:"):
        fa.linear_loss(a["Z"].tolist(), a["theta"], a["C"])


def test_mixed_float_dtypes_are_rejected_naming_both_arguments():
    a = _good()
    with pytest.raises(TypeError) as info:
        fa.linear_grad_Z(a["Z"].astype(np.float32), a["theta"], a["C"])
    assert "Z is float32" in str(info.value) and "theta is float64" in str(info.value)


# ---------------------------------------------------------------- symmetry, heads, steps


@pytest.mark.parametrize("name", sorted(QUAD))
def test_a_non_symmetric_theta_is_rejected_by_the_quadratic_model(name):
    a = _good()
    a["thq"] = a["thq"] + np.triu(np.ones((D, D)), 1) * 0.1
    msg = _raises(QUAD[name], a, ValueError, "theta:", "symmetric")
    assert "theta_from_phi" in msg


def test_a_theta_symmetric_up_to_round_off_is_accepted():
    a = _good()
    th = a["thq"].copy()
    th[0, 1] += 1e-15 * np.abs(th).max()
    fa.quadratic_loss(a["Z"], th, a["Cq"])


@pytest.mark.parametrize("heads", [(3, 3), (5, 1), (0, 5), (-1, 6), (6, -1), ()])
def test_heads_that_do_not_partition_the_classes_are_rejected_naming_heads(heads):
    a = _good()
    for fn in (lambda: fa.linear_loss(a["Z"], a["theta"], a["C"], heads=heads),
               lambda: fa.linear_grad_Z(a["Z"], a["theta"], a["C"], heads=heads),
               lambda: fa.cross_attention(a["Z"], a["theta"], heads=heads),
               lambda: fa.LinearModel(a["theta"], heads=heads)):
        with pytest.raises(ValueError, match="heads") as info:
            fn()
        assert str(M) in str(info.value)


@pytest.mark.parametrize("heads", [5, ("a", "b")])
def test_heads_of_the_wrong_type_raise_an_error_naming_heads(heads):
    a = _good()
    with pytest.raises((TypeError, ValueError), match="heads"):
        fa.linear_loss(a["Z"], a["theta"], a["C"], heads=heads)


@pytest.mark.parametrize("t", [np.nan, np.inf])
def test_a_non_finite_time_is_rejected_naming_t(t):
    a = _good()
    with pytest.raises(ValueError, match="t:"):
        fa.linear_B_exact(a["Z"], a["theta"], a["C"], t)
    with pytest.raises(ValueError, match="t:"):
        fa.quadratic_B_exact(a["Z"], a["thq"], a["Cq"], t)


def test_a_non_numeric_time_raises_a_type_error_naming_t():
    a = _good()
    with pytest.raises(TypeError, match="t:"):
        fa.linear_B_exact(a["Z"], a["theta"], a["C"], "0.1x")


def test_gradcheck_rejects_a_gradient_of_the_wrong_shape_naming_grad():
    a = _good()
    with pytest.raises(ValueError, match="grad"):
        fa.gradcheck(lambda Z: fa.linear_loss(Z, a["theta"], a["C"]), a["Z"], np.ones((D, N)))


def test_validation_errors_are_raised_before_inputs_are_touched():
    a = _good()
    C = a["C"].copy()
    C[0, 0] = np.nan
    Z0, C0 = a["Z"].copy(), C.copy()
    with pytest.raises(ValueError):
        fa.linear_grad_Z(a["Z"], a["theta"], C)
    np.testing.assert_array_equal(a["Z"], Z0)
    np.testing.assert_array_equal(C, C0)


@pytest.mark.parametrize("model", ["linear", "quadratic"])
def test_targets_of_another_dtype_are_rejected_naming_C(model):
    Z = np.zeros((3, 2), dtype=np.float32)
    if model == "linear":
        theta, C = np.zeros((4, 2), np.float32), np.full((3, 4), 0.25)
        call = lambda: fa.linear_loss(Z, theta, C)  # noqa: E731
    else:
        theta, C = np.eye(2, dtype=np.float32), np.full((3, 3), 1 / 3)
        call = lambda: fa.quadratic_loss(Z, theta, C)  # noqa: E731
    with pytest.raises(TypeError, match="C is float64"):
        call()


def test_a_phi_that_is_not_lower_triangular_is_rejected_naming_phi():
    Z = np.ones((3, 2))
    C = np.full((3, 3), 1 / 3)
    phi = np.array([[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="phi: expected a lower-triangular"):
        fa.quadratic_grad_phi(Z, phi, C)
