"""Network(threads=k): a batch cut along its first axis, the parts run in host threads, the
losses and gradients recombined by row weights, equal to one thread's results."""

import os

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.blocks import network as network_module
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.network import Network, NetworkConfig
from flowattn_np.training.optim import SGD
from test_network import GRAD_CASES, make_data, net_of, randomise

TOL = 1e-12

CASES = {**GRAD_CASES,
         "quadratic-none-fused": (BlockConfig(model="quadratic", targets="none", h=0.2), True, "identity"),
         "quadratic-learned-fused-untied": (BlockConfig(model="quadratic", targets="learned", h=0.2,
                                                        learn_h=True), False, "linear"),
         "quadratic-mlp": (BlockConfig(model="quadratic", targets="mlp", mlp_hidden=5, h=0.2), True, "identity"),
         "linear-normalised": (BlockConfig(targets="labels", h=0.3, norm="sphere"), True, "linear")}


@pytest.fixture
def small_parts(monkeypatch):
    """Split every batch, however small, so that the tests' tiny batches take the threads."""
    monkeypatch.setattr(network_module, "THREAD_MIN_PART", 1)


def _pair(case, threads):
    block, tied, encoding = CASES[case]
    one = randomise(net_of(block, tied=tied, encoding=encoding))
    many = Network(one.config, params=dict(one.params), threads=threads)
    return one, many


def _close(a, b):
    return np.abs(a - b).max() <= TOL * max(np.abs(b).max(), 1.0)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_threads_give_one_threads_loss_gradients_and_logits(case, threads, small_parts):
    one, many = _pair(case, threads)
    X, y = make_data(one.config)
    assert len(many.batch_parts(X)) == min(threads, X.shape[0]) >= 2
    loss_1, grads_1, logits_1 = one.loss_and_grads(X, y)
    loss_k, grads_k, logits_k = many.loss_and_grads(X, y)
    assert abs(float(loss_k) - float(loss_1)) <= TOL * abs(float(loss_1))
    assert set(grads_k) == set(grads_1)
    for name in grads_1:
        assert grads_k[name].dtype == grads_1[name].dtype
        assert _close(grads_k[name], grads_1[name]), (name, np.abs(grads_k[name] - grads_1[name]).max())
    assert logits_k.shape == logits_1.shape and _close(logits_k, logits_1)


def test_uneven_parts_are_weighted_by_their_rows(small_parts):
    """Three sequences in two parts (2 + 1): an unweighted mean of the parts would differ."""
    cfg = NetworkConfig(n_inputs=4, layers=2, block=BlockConfig(model="quadratic", targets="none", h=0.2))
    one = randomise(Network(cfg, seed=3))
    many = Network(cfg, params=dict(one.params), threads=2)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(3, 5, 4)), rng.integers(0, 5, (3, 5))
    assert [(p.start, p.stop) for p in many.batch_parts(X)] == [(0, 2), (2, 3)]
    loss_1, grads_1, _ = one.loss_and_grads(X, y)
    loss_k, grads_k, _ = many.loss_and_grads(X, y)
    assert abs(float(loss_k) - float(loss_1)) <= TOL * abs(float(loss_1))
    assert _close(grads_k["phi"], grads_1["phi"])


def test_float32_stays_float32(small_parts):
    block, tied, encoding = CASES["quadratic-none-fused"]
    net = net_of(block, tied=tied, encoding=encoding, dtype="float32")
    net = Network(net.config, params=net.params, threads=2)
    X, y = make_data(net.config, dtype="float32")
    loss, grads, logits = net.loss_and_grads(X, y)
    assert loss.dtype == logits.dtype == np.float32
    assert {str(g.dtype) for g in grads.values()} == {"float32"}


def test_training_with_threads_follows_one_thread(small_parts):
    one, many = _pair("quadratic-learned-fused-untied", 2)
    X, y = make_data(one.config)
    opts = [SGD(net.params, lr=0.05, momentum=0.9) for net in (one, many)]
    for _ in range(5):
        for net, opt in zip((one, many), opts):
            opt.step(net.loss_and_grads(X, y)[1])
    for name in one.params:
        assert _close(many.params[name], one.params[name]), name


def test_small_batches_and_one_thread_are_not_split():
    cfg = NetworkConfig(n_inputs=8, layers=1, block=BlockConfig(model="quadratic", targets="none"))
    X = np.zeros((32, 16, 8))
    assert Network(cfg, threads=4).batch_parts(X) == [slice(0, 32)]  # work 4096 x 16: too small
    big = np.zeros((16, 64, 64))  # work 65536 x 64: two parts of the minimum size
    assert Network(cfg, threads=4).batch_parts(big) == [slice(0, 8), slice(8, 16)]
    assert Network(cfg, threads=1).batch_parts(big) == [slice(0, 16)]
    linear = NetworkConfig(n_inputs=784, layers=1)  # 10 classes
    assert len(Network(linear, threads=2).batch_parts(np.zeros((256, 784)))) == 1
    assert len(Network(linear, threads=2).batch_parts(np.zeros((1024, 784)))) == 2


