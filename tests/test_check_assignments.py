"""The checker's catalogue as the assignments use it.

The fifth assignment's exercises declare their building blocks (a student's MLP oracle may
call fa.softmax and fa.softmax_vjp, not the package's MLP), are diagnosed by terms, and
trace a failure to the oracle they use; the loss a training test differentiates may call
the checks.reference_* helpers, which stay out of reach of the student's function. An
exercise whose point is to derive a formula (a1's grad_theta, a5's gelu_grad) never states it in
a message.
"""

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.teaching import checks
from flowattn_np.equations.mlp import MLPCache


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))


def gelu_grad(x):
    t = np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3 * 0.044715 * x * x)


def oracle(Z, W1, b1, W2, b2):
    return fa.softmax(gelu(Z @ W1.T + b1) @ W2.T + b2)


def oracle_wrong_axis(Z, W1, b1, W2, b2):
    return fa.softmax((gelu(Z @ W1.T + b1) @ W2.T + b2).T).T


def oracle_vjp(C_bar, Z, W1, b1, W2, b2):
    """The a5 solution's backward, from the allowed fa.softmax_vjp."""
    A = Z @ W1.T + b1
    H = gelu(A)
    Y_bar = fa.softmax_vjp(oracle(Z, W1, b1, W2, b2), C_bar)
    A_bar = (Y_bar @ W2) * gelu_grad(A)
    return A_bar @ W1, A_bar.T @ Z, A_bar.sum(axis=0), Y_bar.T @ H, Y_bar.sum(axis=0)


def oracle_vjp_copied_from_the_mlp_alone_cell(C_bar, Z, W1, b1, W2, b2):
    """What a student copies from a5's MLP-alone cell: the package's MLP backward."""
    A = Z @ W1.T + b1
    Y_bar = fa.softmax_vjp(oracle(Z, W1, b1, W2, b2), C_bar)
    Z_bar, g = fa.mlp_logits_vjp(Y_bar, MLPCache(Z, A, gelu(A), W1, W2, "gelu"))
    return Z_bar, g["W1"], g["b1"], g["W2"], g["b2"]


def block(Z, theta, h, W1, b1, W2, b2, oracle=oracle, label_step=1.0):
    Z_half = Z - h * (fa.softmax(Z @ theta.T) @ theta)
    return Z_half + label_step * h * (oracle(Z_half, W1, b1, W2, b2) @ theta)


def block_grouped(Z, theta, h, W1, b1, W2, b2):
    """The same block by an equal formula: Z + h (C_hat(Z_half) theta - CA(Z, theta))."""
    CA = fa.cross_attention(Z, theta)
    return Z + h * (oracle(Z - h * CA, W1, b1, W2, b2) @ theta - CA)


def test_the_a5_oracle_backward_may_use_softmax_vjp_but_not_the_packages_mlp():
    ok = checks.check_function(oracle_vjp, checks.reference_mlp_oracle_vjp, checks.make_mlp_vjp_inputs,
                               exercise="mlp_oracle_vjp")
    assert ok.passed
    r = checks.check_function(oracle_vjp_copied_from_the_mlp_alone_cell, checks.reference_mlp_oracle_vjp,
                              checks.make_mlp_vjp_inputs, exercise="mlp_oracle_vjp", output=0, raise_on_failure=False)
    assert not r.passed
    assert "your oracle_backward called flowattn_np.mlp_logits_vjp" in r.message
    assert "write it from fa.softmax, fa.logsumexp, fa.softmax_vjp, fa.cross_attention and NumPy" in r.message
    with pytest.raises(checks.ReferenceCalled):
        checks.check_function(lambda x: fa.gelu(x), fa.gelu, checks.make_activation_inputs, exercise="gelu")


def test_the_a5_block_passes_by_an_equal_formula_and_a_half_label_step_is_named_by_terms():
    assert checks.check_function(block_grouped, checks.reference_mlp_block, checks.make_mlp_block_inputs,
                                 exercise="mlp_block").passed
    r = checks.check_function(lambda *a: block(*a, label_step=0.5), checks.reference_mlp_block,
                              checks.make_mlp_block_inputs, exercise="mlp_block", raise_on_failure=False)
    assert r.diagnoses == ("h C_hat(Z_half) theta taken with a step h/2 instead of h",)
    assert ("your result is exactly Z - h CA(Z, theta) + (1/2) h C_hat(Z_half) theta: the term "
            "h C_hat(Z_half) theta is taken with a step h/2 instead of h") in r.message


def test_a_term_left_out_of_the_a5_block_backward_is_named():
    def vjp(Z_bar, Z, theta, h, W1, b1, W2, b2):
        out = list(checks.reference_mlp_block_vjp(Z_bar, Z, theta, h, W1, b1, W2, b2))
        C_hat = oracle(Z - h * fa.cross_attention(Z, theta), W1, b1, W2, b2)
        out[2] = out[2] - (Z_bar * (C_hat @ theta)).sum()  # h_bar without the oracle's <Z_bar, C_hat theta>
        return tuple(out)

    r = checks.check_function(vjp, checks.reference_mlp_block_vjp, checks.make_mlp_block_vjp_inputs,
                              exercise="mlp_block_vjp", output=2, raise_on_failure=False, guard=False)
    assert r.diagnoses == ("missing <Z_bar, C_hat theta>",)
    assert "`h_bar`" in r.message


