"""The strict CuPy stand-in enforces CuPy's rules and counts every host-device transfer.

If these fail, the ``strict`` cases of the whole suite prove nothing.
"""

import pickle

import numpy as np
import pytest

import flowattn_np as fa
import strict_device
from strict_device import COUNTS


@pytest.fixture
def cp():
    with strict_device.installed() as module:
        yield module


def test_installing_puts_the_stand_in_in_place_of_cupy_and_removing_restores(cp):
    import sys

    assert sys.modules["cupy"] is cp and cp.__strict_standin__
    with fa.use_backend("cupy") as xp:
        assert xp is cp and isinstance(fa.asarray([1.0]), cp.ndarray)


def test_removing_the_stand_in_restores_what_was_there():
    import sys

    before = sys.modules.get("cupy")
    with strict_device.installed():
        pass
    assert sys.modules.get("cupy") is before


def test_the_device_array_is_not_a_numpy_array(cp):
    a = cp.zeros((2, 3))
    assert not isinstance(a, np.ndarray)
    assert not issubclass(cp.ndarray, np.ndarray)


@pytest.mark.parametrize("call", [
    lambda cp, a, h: a + h,
    lambda cp, a, h: h + a,
    lambda cp, a, h: a @ h.T,
    lambda cp, a, h: cp.exp(h),
    lambda cp, a, h: cp.matmul(a, h.T),
    lambda cp, a, h: cp.concatenate([a, h]),
    lambda cp, a, h: cp.take(h, cp.asarray([0]), axis=0),
    lambda cp, a, h: cp.matmul(a, a.T, out=np.empty((2, 2))),
    lambda cp, a, h: a.sum(out=np.empty(())),
    lambda cp, a, h: cp.linalg.eigh(h[:, :2] @ h[:, :2].T),
], ids=["a+h", "h+a", "a@h", "exp", "matmul", "concatenate", "take", "matmul-out", "sum-out", "eigh"])
def test_a_numpy_array_passed_to_a_device_function_raises_type_error(cp, call):
    a, h = cp.ones((2, 3)), np.ones((2, 3))
    with pytest.raises(TypeError):
        call(cp, a, h)


@pytest.mark.parametrize("convert", [np.asarray, np.array, lambda a: np.exp(a),
                                     lambda a: np.testing.assert_allclose(a, 1.0),
                                     lambda a: np.concatenate([a, a])],
                         ids=["asarray", "array", "ufunc", "testing", "function"])
def test_implicit_conversion_to_numpy_raises_type_error(cp, convert):
    with pytest.raises(TypeError):
        convert(cp.ones(3))


def test_asarray_names_the_explicit_way_out(cp):
    with pytest.raises(TypeError, match=r"Implicit conversion.*\.get\(\)"):
        np.asarray(cp.ones(2))


def test_reductions_and_single_elements_are_zero_d_device_arrays(cp):
    a = cp.asarray(np.arange(6.0).reshape(2, 3))
    for r in (a.sum(), a.max(), a.mean(), a[1, 2], cp.linalg.norm(a), a.argmax()):
        assert isinstance(r, cp.ndarray) and r.shape == ()


@pytest.mark.parametrize("read, name", [
    (float, "float"), (int, "int"), (lambda x: bool(x > 0), "bool"), (lambda x: x.item(), "item"),
    (lambda x: x.get(), "get"), (lambda x: strict_device.module.MODULE.asnumpy(x), "asnumpy"),
    (lambda x: fa.to_numpy(x), "to_numpy"), (lambda x: f"{x:.3f}", "format"), (repr, "repr"),
    (lambda x: x.tolist(), "tolist"),
])
def test_each_device_to_host_read_increments_the_read_counter(cp, read, name):
    x = cp.asarray(np.float64(2.5))
    before_reads, before_writes = COUNTS.reads, COUNTS.writes
    with COUNTS.window() as w:
        read(x)
    assert w.reads == 1 and w.writes == 0, COUNTS.describe()
    assert (COUNTS.reads, COUNTS.writes) == (before_reads + 1, before_writes)
    # the event names the line that read: this test's, or the package's helper it called
    assert w.events[0][2].split(":")[0] in ("test_strict_device.py", "backend.py"), w.describe()