def test_a_single_sequence_is_not_cut_between_its_tokens(small_parts):
    """Tokens of one sequence attend to each other: (n, p) input to the quadratic model runs whole."""
    cfg = NetworkConfig(n_inputs=4, layers=1, block=BlockConfig(model="quadratic", targets="none", h=0.2))
    one = randomise(Network(cfg, seed=2))
    many = Network(cfg, params=dict(one.params), threads=2)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 6, 6)
    assert many.batch_parts(X) == [slice(0, 6)]
    assert float(many.loss_and_grads(X, y)[0]) == float(one.loss_and_grads(X, y)[0])


def test_device_batches_are_not_split(backend, small_parts):
    cfg = NetworkConfig(n_inputs=4, layers=1, block=BlockConfig(model="quadratic", targets="none"))
    net = Network(cfg, threads=2)
    X = fa.asarray(np.zeros((4, 3, 4)))
    assert len(net.batch_parts(X)) == (2 if backend == "numpy" else 1)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError),
                                        (True, TypeError)])
def test_bad_thread_counts_are_refused_by_name(bad, error):
    cfg = NetworkConfig(n_inputs=4, layers=1)
    with pytest.raises(error, match="^threads: expected a whole number"):
        Network(cfg, threads=bad)


# ---------------------------------------------------------------- the thread policy (threads.py)

from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from flowattn_np import threads as policy_module  # noqa: E402
from flowattn_np import cli  # noqa: E402
from flowattn_np.training.train import evaluate, fit  # noqa: E402


@pytest.fixture
def clean_policy(monkeypatch):
    """No set_threads and no FLOWATTN_THREADS, whatever the test does or the caller set."""
    monkeypatch.delenv(policy_module.ENV_VAR, raising=False)
    monkeypatch.setitem(policy_module._state, "setting", None)


def test_policy_precedence_argument_then_set_threads_then_environment_then_default(clean_policy, monkeypatch):
    default = policy_module.policy()
    assert default.threads == fa.available_cpus() and default.blas_threads == 1
    assert default.source.startswith("default")
    monkeypatch.setenv("FLOWATTN_THREADS", "3")
    assert (policy_module.policy().threads, policy_module.policy().source) == (3, "FLOWATTN_THREADS")
    fa.set_threads(5)
    assert (policy_module.policy().threads, policy_module.policy().source) == (5, "set_threads")
    assert (policy_module.policy(2).threads, policy_module.policy(2).source) == (2, "argument")
    assert fa.set_threads(None) == 5
    assert policy_module.policy().threads == 3  # back to the environment
    monkeypatch.setenv("FLOWATTN_THREADS", "off")
    off = policy_module.policy()
    assert (off.threads, off.blas_threads) == (1, None)


def test_network_threads_follow_the_policy_unless_given(clean_policy, monkeypatch):
    cfg = NetworkConfig(n_inputs=4, layers=1)
    net, fixed = Network(cfg), Network(cfg, threads=2)
    monkeypatch.setenv("FLOWATTN_THREADS", "3")
    assert (net.threads, fixed.threads) == (3, 2)
    fa.set_threads(4)  # read at every call: a network made before follows
    assert (net.threads, fixed.threads) == (4, 2)
    fa.set_threads("off")
    assert (net.threads, fixed.threads) == (1, 2)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), ("zero", ValueError), ("1.5", ValueError), ("\u00b2", ValueError),
                                        (1.5, TypeError), (True, TypeError), ([2], TypeError)])
def test_bad_settings_are_refused_by_name(bad, error, clean_policy, monkeypatch):
    with pytest.raises(error, match="^threads: expected a whole number >= 1 or 'off'"):
        fa.set_threads(bad)
    assert policy_module._state["setting"] is None  # a refused setting changes nothing
    if isinstance(bad, (int, str)) and not isinstance(bad, bool):
        monkeypatch.setenv("FLOWATTN_THREADS", str(bad))
        with pytest.raises(ValueError, match="^environment variable FLOWATTN_THREADS: expected"):
            policy_module.policy()


def _numpy_blas_threads():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def _quadratic_case():
    cfg = NetworkConfig(n_inputs=8, layers=2, block=BlockConfig(model="quadratic", targets="none", h=0.2))
    rng = np.random.default_rng(0)
    return Network(cfg, seed=1), rng.normal(size=(6, 5, 8)), rng.integers(0, 5, (6, 5))


