"""Tests for flowattn_np.experiments.data: IDX I/O, search order, download, load, noise.

No test touches the network: downloads use file:// mirrors, and the no-network
case patches urllib.request.urlopen. The realdata tests read the installed
Fashion-MNIST (Debian package dataset-fashion-mnist on CI).
"""

import dataclasses
import gzip
import hashlib
import io
import os
import tempfile
import time
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import flowattn_np.experiments.data as data
from flowattn_np.experiments.data import DataError, read_idx, write_idx


# ---------------------------------------------------------------- helpers

def make_tiny_set(directory, n_train=5, n_test=3, fill=0):
    """Write a valid 4-file Fashion-MNIST-shaped set with n_train/n_test 28x28 images.

    Pixel (0, 0, 0) of the first training image is ``fill`` so tests can tell sets apart.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(fill)
    train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    train[0, 0, 0] = fill
    train[1, 0, 0] = 255  # so the max after scaling is exactly 1
    train[1, 0, 1] = 0
    test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    write_idx(directory / data.FILES["train_images"], train)
    write_idx(directory / data.FILES["train_labels"], np.arange(n_train, dtype=np.uint8) % 10)
    write_idx(directory / data.FILES["test_images"], test)
    write_idx(directory / data.FILES["test_labels"], np.arange(n_test, dtype=np.uint8) % 10)
    return directory


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def payload_sha256(path):
    return hashlib.sha256(gzip.decompress(Path(path).read_bytes())).hexdigest()


def leftovers(directory):
    """Names in ``directory`` that look like temporary files."""
    return [p.name for p in Path(directory).iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No Fashion-MNIST on the search path: every standard place is an empty temp dir."""
    places = {k: tmp_path / k for k in ("debian", "project", "env")}
    for p in places.values():
        p.mkdir()
    monkeypatch.setattr(data, "DEBIAN_DIR", places["debian"])
    monkeypatch.setattr(data, "default_data_dir", lambda: places["project"])
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    return places


def idx_bytes(code, shape, payload):
    return bytes([0, 0, code, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape) + payload


# ---------------------------------------------------------------- IDX round trips

@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28),
        np.arange(7, dtype=np.uint8),
        np.array([[-2**31, -1, 0], [1, 2**31 - 1, 7]], dtype=np.int32),
        np.array([-1.5, 0.0, 3.25, np.inf], dtype=np.float32),
        np.array([[-128, 127]], dtype=np.int8),
        np.array([-32768, 258, 32767], dtype=np.int16),
        np.linspace(-1, 1, 24).reshape(2, 3, 2, 2),  # float64, 4-d
    ],
    ids=["uint8-3d", "uint8-1d", "int32-2d", "float32-1d", "int8", "int16", "float64-4d"],
)
def test_write_then_read_idx_returns_same_array(tmp_path, array, suffix):
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.dtype.isnative
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    back[...] = 0  # the result is an ordinary writable array
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_write_idx_stores_big_endian_header_and_payload(tmp_path):
    path = tmp_path / "x.idx"
    write_idx(path, np.array([1, 256], dtype=np.int32))
    assert path.read_bytes() == bytes.fromhex("00000c01 00000002 00000001 00000100")


def test_write_idx_byte_swapped_input_is_read_back_natively(tmp_path):
    arr = np.array([1, 2, 3], dtype=">i2")
    write_idx(tmp_path / "a.idx", arr)
    back = read_idx(tmp_path / "a.idx")
    assert back.dtype.isnative and back.tolist() == [1, 2, 3]


def test_read_idx_detects_gzip_by_magic_not_name(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "raw.idx", arr)
    write_idx(tmp_path / "z.gz", arr)
    (tmp_path / "raw.idx").rename(tmp_path / "raw_named.gz")  # raw bytes, .gz name
    (tmp_path / "z.gz").rename(tmp_path / "gz_named.idx")  # gzip bytes, no .gz name
    np.testing.assert_array_equal(read_idx(tmp_path / "raw_named.gz"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "gz_named.idx"), arr)


def test_write_idx_is_reproducible_for_gz(tmp_path):
    arr = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b.gz", arr)
    assert sha256_file(tmp_path / "a.gz") == sha256_file(tmp_path / "b.gz")