def test_an_a5_block_failure_is_traced_to_the_students_oracle():
    def forward(*a):
        return block(*a, oracle=oracle_wrong_axis)

    r = checks.check_function(forward, checks.reference_mlp_block, checks.make_mlp_block_inputs, exercise="mlp_block",
                              uses={"oracle_forward": (oracle_wrong_axis, "mlp_oracle")}, raise_on_failure=False)
    assert not r.passed
    assert "This uses your `oracle_forward`, which fails its own test above:" in r.message
    assert "Diagnosis - softmax over the wrong axis" in r.message


def network_loss(X, y, theta, h, W1, b1, W2, b2):
    """The loss a5's training test differentiates: it calls checks.reference_mlp_block itself."""
    Z = checks.reference_mlp_block(checks.reference_mlp_block(X, theta, h, W1, b1, W2, b2), theta, h, W1, b1, W2, b2)
    C = np.eye(theta.shape[0])[y]
    return (fa.logsumexp(Z @ theta.T) - (C * (Z @ theta.T)).sum(axis=1)).mean()


def test_the_training_gate_differentiates_a_loss_of_references_and_refuses_a_copying_network():
    def network_grads(X, y, theta, h, W1, b1, W2, b2):  # written from the allowed blocks
        return checks.reference_mlp_network(X, y, theta, h, W1, b1, W2, b2)

    kw = dict(wrt=2, output=0, dtypes=("float64",), seeds=(6,), exercise="mlp_network")
    assert checks.check_gradient(network_grads, network_loss, checks.make_mlp_network_inputs, guard=False, **kw).passed
    r = checks.check_gradient(network_grads, network_loss, checks.make_mlp_network_inputs, raise_on_failure=False, **kw)
    assert not r.passed and "your network_loss_and_grads called checks.reference_mlp_network" in r.message


def grad_theta_averaged(Z, theta, C):
    return (fa.softmax(Z @ theta.T) - C).T @ Z / Z.shape[0]


def grad_theta_label_flipped(Z, theta, C):
    return (fa.softmax(Z @ theta.T) + C).T @ Z


def grad_theta_without_label(Z, theta, C):
    return fa.softmax(Z @ theta.T).T @ Z


@pytest.mark.parametrize("student", [grad_theta_averaged, grad_theta_label_flipped, grad_theta_without_label])
def test_no_message_of_the_grad_theta_exercise_states_the_formula_a1_asks_to_derive(student):
    for check in (checks.check_function, checks.check_gradient):
        reference = fa.linear_grad_theta if check is checks.check_function else fa.linear_loss
        kw = {} if check is checks.check_function else {"wrt": 1, "reference_grad": fa.linear_grad_theta}
        r = check(student, reference, checks.make_linear_inputs, exercise="linear_grad_theta", raise_on_failure=False,
                  **kw)
        assert not r.passed and r.diagnoses, r.message
        for formula in ("C^T Z", "C)^T Z", "sigma(Z theta^T)^T Z", "G^T Z", "G.T @ Z", "^T Z"):
            assert formula not in r.message, r.message


# ---------------------------------------------------------------- the messages docs/teaching.md shows


def a2_block_forward_half_step(Z, theta, C, h):
    return Z - (h / 2) * (fa.softmax(Z @ theta.T) @ theta) + h * (C @ theta)


def a1_grad_Z_copied(Z, theta, C):
    return fa.linear_grad_Z(Z, theta, C)


def a1_logsumexp_global_max(S):
    c = S.max()
    return c + np.log(np.exp(S - c).sum(axis=-1))


def a1_cross_entropy(Z, theta, C):
    logits = Z @ theta.T
    return -(C * logits).sum() + a1_logsumexp_global_max(logits).sum()


def test_the_messages_in_the_teaching_guide_are_the_checkers_own():
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "teaching.md").read_text(encoding="utf-8")
    results = [
        checks.check_function(a2_block_forward_half_step, checks.reference_ca_block, checks.make_block_inputs,
                              exercise="ca_block", raise_on_failure=False),
        checks.check_function(a1_grad_Z_copied, fa.linear_grad_Z, checks.make_linear_inputs, exercise="linear_grad_Z",
                              raise_on_failure=False),
        checks.check_function(a1_cross_entropy, fa.linear_loss, checks.make_linear_inputs, exercise="cross_entropy",
                              uses={"logsumexp": a1_logsumexp_global_max}, raise_on_failure=False),
    ]
    assert [r.diagnoses[:1] for r in results] == [
        ("- h CA(Z, theta) taken with a step h/2 instead of h",), (), ("underflow: shifted by the global maximum",)]
    for r in results:
        assert f"```\n{r.message}\n```" in guide, r.message


def test_no_message_of_the_gelu_grad_exercise_states_the_derivative_a5_asks_to_derive():
    def upcast(x):  # right values, wrong dtype: the message shows the title and no diagnosis of the formula
        t = np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))
        return np.asarray(0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 *
                          (1.0 + 3 * 0.044715 * x * x), dtype=np.float64)

    def first_half(x):
        return 0.5 * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))

    def without_du_dx(x):
        t = np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t)

    for student in (upcast, first_half, without_du_dx):
        r = checks.check_function(student, fa.gelu_grad, checks.make_activation_inputs, exercise="gelu_grad",
                                  raise_on_failure=False)
        assert not r.passed
        for formula in ("(1 + t)/2", "(1 - t^2)", "1 + 3 * 0.044715 x^2"):
            assert formula not in r.message, r.message
