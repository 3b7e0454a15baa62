"""Nothing a user made is ever lost: what a run does to the files around it when it is
rerun, interrupted (Ctrl-C, SIGTERM, SIGHUP), starved of disk, pointed at a folder it
cannot write, or started twice in the same second (docs/reliability.md).

The subprocess tests run a tiny real reproduction (200 training / 100 test images, parts
1 and 2: a second or two each).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from flowattn_np import cli
from flowattn_np.experiments import reproduce as driver
from flowattn_np.training.files import (
    STAGING_PREFIX,
    DestinationError,
    RunFolder,
    Terminated,
    atomic_write,
    signals_as_interrupts,
    write_text,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["reproduce", "--quick", "--seeds", "1", "--layers", "1", "--max-layers", "1", "--train-size", "200",
        "--test-size", "100", "--parts", "1,2", "--no-progress"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWATTN_BACKEND", raising=False)
    return tmp_path


def _env():
    env = dict(os.environ, MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env.pop("FLOWATTN_BACKEND", None)
    return env


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job inherits SIGINT ignored


def _start(args, cwd, **kwargs):
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "flowattn_np", *args], cwd=cwd, env=_env(),
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kwargs)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


def _debris(root):
    """Temporary files and staging folders anywhere under ``root``."""
    return [str(p) for p in Path(root).rglob("*") if p.name.startswith(".")]


def _complete(folder):
    """True if ``folder`` holds one whole run: results.json, results.md and every figure it names."""
    results = json.loads((Path(folder) / "results.json").read_text())
    names = {"results.json", "results.md", *results["figures"].values()}
    return all((Path(folder) / n).is_file() for n in names), names


def _error_lines(err):
    return [line for line in err.splitlines() if "error:" in line]


# ---------------------------------------------------------------- files: modes, links, paths


def test_new_files_follow_the_umask_and_a_file_written_over_keeps_its_mode(tmp_path):
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "new.txt", "x")
        (tmp_path / "shared.json").write_text("{}")
        os.chmod(tmp_path / "shared.json", 0o644)
        write_text(tmp_path / "shared.json", "{}\n")
    finally:
        os.umask(old)
    assert oct((tmp_path / "new.txt").stat().st_mode & 0o777) == oct(0o640)
    assert oct((tmp_path / "shared.json").stat().st_mode & 0o777) == oct(0o644)


def test_writing_onto_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "model.npz").write_bytes(b"old")
    (tmp_path / "latest.npz").symlink_to(tmp_path / "real" / "model.npz")
    with atomic_write(tmp_path / "latest.npz") as f:
        f.write(b"new")
    assert (tmp_path / "latest.npz").is_symlink()
    assert (tmp_path / "real" / "model.npz").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path / "real")) == ["model.npz"]


def test_a_symlink_loop_and_a_full_disk_are_errors_naming_the_path(tmp_path, monkeypatch):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OSError) as info:
        write_text(tmp_path / "a", "x")
    assert info.value.errno == errno.ELOOP and info.value.filename == str(tmp_path / "a")
    with pytest.raises(OSError) as info, atomic_write(tmp_path / "f.bin") as f:
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")  # what a full disk raises: no file name
    assert str(tmp_path / "f.bin") in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


# ---------------------------------------------------------------- RunFolder


def test_a_rerun_into_a_folder_holding_a_run_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    before = _snapshot(tmp_path)
    with pytest.raises(DestinationError, match="holds a previous run .*results.json.*--overwrite"):
        RunFolder(tmp_path).prepare()
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_the_previous_run_together_figures_it_no_longer_makes_included(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "results.json").write_text(json.dumps({"figures": {"x": "extra_figure.png"}}))
    for name in ("results.md", "figure1.png", "extra_figure.png"):
        (tmp_path / name).write_text("old")
    with RunFolder(tmp_path, overwrite=True) as folder:
        write_text(folder.file("results.json"), "new")
        write_text(folder.file("results.md"), "new")
        assert (tmp_path / "figure1.png").read_text() == "old"  # nothing moves before the end
    assert _snapshot(tmp_path) == {"notes.txt": b"mine", "results.json": b"new", "results.md": b"new"}


def test_of_two_runs_into_one_named_folder_the_second_to_finish_does_not_write_over_the_first(tmp_path):
    first, second = RunFolder(tmp_path / "o").prepare(), RunFolder(tmp_path / "o").prepare()
    with first:
        write_text(first.file("results.json"), "first")
    with pytest.raises(DestinationError, match="another run wrote results.json while this one computed"):
        with second:
            write_text(second.file("results.json"), "second")
    assert _snapshot(tmp_path / "o") == {"results.json": b"first"}


def test_fresh_folders_of_the_same_name_get_a_suffix(tmp_path):
    a = RunFolder(tmp_path / "runs" / "r", fresh=True).prepare()
    b = RunFolder(tmp_path / "runs" / "r", fresh=True).prepare()
    assert (a.path, b.path) == (str(tmp_path / "runs" / "r"), str(tmp_path / "runs" / "r-2"))
    b.discard()
    a.discard()
    assert not (tmp_path / "runs").exists()


def test_a_rerun_removes_the_staging_folder_of_a_killed_run_and_keeps_a_live_one(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for name, pid in (("killed", dead.pid), ("live", live.pid)):
            (tmp_path / f"{STAGING_PREFIX}{name}").mkdir()
            (tmp_path / f"{STAGING_PREFIX}{name}" / "pid").write_text(str(pid))
            (tmp_path / f"{STAGING_PREFIX}{name}" / ".figure1.png.abc.tmp").write_bytes(b"half")
        (tmp_path / ".figure1.png.x7f3k.tmp").write_bytes(b"half")  # left by a version that wrote in place
        (tmp_path / ".notes.txt.swp").write_bytes(b"the user's")
        with RunFolder(tmp_path) as folder:
            write_text(folder.file("results.json"), "{}")
        assert sorted(os.listdir(tmp_path)) == [f"{STAGING_PREFIX}live", ".notes.txt.swp", "results.json"]
    finally:
        live.kill()
        live.wait()


def test_sigterm_and_sighup_raise_like_ctrl_c_and_an_ignored_signal_stays_ignored():
    before = signal.getsignal(signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(KeyboardInterrupt) as info, signals_as_interrupts():
            os.kill(os.getpid(), sig)
            time.sleep(1)  # the handler raises at the next bytecode
        assert isinstance(info.value, Terminated) and info.value.signum == sig
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_as_interrupts():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_mid_run_exit_128_plus_the_signal_leaving_no_folder(sig, status, workdir,
                                                                                monkeypatch, capsys):
    import flowattn_np.experiments.data as data

    def signalled(**kwargs):  # what `timeout` or a closed terminal does while the data loads
        assert len(list((workdir / "runs").iterdir())) == 1  # the folder was made and proven first
        os.kill(os.getpid(), sig)
        time.sleep(5)

    def unhandled(signum, frame):  # without the command's own handler: fail, not kill pytest
        raise RuntimeError(f"signal {signum} was not handled by the command")

    monkeypatch.setattr(data, "load_fashion_mnist", signalled)
    previous = signal.signal(sig, unhandled)
    try:
        assert cli.main(["reproduce", "--quick", "--no-progress"]) == status
    finally:
        signal.signal(sig, previous)
    assert capsys.readouterr().err.strip() == f"flowattn-np: terminated by signal {int(sig)}"
    assert os.listdir(workdir) == []


# ---------------------------------------------------------------- unwritable --out: refused at once


def _refused(argv, capsys, where):
    """cli.main(argv) exits 2 with one `--out` error line in under a second, creating nothing."""
    before = sorted(str(p) for p in Path(where).rglob("*"))
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("flowattn-np reproduce: error: --out: "), err
    assert seconds < 1.0, f"{seconds:.2f} s"
    assert sorted(str(p) for p in Path(where).rglob("*")) == before
    return lines[0]


def test_an_out_below_a_file_or_a_dangling_symlink_is_refused_at_once(workdir, capsys):
    (workdir / "a-file").write_text("x")
    (workdir / "link").symlink_to(workdir / "missing")
    assert "a-file is a file, not a folder" in _refused(["reproduce", "--quick", "--out", "a-file/sub"],
                                                        capsys, workdir)
    assert "does not exist" in _refused(["reproduce", "--quick", "--out", "link"], capsys, workdir)
    (workdir / "done").mkdir()
    (workdir / "done" / "results.json").write_text("{}")
    assert "--overwrite" in _refused(["reproduce", "--quick", "--out", "done"], capsys, workdir)


@contextlib.contextmanager
def _mounted_tmpfs(folder, options):
    folder.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {made.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_an_out_on_a_read_only_mount_is_refused_at_once(workdir, capsys):
    with _mounted_tmpfs(workdir / "ro", "ro,size=1m") as ro:
        assert "Read-only file system" in _refused(["reproduce", "--quick", "--out", str(ro)], capsys, workdir)
        assert "Read-only" in _refused(["reproduce", "--quick", "--out", str(ro / "sub")], capsys, workdir)


AS_NOBODY = """
import os, sys, time
from flowattn_np import cli  # read while readable
from flowattn_np.teaching import coursework  # read while readable
from flowattn_np.experiments import data  # read while readable
from flowattn_np.experiments import reproduce  # read while readable
from flowattn_np.training import files  # read while readable
from flowattn_np.experiments import plotting  # read while readable
from flowattn_np.training import train  # read while readable
os.setgroups([]); os.setgid(65534); os.setuid(65534)
t0 = time.perf_counter()
try:
    cli.main(sys.argv[1:])