@pytest.mark.parametrize("copy", [
    lambda cp, h: cp.asarray(h), lambda cp, h: cp.array(h), lambda cp, h: cp.asarray([1.0, 2.0]),
    lambda cp, h: fa.asarray(h), lambda cp, h: cp.zeros(3)[np.array([0, 1])],
    lambda cp, h: cp.zeros(3).__setitem__(slice(None), h),
    lambda cp, h: cp.zeros(3).set(h),
], ids=["asarray", "array", "asarray-list", "fa.asarray", "host-index", "host-value", "set"])
def test_each_host_to_device_copy_increments_the_write_counter(cp, copy):
    h = np.arange(3.0)
    with fa.use_backend("cupy"), COUNTS.window() as w:
        copy(cp, h)
    assert w.writes == 1 and w.reads == 0, w.describe()


def test_device_computation_transfers_nothing(cp):
    a = cp.asarray(np.random.default_rng(0).normal(size=(4, 3)))
    with COUNTS.window() as w:
        b = cp.exp(a @ a.T - a.sum(axis=1, keepdims=True))
        b /= b.sum(axis=-1, keepdims=True)
        c = cp.take(a, cp.arange(2), axis=0)
        c += 1.0
        cp.linalg.eigh(b + b.T)
        gen = cp.random.default_rng(0)
        gen.standard_normal(c.shape, dtype=c.dtype, out=c)
        _ = a[a.shape[0] - 1], a.T.copy().reshape(-1)[:2]
    assert (w.reads, w.writes) == (0, 0), w.describe()


def test_asarray_of_a_device_array_is_not_a_copy(cp):
    a = cp.ones(3)
    with COUNTS.window() as w:
        assert cp.asarray(a) is a
        assert cp.asarray(a, dtype=a.dtype) is a
    assert w.writes == 0


def test_the_random_generator_fills_out_with_cupys_checks(cp):
    gen = cp.random.default_rng(3)
    out = cp.empty((2, 3), dtype=cp.float32)
    assert gen.standard_normal((2, 3), dtype=cp.float32, out=out) is out
    with pytest.raises(TypeError, match="wrong type"):
        gen.standard_normal((2, 3), dtype=cp.float64, out=out)
    with pytest.raises(ValueError, match="size must match"):
        gen.standard_normal((3, 2), dtype=cp.float32, out=out)
    with pytest.raises(TypeError):
        gen.standard_normal((2, 3), out=np.empty((2, 3)))
    # the device stream is not NumPy's: code must not assume equal draws across backends
    host = np.random.default_rng(3).standard_normal((2, 3), dtype=np.float32)
    assert not np.array_equal(out.get(), host)


def test_a_boolean_mask_index_is_a_counted_sync(cp):
    a = cp.arange(5)
    with COUNTS.window() as w:
        a[a > 2]
    assert w.reads == 1


def test_floating_point_warnings_are_silent_as_on_a_gpu(cp):
    with COUNTS.window() as w:
        r = cp.exp(cp.asarray(np.array([1e4])))
    assert w.writes == 1 and not bool(cp.isfinite(r).all())


def test_pickling_goes_through_the_host(cp):
    a = cp.arange(3.0)
    b = pickle.loads(pickle.dumps(a))
    assert isinstance(b, cp.ndarray) and np.array_equal(b.get(), a.get())


@pytest.mark.parametrize("backend", ["strict"], indirect=True)
def test_the_backend_fixture_runs_the_stand_in_as_cupy_and_counts(backend, xp, counts):
    assert backend == "cupy" and xp.__strict_standin__
    with counts.window() as w:
        float(xp.ones(()))
    assert w.reads == 1
