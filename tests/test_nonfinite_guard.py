"""The NaN guard keeps its promise: after NonFiniteLossError every parameter equals its last
finite snapshot (the state before step k * check_every, the latest with all entries finite),
also when an update overflowed while the loss was still finite; and fit never returns
non-finite parameters silently."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowattn_np as fa
from flowattn_np.experiments.data import make_blobs
from flowattn_np.training.optim import SGD
from flowattn_np.training.train import NonFiniteLossError, fit


def _recording_net(seed, dtype):
    """A small network whose parameters are recorded before every training step."""
    net = fa.Network(fa.NetworkConfig(n_inputs=2, n_classes=3, layers=1, dtype=dtype,
                                      block=fa.BlockConfig(targets="learned", learn_h=True)),
                     seed=seed)
    states = []
    inner = net.loss_and_grads

    def recording(X, y):
        states.append({k: v.copy() for k, v in net.params.items()})
        return inner(X, y)

    net.loss_and_grads = recording  # train_step calls it first, before the update
    return net, states


def _finite(state):
    return all(np.isfinite(v).all() for v in state.values())


def _train(seed, lr, check_every, dtype="float32", momentum=0.9):
    X, y = make_blobs(24, seed=seed)
    net, states = _recording_net(seed, dtype)
    try:
        fit(net, X, y, epochs=3, batch_size=8, optimizer=SGD(net.params, lr=lr, momentum=momentum),
            progress=False, check_every=check_every, seed=seed)
        raised = False
    except NonFiniteLossError:
        raised = True
    return net, states, raised


def _assert_promise(net, states, raised, check_every):
    assert _finite(net.params), "fit left non-finite parameters"
    if raised:
        snapshots = [states[i] for i in range(0, len(states), check_every)]
        expected = [s for s in snapshots if _finite(s)][-1]
        for k, v in net.params.items():
            np.testing.assert_array_equal(v, expected[k], err_msg=k)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), log10_lr=st.floats(-2.0, 45.0),
       check_every=st.sampled_from([1, 2, 3, 5]), dtype=st.sampled_from(["float32", "float64"]))
def test_after_a_non_finite_loss_the_parameters_are_the_last_finite_snapshot(
        seed, log10_lr, check_every, dtype):
    net, states, raised = _train(seed, 10.0 ** log10_lr, check_every, dtype)
    _assert_promise(net, states, raised, check_every)


@pytest.mark.parametrize("check_every", [1, 2, 3, 4])
def test_an_update_that_overflows_while_the_loss_is_finite_is_undone(check_every):
    # lr beyond float32's range: the first update turns finite gradients into inf parameters
    net, states, raised = _train(seed=0, lr=1e39, check_every=check_every, momentum=0.0)
    assert raised
    assert _finite(states[0]) and not _finite(states[1])  # the loss of step 1 was finite
    _assert_promise(net, states, raised, check_every)
    for k, v in net.params.items():  # the only finite snapshot is the initial state
        np.testing.assert_array_equal(v, states[0][k])


def test_a_last_update_that_overflows_is_caught_at_the_end_of_the_epoch():
    X, y = make_blobs(8, seed=0)
    net, states = _recording_net(0, "float32")
    with pytest.raises(NonFiniteLossError, match="a parameter"):
        # one step per epoch: no later loss would ever see the overflowed parameters
        fit(net, X, y, epochs=1, batch_size=8, optimizer=SGD(net.params, lr=1e39, momentum=0.0),
            progress=False, check_every=1)
    assert len(states) == 1
    for k, v in net.params.items():
        np.testing.assert_array_equal(v, states[0][k])