except SystemExit as exc:
    print(f"{time.perf_counter() - t0:.3f}")
    sys.exit(exc.code)
"""


def _as_nobody(argv, cwd):
    if os.geteuid() != 0:
        pytest.skip("checking permissions needs a user they apply to: run as root to switch to nobody")
    return subprocess.run([sys.executable, "-c", AS_NOBODY, *argv], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def shared_dir():
    """A folder user nobody can enter (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="flowattn-perm-"))
    folder.chmod(0o755)
    yield folder
    for p in folder.rglob("*"):
        with contextlib.suppress(OSError):
            p.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


def test_an_out_the_user_may_not_write_and_an_unreadable_data_dir_are_refused(shared_dir):
    (shared_dir / "locked").mkdir()
    (shared_dir / "locked").chmod(0o555)
    (shared_dir / "data").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (shared_dir / "data" / name).write_bytes(b"")
    (shared_dir / "data").chmod(0)
    for argv, message in [
        (["--out", str(shared_dir / "locked")], "--out: {d}/locked cannot be written (Permission denied)"),
        (["--out", str(shared_dir / "locked" / "sub")], "--out: {d}/locked/sub cannot be written"),
        (["--data-dir", str(shared_dir / "data")], "--data-dir: {d}/data cannot be read (permission denied)"),
    ]:
        done = _as_nobody(["reproduce", "--quick", *argv], shared_dir)
        lines = _error_lines(done.stderr)
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert message.format(d=shared_dir) in lines[0]
        assert float(done.stdout) < 1.0, f"refused after {done.stdout} s"
    assert os.listdir(shared_dir / "locked") == []
    assert sorted(os.listdir(shared_dir)) == ["data", "locked"]