@settings(max_examples=40, deadline=None, database=None)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    ),
    gz=st.booleans(),
)
def test_write_read_idx_round_trip_property(arr, gz):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("a.idx.gz" if gz else "a.idx")
        write_idx(path, arr)
        back = read_idx(path)
    assert back.shape == arr.shape and back.dtype == arr.dtype
    np.testing.assert_array_equal(back, arr)  # NaNs compare equal here


@pytest.mark.parametrize(
    "array, why",
    [
        (np.zeros(3, dtype=np.int64), "int64"),
        (np.zeros(3, dtype=bool), "bool"),
        (np.array(5, dtype=np.uint8), "0-d"),
        (np.zeros((1,) * 5, dtype=np.uint8), "5-d"),
    ],
)
def test_write_idx_rejects_unsupported_arrays_naming_the_file(tmp_path, array, why):
    path = tmp_path / "bad.idx"
    with pytest.raises(DataError, match="bad.idx"):
        write_idx(path, array)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- IDX rejections

GOOD_PAYLOAD = bytes(range(6))  # 2x3 uint8


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x01\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + GOOD_PAYLOAD,
         "bad magic"),
        (b"\x00\x01\x08\x01" + (6).to_bytes(4, "big") + GOOD_PAYLOAD, "bad magic"),
        (idx_bytes(0x0A, (2, 3), GOOD_PAYLOAD), "unknown IDX type code 0x0A"),
        (idx_bytes(0x08, (), b""), "0 dimensions"),
        (idx_bytes(0x08, (1, 1, 1, 1, 1), b"\x00"), "5 dimensions"),
        (b"\x00\x00", "only 2 bytes"),
        (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"), "truncated header"),
        (idx_bytes(0x08, (2, 3), GOOD_PAYLOAD[:4]),
         "truncated: header says 2x3 uint8 (6 bytes) but the file holds 4"),
        (idx_bytes(0x08, (2, 3), GOOD_PAYLOAD + b"\x00"),
         "too long: header says 2x3 uint8 (6 bytes) but the file holds 7"),
        (idx_bytes(0x0C, (2,), b"\x00" * 7),
         "truncated: header says 2 int32 (8 bytes) but the file holds 7"),
    ],
    ids=["magic-first-byte", "magic-second-byte", "type-code", "ndim-0", "ndim-5",
         "short-file", "short-header", "truncated", "trailing-bytes", "truncated-int32"],
)
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_read_idx_rejects_malformed_file_naming_it(tmp_path, content, message, gz):
    path = tmp_path / ("broken-file.idx.gz" if gz else "broken-file.idx")
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_read_idx_rejects_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    write_idx(path, np.arange(1000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match="broken gzip stream") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_gzip_with_bad_crc(tmp_path):
    path = tmp_path / "crc.gz"
    write_idx(path, np.arange(1000, dtype=np.int32))
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # the CRC-32 is stored in the last 8 bytes (CRC, then size)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="broken gzip stream") as info:
        read_idx(path)
    assert "crc.gz" in str(info.value)


def test_read_idx_rejects_unexpected_shape(tmp_path):
    path = tmp_path / "imgs.gz"
    write_idx(path, np.zeros((5, 28, 28), dtype=np.uint8))
    assert read_idx(path, expected_shape=(5, 28, 28)).shape == (5, 28, 28)
    with pytest.raises(DataError, match=r"shape 5x28x28 but expected 60000x28x28") as info:
        read_idx(path, expected_shape=(60000, 28, 28))
    assert str(path) in str(info.value)


def test_read_idx_missing_file_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="nope.gz"):
        read_idx(tmp_path / "nope.gz")


# ---------------------------------------------------------------- atomic write