@pytest.mark.parametrize("setting, inside", [(None, 1), ("off", 2)])
def test_blas_is_one_thread_inside_the_package_and_restored_after(setting, inside, clean_policy, small_parts):
    net, X, y = _quadratic_case()
    fa.set_threads(setting)
    seen = []
    original = net._loss_and_grads

    def spy(*args):
        seen.append(_numpy_blas_threads())
        return original(*args)

    net._loss_and_grads = spy
    with threadpool_limits(limits=2, user_api="blas"):  # the user's own setting outside
        before = _numpy_blas_threads()
        assert before and set(before) == {2}
        net.loss_and_grads(X, y)
        assert seen and all(s == [inside] * len(before) for s in seen)
        assert _numpy_blas_threads() == before
        net.forward(X)
        net.loss(X, y)
        assert _numpy_blas_threads() == before
        with pytest.raises(ValueError):  # restored after an error too
            net.loss_and_grads(X[..., :3], y)
        assert _numpy_blas_threads() == before


def test_fit_and_evaluate_restore_blas_threads(clean_policy):
    cfg = NetworkConfig(n_inputs=6, n_classes=3, layers=1)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 6)), rng.integers(0, 3, 40)
    net = Network(cfg)
    inside = []
    with threadpool_limits(limits=2, user_api="blas"):
        before = _numpy_blas_threads()
        fit(net, X, y, epochs=1, batch_size=8, progress=False,
            optimizer=_Recording(net.params, inside))
        evaluate(net, X, y)
        assert _numpy_blas_threads() == before
    assert inside and {tuple(s) for s in inside} == {(1,) * len(before)}


class _Recording(SGD):
    """SGD that notes BLAS's threads at every step (inside fit)."""

    def __init__(self, params, seen):
        super().__init__(params, lr=0.01)
        self.seen = seen

    def step(self, grads):
        self.seen.append(_numpy_blas_threads())
        return super().step(grads)


def test_nested_and_threaded_package_calls_restore_once(clean_policy):
    with threadpool_limits(limits=2, user_api="blas"):
        before = _numpy_blas_threads()
        with policy_module.package_compute():
            with policy_module.package_compute():
                assert set(_numpy_blas_threads()) == {1}
            assert set(_numpy_blas_threads()) == {1}  # the inner exit does not restore early
        assert _numpy_blas_threads() == before


@pytest.mark.parametrize("case", ["quadratic-none-fused", "quadratic-learned-fused-untied", "linear-normalised"])
def test_the_default_policy_gives_one_threads_results(case, clean_policy, small_parts):
    """The default network (threads from the policy) against threads=1, float64, 1e-12."""
    block, tied, encoding = CASES[case]
    one = randomise(net_of(block, tied=tied, encoding=encoding))
    one = Network(one.config, params=dict(one.params), threads=1)
    fa.set_threads(3)
    default = Network(one.config, params=dict(one.params))
    X, y = make_data(one.config)
    assert len(default.batch_parts(X)) == min(3, X.shape[0]) >= 2
    loss_1, grads_1, _ = one.loss_and_grads(X, y)
    loss_k, grads_k, _ = default.loss_and_grads(X, y)
    assert abs(float(loss_k) - float(loss_1)) <= TOL * abs(float(loss_1))
    for name in grads_1:
        assert _close(grads_k[name], grads_1[name]), name


# ---------------------------------------------------------------- the CPUs a process may use

def _fake_cgroup(root, proc_line, files):
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(proc_line + "\n")
    for path, text in files.items():
        (root / "sys/fs/cgroup" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "sys/fs/cgroup" / path).write_text(text + "\n")
    return str(root)


def test_affinity_mask_limits_the_count(tmp_path):
    report = policy_module.cpu_report(root=str(tmp_path), affinity={0, 3, 5}, cpu_count=16)
    assert report["available"] == 3 and report["limited_by"] == "affinity mask"
    assert report["os_cpu_count"] == 16 and report["cgroup_quota"] is None


@pytest.mark.parametrize("files, quota, available", [
    ({"user.slice/job/cpu.max": "150000 100000"}, 1.5, 2),  # 1.5 CPUs: two threads, rounded up
    ({"user.slice/job/cpu.max": "max 100000"}, None, 8),
    ({"user.slice/job/cpu.max": "max 100000", "user.slice/cpu.max": "50000 100000"}, 0.5, 1),  # a parent's
    ({"cpu.max": "300000 100000"}, 3.0, 3),  # a container: its cgroup is the mount's root
    ({"user.slice/job/cpu.max": "400000 100000", "user.slice/cpu.max": "100000 100000"}, 1.0, 1),  # smallest
])
def test_cgroup_v2_quota_limits_the_count(tmp_path, files, quota, available):
    root = _fake_cgroup(tmp_path, "0::/user.slice/job", files)
    report = policy_module.cpu_report(root=root, affinity=set(range(8)), cpu_count=8)
    assert report["cgroup_quota"] == quota and report["available"] == available
    if quota is not None:
        assert report["limited_by"] == "cgroup quota"