# ---------------------------------------------------------------- the command line's one-line errors


BAD_VALUES = [(["--noise", "0.5,0.5"], "--noise: expected distinct values, got '0.5,0.5' (0.5 repeated)"),
              (["--layers", "1,1"], "--layers: expected distinct values, got '1,1' (1 repeated)"),
              (["--norm-variants", "oracle,oracle"],
               "--norm-variants: expected distinct values, got 'oracle,oracle' (oracle repeated)")]


@pytest.mark.parametrize("args, message", BAD_VALUES)
def test_repeated_values_are_refused_in_one_line(args, message, workdir, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["reproduce", "--quick", *args])
    lines = _error_lines(capsys.readouterr().err)
    assert info.value.code == 2 and len(lines) == 1 and message in lines[0]
    assert os.listdir(workdir) == []


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # the noise overflows float32: the point
def test_a_non_finite_loss_is_one_line_with_the_step_and_advice_and_leaves_no_folder(workdir, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*TINY, "--parts", "3", "--train-noise", "1e300", "--no-figures"])
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "non-finite" in lines[0] and "epoch 1, step 1" in lines[0]
    assert "lower the learning rate" in lines[0] and "--lr 0.003" in lines[0]
    assert not (workdir / "runs").exists()


@pytest.mark.realdata
def test_a_stdout_that_cannot_be_written_is_one_line_after_the_files(workdir):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        done = _start([*TINY, "--out", "o"], workdir, stdout=full)
        _, err = done.communicate(timeout=120)
    lines = _error_lines(err)
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "cannot write to standard output" in lines[0] and "o/" in lines[0]
    assert _complete(workdir / "o")[0]


# ---------------------------------------------------------------- real runs


@pytest.mark.realdata
def test_a_rerun_with_no_figures_and_overwrite_leaves_no_figure_of_the_previous_run(workdir, capsys):
    assert cli.main([*TINY, "--out", "o"]) == 0
    assert {p.suffix for p in (workdir / "o").iterdir()} == {".json", ".md", ".png"}
    (workdir / "o" / "notes.txt").write_text("mine")
    assert cli.main([*TINY, "--out", "o", "--no-figures", "--overwrite"]) == 0
    assert sorted(os.listdir(workdir / "o")) == ["notes.txt", "results.json", "results.md"]


