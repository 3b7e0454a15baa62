"""atomic_write: the one way the package writes a file (checkpoints, downloads, results, figures)."""

import os

import numpy as np
import pytest

from flowattn_np.experiments import plotting
from flowattn_np.training.checkpoint import save_arrays
from flowattn_np.training.files import atomic_write, write_text


def test_atomic_write_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "out.bin"
    with atomic_write(path) as f:
        f.write(b"first")
        assert not path.exists()  # nothing visible until the block ends
    assert path.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path) as f:
            f.write(b"half of the sec")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["out.bin"]  # no temporary file left behind


def test_an_interrupted_first_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "sub" / "new.txt", "w") as f:
            f.write("partial")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path / "sub") == []


def test_write_text_is_utf8_and_creates_the_folder(tmp_path):
    path = tmp_path / "a" / "b" / "results.md"
    write_text(path, "± σ\n")
    assert path.read_bytes() == "± σ\n".encode("utf-8")


def test_atomic_write_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode: expected 'wb' or 'w'"):
        with atomic_write(tmp_path / "x", "a"):
            pass  # pragma: no cover
    assert os.listdir(tmp_path) == []


def test_the_package_writers_go_through_atomic_write(tmp_path, monkeypatch):
    """Checkpoints and figures fail cleanly when the write fails: old content kept, no debris."""
    import flowattn_np.training.checkpoint as checkpoint

    (tmp_path / "c.npz").write_bytes(b"old checkpoint")
    (tmp_path / "f.png").write_bytes(b"old figure")

    def failing_savez(f, **arrays):
        f.write(b"PK half")
        raise OSError("no space left on device")

    monkeypatch.setattr(checkpoint.numpy, "savez", failing_savez)
    with pytest.raises(OSError, match="no space"):
        save_arrays(tmp_path / "c.npz", {"a": np.zeros(3)}, {})
    import matplotlib.pyplot as plt

    fig = plt.figure()
    monkeypatch.setattr(fig, "savefig", lambda f, **kw: (f.write(b"\x89PNG half"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        plotting.save(fig, tmp_path / "f.png")
    plt.close(fig)
    assert (tmp_path / "c.npz").read_bytes() == b"old checkpoint"
    assert (tmp_path / "f.png").read_bytes() == b"old figure"
    assert sorted(os.listdir(tmp_path)) == ["c.npz", "f.png"]