def test_write_idx_failing_mid_write_leaves_no_temp_and_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "labels.gz"
    write_idx(path, np.arange(10, dtype=np.uint8))
    before = path.read_bytes()

    real_write = gzip.GzipFile.write

    def write_some_then_fail(self, chunk):
        real_write(self, bytes(chunk)[:3])
        raise OSError("disk full")

    monkeypatch.setattr(gzip.GzipFile, "write", write_some_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_idx(path, np.arange(50, dtype=np.uint8))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels.gz"]


def test_write_idx_failing_before_replace_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "raw.idx"

    def fail(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="fsync failed"):
        write_idx(path, np.arange(10, dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- search order

def test_default_data_dir_is_project_data_in_a_checkout(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / "flowattn_np" / "experiments").mkdir(parents=True)
    (checkout / "setup.py").write_text("")
    monkeypatch.setattr(data, "__file__", str(checkout / "flowattn_np" / "experiments" / "data.py"))
    assert data.default_data_dir() == checkout.resolve() / "data"


def test_default_data_dir_is_user_cache_when_installed(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    (site / "flowattn_np").mkdir(parents=True)
    monkeypatch.setattr(data, "__file__", str(site / "flowattn_np" / "experiments" / "data.py"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.default_data_dir() == tmp_path / "cache" / "flowattn_np"


def test_search_order_explicit_then_env_then_project_then_debian(tmp_path, monkeypatch):
    explicit = make_tiny_set(tmp_path / "explicit", fill=1)
    env = make_tiny_set(tmp_path / "env", fill=2)
    project = make_tiny_set(tmp_path / "project", fill=3)
    debian = make_tiny_set(tmp_path / "debian", fill=4)
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)
    monkeypatch.setattr(data, "default_data_dir", lambda: project)
    monkeypatch.setenv("FLOWATTN_DATA", str(env))

    assert data.search_path(explicit) == [explicit, env, project, debian]
    assert data.find_fashion_mnist(explicit) == explicit
    assert data.find_fashion_mnist() == env
    monkeypatch.delenv("FLOWATTN_DATA")
    assert data.search_path() == [project, debian]
    assert data.find_fashion_mnist() == project
    monkeypatch.setattr(data, "default_data_dir", lambda: tmp_path / "absent")
    assert data.find_fashion_mnist() == debian

    monkeypatch.setattr(data, "default_data_dir", lambda: project)
    ds = data.load_fashion_mnist(explicit, download=False, verify=False)
    assert ds.source == str(explicit) and ds.X_train[0, 0] == np.float32(1 / 255)
    ds = data.load_fashion_mnist(download=False, verify=False)
    assert ds.source == str(project) and ds.X_train[0, 0] == np.float32(3 / 255)


def test_search_skips_dirs_missing_a_file(tmp_path, monkeypatch, nowhere):
    incomplete = make_tiny_set(tmp_path / "incomplete")
    (incomplete / data.FILES["test_labels"]).unlink()
    env = make_tiny_set(tmp_path / "env")
    monkeypatch.setenv("FLOWATTN_DATA", str(env))
    assert data.find_fashion_mnist(incomplete) == env
    monkeypatch.delenv("FLOWATTN_DATA")
    assert data.find_fashion_mnist(incomplete) is None


def test_load_tiny_set_gives_float32_in_unit_interval(tmp_path, nowhere):
    d = make_tiny_set(tmp_path / "tiny", n_train=5, n_test=3)
    ds = data.load_fashion_mnist(d, download=False, verify=False)
    assert ds.X_train.shape == (5, 784) and ds.X_test.shape == (3, 784)
    assert ds.X_train.dtype == np.float32 and ds.X_test.dtype == np.float32
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0
    assert ds.X_test.min() >= 0.0 and ds.X_test.max() <= 1.0
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == [0, 1, 2, 3, 4]
    assert ds.X_val is None and ds.y_val is None
    assert ds.source == str(d) and ds.class_names == data.CLASS_NAMES
    np.testing.assert_array_equal(
        ds.X_train.reshape(5, 28, 28) * 255, read_idx(d / data.FILES["train_images"])
    )
    unflat = data.load_fashion_mnist(d, download=False, verify=False, flatten=False)
    assert unflat.X_train.shape == (5, 28, 28)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.X_train = None


def test_load_rejects_labels_out_of_range(tmp_path, nowhere):
    d = make_tiny_set(tmp_path / "tiny")
    write_idx(d / data.FILES["train_labels"], np.array([0, 1, 2, 10, 3], dtype=np.uint8))
    with pytest.raises(DataError, match="label 10 out of range") as info:
        data.load_fashion_mnist(d, download=False, verify=False)
    assert data.FILES["train_labels"] in str(info.value)


def test_load_rejects_label_count_not_matching_images(tmp_path, nowhere):
    d = make_tiny_set(tmp_path / "tiny", n_test=3)
    write_idx(d / data.FILES["test_labels"], np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match="4 labels but .* holds 3 images"):
        data.load_fashion_mnist(d, download=False, verify=False)


def test_load_with_verify_rejects_wrong_shape(tmp_path, nowhere):
    d = make_tiny_set(tmp_path / "tiny")
    with pytest.raises(DataError, match="expected 60000x28x28") as info:
        data.load_fashion_mnist(d, download=False)
    assert data.FILES["train_images"] in str(info.value)


def tiny_verified(monkeypatch, d, n_train=5, n_test=3):
    """Patch EXPECTED_SHAPES and PAYLOAD_SHA256 so the tiny set in ``d`` counts as genuine."""
    monkeypatch.setattr(data, "EXPECTED_SHAPES", {
        "train_images": (n_train, 28, 28), "train_labels": (n_train,),
        "test_images": (n_test, 28, 28), "test_labels": (n_test,),
    })
    monkeypatch.setattr(data, "PAYLOAD_SHA256", {
        name: payload_sha256(d / name) for name in data.FILES.values()
    })


def test_load_with_verify_accepts_matching_payload_hashes(tmp_path, monkeypatch, nowhere):
    d = make_tiny_set(tmp_path / "tiny")
    tiny_verified(monkeypatch, d)
    ds = data.load_fashion_mnist(d, download=False, verify=True)
    assert ds.X_train.shape == (5, 784)


def test_load_with_verify_rejects_corrupted_payload(tmp_path, monkeypatch, nowhere):
    d = make_tiny_set(tmp_path / "tiny")
    tiny_verified(monkeypatch, d)
    name = data.FILES["test_images"]
    imgs = read_idx(d / name)
    imgs[0, 0, 0] ^= 1  # one flipped bit, structure still valid
    write_idx(d / name, imgs)
    with pytest.raises(DataError, match="corrupted") as info:
        data.load_fashion_mnist(d, download=False, verify=True)
    assert str(d / name) in str(info.value)
    # verify=False checks only the structure, so the same files load.
    assert data.load_fashion_mnist(d, download=False, verify=False).X_test.shape == (3, 784)


# ---------------------------------------------------------------- no data / download

def assert_helpful_not_found(message, searched):
    for path in searched:
        assert str(path) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "d.download_fashion_mnist()" in message
    assert data.MIRROR in message
    assert "$FLOWATTN_DATA" in message


def test_no_data_without_download_lists_search_path_and_remedies(tmp_path, monkeypatch, nowhere):
    explicit = tmp_path / "mine"
    monkeypatch.setenv("FLOWATTN_DATA", str(nowhere["env"]))
    with pytest.raises(DataError) as info:
        data.load_fashion_mnist(explicit, download=False)
    message = str(info.value)
    searched = [explicit, nowhere["env"], nowhere["project"], nowhere["debian"]]
    assert data.search_path(explicit) == searched
    assert_helpful_not_found(message, searched)
    # listed in search order
    positions = [message.index(str(p)) for p in searched]
    assert positions == sorted(positions)


def test_no_data_and_no_network_gives_same_help_and_leaves_nothing(monkeypatch, nowhere):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        data.load_fashion_mnist(download=True, progress=False)
    message = str(info.value)
    assert_helpful_not_found(message, [nowhere["project"], nowhere["debian"]])
    assert "Temporary failure in name resolution" in message
    assert message.count("apt-get install") == 1
    assert list(nowhere["project"].iterdir()) == []


def test_download_timeout_becomes_data_error(tmp_path, monkeypatch):
    def slow(*args, **kwargs):
        raise TimeoutError("timed out")

    monkeypatch.setattr(urllib.request, "urlopen", slow)
    with pytest.raises(DataError, match="timed out") as info:
        data.download_fashion_mnist(tmp_path, progress=False)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A file:// mirror holding a tiny set, with data.SHA256 patched to its hashes."""
    d = make_tiny_set(tmp_path / "mirror", n_train=6, n_test=4, fill=9)
    monkeypatch.setattr(data, "SHA256", {name: sha256_file(d / name) for name in data.FILES.values()})
    return d


def test_download_from_file_mirror_lands_files_that_load(tmp_path, mirror, nowhere):
    dest = tmp_path / "dest"
    got = data.download_fashion_mnist(dest, mirror=mirror.as_uri(), progress=False)
    assert got == dest
    for name in data.FILES.values():
        assert (dest / name).read_bytes() == (mirror / name).read_bytes()
    assert leftovers(dest) == []
    ds = data.load_fashion_mnist(dest, download=False, verify=False)
    assert ds.X_train.shape == (6, 784) and ds.source == str(dest)


def test_download_skips_files_already_present_and_valid(tmp_path, monkeypatch, mirror):
    dest = data.download_fashion_mnist(tmp_path / "dest", mirror=mirror.as_uri() + "/", progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}

    def must_not_download(*args, **kwargs):
        raise AssertionError("downloaded a file that was already there")

    monkeypatch.setattr(urllib.request, "urlopen", must_not_download)
    data.download_fashion_mnist(dest, mirror=mirror.as_uri(), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == stamps


def test_download_keeps_a_recompressed_copy_with_the_right_payload(tmp_path, monkeypatch, mirror):
    # Like Debian's files: other .gz bytes than the mirror's, same decompressed payload.
    dest = tmp_path / "dest"
    dest.mkdir()
    payloads = {}
    for name in data.FILES.values():
        payload = gzip.decompress((mirror / name).read_bytes())
        (dest / name).write_bytes(gzip.compress(payload, compresslevel=1, mtime=12345))
        assert sha256_file(dest / name) != data.SHA256[name]
        payloads[name] = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(data, "PAYLOAD_SHA256", payloads)

    def must_not_download(*args, **kwargs):
        raise AssertionError("downloaded a file that was already there")

    monkeypatch.setattr(urllib.request, "urlopen", must_not_download)
    assert data.download_fashion_mnist(dest, mirror=mirror.as_uri(), progress=False) == dest


def test_download_replaces_an_invalid_existing_file(tmp_path, mirror):
    dest = tmp_path / "dest"
    dest.mkdir()
    name = data.FILES["train_labels"]
    (dest / name).write_bytes(b"half a file")
    data.download_fashion_mnist(dest, mirror=mirror.as_uri(), progress=False)
    assert (dest / name).read_bytes() == (mirror / name).read_bytes()


def test_download_hash_mismatch_names_file_and_leaves_nothing(tmp_path, monkeypatch, mirror):
    name = data.FILES["train_images"]  # the first file fetched
    wrong = "0" * 64
    monkeypatch.setitem(data.SHA256, name, wrong)
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as info:
        data.download_fashion_mnist(dest, mirror=mirror.as_uri(), progress=False)
    message = str(info.value)
    assert name in message and wrong in message and sha256_file(mirror / name) in message
    assert list(dest.iterdir()) == []


def test_download_interrupted_mid_stream_leaves_no_partial_file(tmp_path, monkeypatch, mirror):
    class DroppedConnection(io.BytesIO):
        headers = {"Content-Length": "1000000"}

        def read(self, n=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset by peer")
            return super().read(10)

    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout=None: DroppedConnection(b"x" * 100))
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="connection reset by peer"):
        data.download_fashion_mnist(dest, mirror=mirror.as_uri(), progress=False)
    assert list(dest.iterdir()) == []


def test_load_downloads_into_named_data_dir_when_missing(tmp_path, monkeypatch, mirror, nowhere):
    monkeypatch.setattr(data, "MIRROR", mirror.as_uri())
    dest = tmp_path / "wanted"
    ds = data.load_fashion_mnist(dest, download=True, verify=False, progress=False)
    assert ds.source == str(dest) and ds.X_test.shape == (4, 784)
    assert sorted(p.name for p in dest.iterdir()) == sorted(data.FILES.values())
    assert list(nowhere["project"].iterdir()) == []


def test_load_downloads_into_default_data_dir(monkeypatch, mirror, nowhere):
    monkeypatch.setattr(data, "MIRROR", mirror.as_uri())
    ds = data.load_fashion_mnist(verify=False, progress=False)
    assert ds.source == str(nowhere["project"])


# ---------------------------------------------------------------- validation split

@pytest.fixture
def twenty(tmp_path, nowhere):
    return make_tiny_set(tmp_path / "twenty", n_train=20, n_test=2)


@pytest.mark.parametrize("validation, n_val", [(5, 5), (0.25, 5), (0.1, 2), (19, 19), (0, 0), (0.0, 0)])
def test_validation_split_sizes(twenty, validation, n_val):
    ds = data.load_fashion_mnist(twenty, download=False, verify=False, validation=validation)
    if n_val == 0:
        assert ds.X_val is None and ds.y_val is None
        assert len(ds.X_train) == 20
    else:
        assert ds.X_val.shape == (n_val, 784) and ds.y_val.shape == (n_val,)
        assert ds.X_train.shape == (20 - n_val, 784) and ds.y_train.shape == (20 - n_val,)


def test_validation_split_is_disjoint_partition_and_pairs_stay_aligned(twenty):
    full = data.load_fashion_mnist(twenty, download=False, verify=False)
    ds = data.load_fashion_mnist(twenty, download=False, verify=False, validation=7, seed=3)
    rows = {r.tobytes(): i for i, r in enumerate(full.X_train)}
    assert len(rows) == 20  # random images are distinct
    train_idx = [rows[r.tobytes()] for r in ds.X_train]
    val_idx = [rows[r.tobytes()] for r in ds.X_val]
    assert set(train_idx).isdisjoint(val_idx)
    assert sorted(train_idx + val_idx) == list(range(20))
    np.testing.assert_array_equal(ds.y_train, full.y_train[train_idx])
    np.testing.assert_array_equal(ds.y_val, full.y_train[val_idx])


def test_validation_split_is_determined_by_seed(twenty):
    def val_rows(seed):
        ds = data.load_fashion_mnist(twenty, download=False, verify=False, validation=6, seed=seed)
        return ds.X_val

    np.testing.assert_array_equal(val_rows(1), val_rows(1))
    assert not np.array_equal(val_rows(1), val_rows(2))


@pytest.mark.parametrize("validation", [-1, 1.0, 1.5, -0.1, float("nan"), 20, 25, True, "10", None])
def test_bad_validation_is_rejected_naming_it(twenty, validation):
    with pytest.raises(ValueError, match="validation"):
        data.load_fashion_mnist(twenty, download=False, verify=False, validation=validation)


def test_bad_validation_is_rejected_before_looking_for_data(nowhere):
    with pytest.raises(ValueError, match="validation") as info:
        data.load_fashion_mnist(download=False, validation=-3)
    assert not isinstance(info.value, DataError)


# ---------------------------------------------------------------- add_noise

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_noise_preserves_dtype_and_shape(dtype):
    X = np.zeros((4, 5), dtype=dtype)
    noisy = data.add_noise(X, 0.3, seed=0)
    assert noisy.dtype == dtype and noisy.shape == X.shape


def test_add_noise_is_reproducible_by_seed():
    X = np.ones((100,), dtype=np.float32)
    np.testing.assert_array_equal(data.add_noise(X, 0.5, seed=7), data.add_noise(X, 0.5, seed=7))
    assert not np.array_equal(data.add_noise(X, 0.5, seed=7), data.add_noise(X, 0.5, seed=8))


def test_add_noise_has_mean_zero_and_std_sigma_and_is_not_clipped():
    X = np.full((1000, 1000), 0.5, dtype=np.float32)
    noisy = data.add_noise(X, 0.2, seed=1)
    diff = (noisy - X).astype(np.float64)
    assert abs(diff.mean()) < 1e-3  # standard error 2e-4
    assert abs(diff.std() - 0.2) < 1e-3
    assert noisy.min() < 0.0 and noisy.max() > 1.0


def test_add_noise_does_not_modify_input_and_zero_sigma_copies():
    X = np.linspace(0, 1, 50, dtype=np.float32)
    before = X.copy()
    data.add_noise(X, 0.4)
    np.testing.assert_array_equal(X, before)
    same = data.add_noise(X, 0.0)
    np.testing.assert_array_equal(same, X)
    assert same is not X and not np.shares_memory(same, X)


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf")])
def test_add_noise_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        data.add_noise(np.zeros(3, dtype=np.float32), sigma)


def test_add_noise_rejects_integer_images():
    with pytest.raises(ValueError, match="uint8"):
        data.add_noise(np.zeros(3, dtype=np.uint8), 0.1)


# ---------------------------------------------------------------- the real data

@pytest.fixture(scope="module")
def real():
    # Default download=True: a developer machine with internet fetches the data;
    # CI installs the Debian package dataset-fashion-mnist, so nothing is fetched there.
    start = time.perf_counter()
    ds = data.load_fashion_mnist(progress=False)
    return ds, time.perf_counter() - start


@pytest.mark.realdata
def test_real_data_shapes_dtypes_and_range(real):
    ds, _ = real
    assert ds.X_train.shape == (60000, 784) and ds.X_test.shape == (10000, 784)
    assert ds.X_train.dtype == np.float32 and ds.X_test.dtype == np.float32
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0
    assert ds.X_test.min() == 0.0 and ds.X_test.max() == 1.0
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.X_val is None


@pytest.mark.realdata
def test_real_data_has_balanced_classes(real):
    ds, _ = real
    assert set(np.unique(ds.y_train)) == set(range(10))
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), [1000] * 10)


@pytest.mark.realdata
def test_real_data_payload_hashes_match(real):
    ds, _ = real
    source = Path(ds.source)
    for name in data.FILES.values():
        assert payload_sha256(source / name) == data.PAYLOAD_SHA256[name], name


@pytest.mark.realdata
def test_real_data_validation_split(real):
    ds, _ = real
    split = data.load_fashion_mnist(Path(ds.source), download=False, validation=0.1, seed=0)
    assert split.X_val.shape == (6000, 784) and split.X_train.shape == (54000, 784)
    np.testing.assert_array_equal(split.X_test, ds.X_test)


# ---------------------------------------------------------------- hostile files


def _gzip_bomb(path, declared_shape, payload_bytes):
    """A small .gz whose IDX header declares ``declared_shape`` uint8 but which
    decompresses to ``payload_bytes`` zero bytes after the header."""
    header = b"\x00\x00\x08" + bytes([len(declared_shape)]) + b"".join(
        d.to_bytes(4, "big") for d in declared_shape)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header)
        block = b"\x00" * (1 << 20)
        for _ in range(payload_bytes >> 20):
            f.write(block)


@pytest.mark.parametrize("expected_shape", [None, (5, 28, 28)], ids=["header-bound", "expected-bound"])
def test_gzip_bomb_is_refused_in_bounded_memory_and_time(tmp_path, expected_shape):
    path = tmp_path / "bomb.gz"
    _gzip_bomb(path, (5, 28, 28), 200 << 20)  # ~200 KB on disk, 200 MB inflated
    assert path.stat().st_size < 400_000
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError, match="too long") as info:
            read_idx(path, expected_shape=expected_shape)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 20 << 20, f"peak allocation {peak / 2**20:.1f} MB"
    assert str(path) in str(info.value)


def test_header_declaring_more_than_the_file_can_hold_is_refused_before_allocating(tmp_path):
    path = tmp_path / "liar.gz"
    _gzip_bomb(path, (60000, 1000, 1000), 0)  # declares 60 GB in a few dozen bytes
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="more than a file of this size can hold") as info:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20
    assert str(path) in str(info.value)


def test_expected_shape_is_checked_before_the_payload_is_read(tmp_path):
    path = tmp_path / "big.gz"
    _gzip_bomb(path, (60000, 28, 28), 47 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="shape 60000x28x28 but expected 10000x28x28"):
            read_idx(path, expected_shape=(10000, 28, 28))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_instead_of_hanging(tmp_path):
    fifo = tmp_path / "train-images-idx3-ubyte.gz"
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(DataError, match="not a regular file") as info:
        read_idx(fifo)
    assert time.perf_counter() - start < 1.0
    assert str(fifo) in str(info.value)


def test_a_folder_is_refused_naming_it(tmp_path):
    with pytest.raises(DataError, match="not a regular file") as info:
        read_idx(tmp_path)
    assert str(tmp_path) in str(info.value)