@pytest.mark.parametrize("quota_us, quota, available", [("200000", 2.0, 2), ("-1", None, 4), ("250000", 2.5, 3)])
def test_cgroup_v1_quota_limits_the_count(tmp_path, quota_us, quota, available):
    root = _fake_cgroup(tmp_path, "5:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc",
                        {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": quota_us,
                         "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"})
    report = policy_module.cpu_report(root=root, affinity=set(range(4)), cpu_count=4)
    assert report["cgroup_quota"] == quota and report["available"] == available


def test_no_cgroup_files_and_garbage_mean_no_quota(tmp_path):
    assert policy_module.cgroup_cpu_quota(str(tmp_path)) is None
    root = _fake_cgroup(tmp_path / "g", "0::/a", {"a/cpu.max": "lots 0"})
    assert policy_module.cgroup_cpu_quota(root) is None


# ---------------------------------------------------------------- the command line

def test_info_prints_the_policy_blas_and_cpus(clean_policy, capsys):
    assert cli.main(["info", "--threads", "3"]) == 0
    out = capsys.readouterr().out
    assert "threads: 3 host threads share a large batch, BLAS at 1 thread inside the package (set_threads)" in out
    assert f"CPUs: {fa.available_cpus()} usable" in out
    assert any(line.startswith("BLAS: ") and "threads outside the package" in line for line in out.splitlines())


@pytest.mark.parametrize("command", [["reproduce", "--quick", "--no-progress"], ["info"]])
@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5", ""])
def test_bad_threads_option_is_one_error_line(command, bad, clean_policy, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(command + ["--threads", bad])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert info.value.code == 2 and len(errors) == 1 and "Traceback" not in err
    assert errors[0].endswith(f"error: --threads: expected a whole number >= 1 or 'off', got {bad!r}")
    assert policy_module._state["setting"] is None


def test_bad_environment_setting_is_one_error_line_for_reproduce(clean_policy, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLOWATTN_THREADS", "many")
    with pytest.raises(SystemExit) as info:
        cli.main(["reproduce", "--quick", "--no-progress"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == ("flowattn-np reproduce: error: environment variable FLOWATTN_THREADS: "
                                    "expected a whole number >= 1 or 'off', got 'many'")
    assert os.listdir(tmp_path) == []


def test_the_policy_line_of_a_device_run_has_no_host_threads(clean_policy):
    fa.set_threads(4)
    assert policy_module.policy_line("numpy").startswith("4 host threads")
    assert "host thread" not in policy_module.policy_line("cupy").replace("calling thread", "")


def test_info_reports_a_bad_threads_variable_and_prints_the_rest(clean_policy, monkeypatch, capsys):
    monkeypatch.setenv("FLOWATTN_THREADS", "0")
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "threads: problem: environment variable FLOWATTN_THREADS: expected a whole number >= 1" in out
    assert "CPUs: " in out and "BLAS: " in out


def test_a_package_call_from_a_live_thread_leaves_blas_control_to_others(clean_policy):
    """OpenBLAS's process-wide pool (pthreads) is set by one controlling thread at a time
    (threadpoolctl >= 3.8): a package call in a thread that stays alive must let go, or the
    user's own limits in any other thread would silently do nothing."""
    import threading

    import threadpoolctl

    clear = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if clear is not None:  # whatever an earlier test left: no thread controls OpenBLAS now
        clear(force=True)
    done, release = threading.Event(), threading.Event()

    def worker():
        with policy_module.package_compute():
            pass
        done.set()
        release.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert done.wait(10)
        with threadpool_limits(limits=3, user_api="blas"):
            assert set(_numpy_blas_threads()) == {3}
    finally:
        release.set()
        thread.join()


def test_entered_in_one_thread_and_left_in_another_restores(clean_policy):
    import threading

    with threadpool_limits(limits=2, user_api="blas"):
        before = _numpy_blas_threads()
        entered, main_left, finished = threading.Event(), threading.Event(), threading.Event()

        def worker():
            with policy_module.package_compute():
                entered.set()
                main_left.wait(10)
            finished.set()

        with policy_module.package_compute():
            thread = threading.Thread(target=worker)
            thread.start()
            assert entered.wait(10)
        main_left.set()  # the main thread left first: the worker's exit restores
        assert finished.wait(10)
        thread.join()
        assert _numpy_blas_threads() == before