@pytest.mark.realdata
def test_two_runs_started_together_write_two_complete_folders(workdir):
    runs = [_start(TINY, workdir) for _ in range(2)]
    outs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outs]
    folders = sorted((workdir / "runs").iterdir())
    assert len(folders) == 2 and all(_complete(f)[0] for f in folders)
    said = sorted(out.strip().splitlines()[-1].rsplit(" in ", 1)[1].rstrip("/") for out, _ in outs)
    assert said == [os.path.join("runs", f.name) for f in folders]  # each names its own folder


def _staged(out, run):
    """Wait until ``run`` has proven its folder (its staging folder exists) or has ended."""
    while run.poll() is None and not any(p.name.startswith(STAGING_PREFIX) for p in out.iterdir()):
        time.sleep(0.005)


@pytest.mark.realdata
def test_a_signal_at_a_random_moment_of_an_overwriting_rerun_leaves_one_whole_run(workdir):
    """Ctrl-C, SIGTERM and SIGHUP at random moments while a rerun computes and writes into a
    folder that holds a previous run: the previous files are intact (or, after the final swap,
    the new run is whole) and no temporary file is left, every time."""
    out = workdir / "out"
    argv = [*TINY, "--out", str(out), "--overwrite"]
    assert _start(argv[:-1], workdir).wait(timeout=120) == 0
    (out / "notes.txt").write_text("mine")
    run = _start(argv, workdir)
    _staged(out, run)
    t0 = time.monotonic()
    assert run.wait(timeout=120) == 0
    seconds = time.monotonic() - t0  # from the folder's preparation to the end
    seed = int(time.time())
    rng = random.Random(seed)
    landed = {sig: 0 for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for attempt in range(12):  # until each signal has landed mid-run twice (6 tries on a steady machine)
        sig = min(landed, key=landed.get)
        if landed[sig] >= 2:
            break
        before = _snapshot(out)
        moment = rng.uniform(0.0, 1.0) * seconds
        run = _start(argv, workdir)
        _staged(out, run)
        time.sleep(moment)
        run.send_signal(sig)
        _, err = run.communicate(timeout=120)
        where = f"signal {sig} at {moment:.2f} s of {seconds:.2f} s (seed {seed}): rc {run.returncode}, {err[-300:]}"
        assert run.returncode in (0, 128 + sig, -sig), where  # -sig: after main returned, all written
        landed[sig] += run.returncode == 128 + sig
        assert _debris(workdir) == [], where
        after = _snapshot(out)
        if after != before:  # only a whole new run may have replaced the old one
            whole, names = _complete(out)
            assert whole and set(after) == names | {"notes.txt"}, where
            assert after["results.json"] != before["results.json"], where
        assert after["notes.txt"] == b"mine", where
    assert all(landed.values()), f"signals that landed mid-run: {landed} (seed {seed})"


def _fill(folder):
    """Write zeros into ``folder`` until its file system is full."""
    with open(Path(folder) / "filler", "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(bytes(2 ** 20))
                f.flush()
        with contextlib.suppress(OSError):
            f.close()


@pytest.mark.realdata
def test_a_rerun_into_a_full_disk_keeps_the_previous_run(workdir, capsys, monkeypatch):
    with _mounted_tmpfs(workdir / "disk", "size=16m") as disk:
        out = disk / "run"
        assert cli.main([*TINY, "--out", str(out)]) == 0
        before = _snapshot(out)
        capsys.readouterr()
        # full before the start: refused at once, before the data is read
        _fill(disk)
        line = _refused([*TINY, "--out", str(out), "--overwrite"], capsys, disk)
        assert "no room left" in line or "MiB free" in line
        assert "the run's files need about 8 MiB" in line
        (disk / "filler").unlink()
        # full half-way (another program filled it): one line naming the file, nothing lost
        compute = driver.run_parts

        def compute_then_fill(*args, **kwargs):
            result = compute(*args, **kwargs)
            _fill(disk)
            return result

        monkeypatch.setattr(driver, "run_parts", compute_then_fill)
        assert cli.main([*TINY, "--out", str(out), "--overwrite"]) == 1
        err = capsys.readouterr().err
        lines = _error_lines(err)
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith(f"flowattn-np reproduce: error: {out}/") and "No space left" in lines[0]
        assert _snapshot(out) == before
        assert _debris(disk) == []
