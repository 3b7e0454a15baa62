"""Fashion-MNIST on the host: find it, download it, read and check it, add noise.

This is host-side I/O, so it uses NumPy directly (not the backend's ``xp``);
move the arrays to the GPU afterwards with ``flowattn_np.asarray`` if needed.

Where the data is looked for, in order (see ``search_path``):

1. the ``data_dir`` argument,
2. the environment variable ``$FLOWATTN_DATA``,
3. the project's ``data/`` folder (``default_data_dir()``),
4. the Debian/Ubuntu package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).

The four files are the official gzipped IDX files. Every problem with them
(missing, truncated, corrupted, wrong shape) raises ``DataError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import math
import os
import stat
import struct
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from flowattn_np.training.files import atomic_write
from flowattn_np.training.progress import progress_bar


class DataError(ValueError):
    """A data file is missing, unreadable, malformed or corrupted."""


CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# SHA-256 of the official .gz files as served by MIRROR (tensorflow_datasets,
# url_checksums/fashion_mnist.txt). Only a download can be checked against these:
# repackaged copies (e.g. Debian's) are recompressed, so their .gz bytes differ.
SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}

# SHA-256 of the decompressed IDX bytes (`zcat FILE | sha256sum`). These are the
# same for every faithful copy however it was compressed, so local files are
# checked against these.
PAYLOAD_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

EXPECTED_SHAPES = {
    "train_images": (60000, 28, 28),
    "train_labels": (60000,),
    "test_images": (10000, 28, 28),
    "test_labels": (10000,),
}

ENV_VAR = "FLOWATTN_DATA"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# IDX type code -> big-endian dtype (the IDX format stores multi-byte values big-endian).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


# ---------------------------------------------------------------- IDX files

# Deflate cannot expand data by more than about 1032:1, so a gzip file of N bytes holds at
# most this many payload bytes: a header that declares more is lying, and is refused
# before anything is allocated.
_MAX_DEFLATE_RATIO = 1032


def _open_regular(path):
    """Open ``path`` for binary reading if it is a regular file (not a FIFO, device or folder)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: not a regular file (a folder, FIFO or device); expected an IDX file")
    try:
        return open(path, "rb"), st.st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from exc


def _shape_str(shape):
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _read_header(stream, path):
    """Read and check the IDX header from ``stream``; return (shape, dtype)."""
    head = stream.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: not an IDX file: only {len(head)} bytes, the header needs 4")
    zero0, zero1, code, ndim = head
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{path}: not an IDX file: bad magic {head.hex()} (the first two bytes must be 00 00)"
        )
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(f"{path}: unknown IDX type code 0x{code:02X} (expected one of {known})")
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: IDX header gives {ndim} dimensions (expected 1 to 4)")
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(
            f"{path}: truncated header: {ndim} dimensions need {4 + 4 * ndim} header bytes "
            f"but the file holds {4 + len(dims)}"
        )
    return struct.unpack(f">{ndim}I", dims), _IDX_DTYPES[code]


def _read_payload(stream, path, shape, dtype, bound):
    """Read exactly the payload the header declares, never more than ``bound`` bytes."""
    expected = math.prod(shape) * dtype.itemsize
    declared = f"header says {_shape_str(shape)} {dtype.name} ({expected} bytes)"
    if expected > bound:
        raise DataError(f"{path}: {declared}, more than a file of this size can hold")
    payload = stream.read(expected)
    extra = stream.read(_CHUNK) if len(payload) == expected else b""
    if len(payload) < expected:
        raise DataError(f"{path}: truncated: {declared} but the file holds {len(payload)}")
    if extra:
        held = f"{'at least ' if len(extra) == _CHUNK else ''}{expected + len(extra)}"
        raise DataError(f"{path}: too long: {declared} but the file holds {held}")
    return payload


def _read_idx_payload(path, expected_shape=None, max_bytes=None):
    """(shape, dtype, payload bytes) of an IDX file, gzipped or raw, read in bounded memory.

    The header is read first; the payload is then read to exactly the declared size (and
    at most what ``expected_shape`` allows), so a file that decompresses to more costs
    no more than one chunk beyond it.
    """
    f, size = _open_regular(path)
    with f:
        gz = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
        try:
            shape, dtype = _read_header(stream, path)
            if expected_shape is not None and tuple(shape) != tuple(expected_shape):
                raise DataError(
                    f"{path}: shape {_shape_str(shape)} but expected {_shape_str(expected_shape)}"
                )
            bound = size * _MAX_DEFLATE_RATIO if gz else size
            bound = bound if max_bytes is None else min(bound, max_bytes)
            return shape, dtype, _read_payload(stream, path, shape, dtype, bound)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise DataError(f"{path}: broken gzip stream (truncated or corrupted): {exc}") from exc


def _idx_sha256(shape, dtype, payload):
    """SHA-256 of the decompressed IDX file (header and payload) that these were read from."""
    code = next(c for c, d in _IDX_DTYPES.items() if d == dtype)
    h = hashlib.sha256(bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape))
    h.update(payload)
    return h.hexdigest()


def _to_array(shape, dtype, payload):
    # A native-endian, writable copy (frombuffer on bytes is read-only).
    arr = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path, expected_shape=None):
    """Read an IDX file (gzipped or raw) into a native-endian array of its stored shape.

    Raises DataError, naming ``path``, for a path that is not a regular file, a broken
    gzip stream, a bad header, a payload that is not exactly prod(dims) * itemsize bytes,
    or a shape other than ``expected_shape`` (when given). Memory stays bounded by the
    declared size, whatever the file decompresses to.
    """
    return _to_array(*_read_idx_payload(path, expected_shape))


def write_idx(path, array):
    """Write ``array`` (1 to 4 dims; uint8, int8, int16, int32, float32 or float64) as IDX.

    Gzipped if ``path`` ends with ``.gz``. Atomic: a failed write leaves no
    temporary file and does not touch an existing ``path``.
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(
            f"{path}: cannot write dtype {array.dtype} as IDX "
            "(expected uint8, int8, int16, int32, float32 or float64)"
        )
    if not 1 <= array.ndim <= 4:
        raise DataError(f"{path}: cannot write a {array.ndim}-d array as IDX (expected 1 to 4 dims)")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = array.astype(_IDX_DTYPES[code], copy=False).tobytes(order="C")
    with atomic_write(path) as f:
        if path.name.endswith(".gz"):
            # mtime=0: the same array always gives the same bytes (stable hashes).
            with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
                gz.write(header)
                gz.write(payload)
        else:
            f.write(header)
            f.write(payload)


# ---------------------------------------------------------------- where the data is

def default_data_dir():
    """The project's ``data/`` folder in a source checkout, else ``$XDG_CACHE_HOME/flowattn_np``.

    An installed package must not write into site-packages, hence the cache dir.
    """
    root = Path(__file__).resolve().parents[2]
    if (root / "setup.py").is_file() or (root / "pyproject.toml").is_file():
        return root / "data"
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "flowattn_np"


def _labelled_search_path(data_dir=None):
    # Read the env var, default_data_dir and DEBIAN_DIR now, not at import (tests patch them).
    places = []
    if data_dir is not None:
        places.append((Path(data_dir).expanduser(), "the data_dir argument"))
    env = os.environ.get(ENV_VAR)
    if env:
        places.append((Path(env).expanduser(), f"${ENV_VAR}"))
    places.append((default_data_dir(), "default_data_dir(): the project data/ folder or the user cache"))
    places.append((Path(DEBIAN_DIR), "the Debian package dataset-fashion-mnist"))
    return places


def search_path(data_dir=None):
    """The directories searched for Fashion-MNIST, in order (a list of Paths)."""
    return [p for p, _ in _labelled_search_path(data_dir)]


def _has_all_files(directory):
    return all((directory / name).is_file() for name in FILES.values())


def find_fashion_mnist(data_dir=None):
    """The first directory on ``search_path(data_dir)`` holding all four files, or None."""
    for directory in search_path(data_dir):
        if _has_all_files(directory):
            return directory
    return None


def _how_to_get_data():
    names = ", ".join(FILES.values())
    return (
        "To get Fashion-MNIST, either\n"
        "  * on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
        f"(installs it in {DEBIAN_DIR}), or\n"
        f"  * download it from the official mirror {MIRROR} with\n"
        '      python -c "import flowattn_np.experiments.data as d; d.download_fashion_mnist()"\n'
        "    (or call load_fashion_mnist(download=True) on a machine with internet), or\n"
        f"  * put the four files ({names}) in a directory and set ${ENV_VAR} to it "
        "(or pass data_dir=...)."
    )


def _not_found_message(data_dir, reason=None):
    lines = ["Fashion-MNIST not found. Looked in, in order:"]
    for i, (path, label) in enumerate(_labelled_search_path(data_dir), 1):
        lines.append(f"  {i}. {path}  ({label})")
    if reason is not None:
        lines.append(f"The download failed: {getattr(reason, 'short', reason)}")
    lines.append(_how_to_get_data())
    return "\n".join(lines)


# ---------------------------------------------------------------- download

def _sha256_of_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_valid_copy(path, name):
    """True if ``path`` is the official .gz, or a recompressed copy of the same payload."""
    if not path.is_file():
        return False
    if _sha256_of_file(path) == SHA256[name]:
        return True
    key = next(k for k, v in FILES.items() if v == name)
    try:  # bounded by the size of the genuine file: a larger payload cannot be it
        idx = _read_idx_payload(path, max_bytes=math.prod(EXPECTED_SHAPES[key]))
    except DataError:
        return False
    return _idx_sha256(*idx) == PAYLOAD_SHA256.get(name)


def _download_one(url, target, expected, progress, timeout):
    with atomic_write(target) as f:
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length") if resp.headers else None
                total = int(length) if length else None
                with progress_bar(total, target.name, progress, unit="B", unit_scale=True) as bar:
                    while chunk := resp.read(_CHUNK):
                        h.update(chunk)
                        f.write(chunk)
                        bar.update(len(chunk))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # URLError, timeouts and dropped connections are OSErrors; a bad URL a ValueError.
            short = f"could not download {url} ({exc}); no network?"
            err = DataError(short + "\n" + _how_to_get_data())
            err.short = short  # load_fashion_mnist adds its own how-to text
            raise err from exc
        actual = h.hexdigest()
        if actual != expected:
            # Raising inside atomic_write discards the temporary file.
            raise DataError(
                f"{url}: SHA-256 mismatch for {target.name}: expected {expected}, "
                f"got {actual}; the download was discarded"
            )


def download_fashion_mnist(dest=None, mirror=MIRROR, progress=True, timeout=30):
    """Download the four Fashion-MNIST files from ``mirror`` into ``dest``; return ``dest``.

    ``dest`` defaults to ``default_data_dir()``. Each file is checked against
    ``SHA256`` while it streams and only then moved into place; files already
    present and valid are kept. Raises DataError on a network error or a hash mismatch.
    """
    dest = Path(dest).expanduser() if dest is not None else default_data_dir()
    dest.mkdir(parents=True, exist_ok=True)
    base = mirror if mirror.endswith("/") else mirror + "/"
    for name in FILES.values():
        target = dest / name
        if _is_valid_copy(target, name):
            continue
        _download_one(base + name, target, SHA256[name], progress, timeout)
    return dest


# ---------------------------------------------------------------- load

@dataclasses.dataclass(frozen=True, eq=False)
class FashionMNIST:
    """Fashion-MNIST as arrays: images float32 in [0, 1], labels int64 in 0..9.

    ``X_*`` is (N, 784) when loaded with ``flatten=True``, else (N, 28, 28).
    ``X_val``/``y_val`` are None when no validation set was held out.
    ``source`` is the directory the files were read from.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    X_val: np.ndarray | None
    y_val: np.ndarray | None
    source: str
    class_names: tuple = CLASS_NAMES

    def __repr__(self):
        def shape(a):
            return None if a is None else tuple(a.shape)
        return (
            f"FashionMNIST(train={shape(self.X_train)}, val={shape(self.X_val)}, "
            f"test={shape(self.X_test)}, source={self.source!r})"
        )


def _check_validation(validation):
    """Reject a bad ``validation`` before any I/O."""
    ok = not isinstance(validation, bool) and (
        (isinstance(validation, (int, np.integer)) and validation >= 0)
        or (isinstance(validation, (float, np.floating)) and 0.0 <= validation < 1.0)
    )
    if not ok:
        raise ValueError(
            f"validation must be an int count >= 0 or a float fraction in [0, 1), got {validation!r}"
        )


def _validation_count(validation, n):
    if isinstance(validation, (int, np.integer)):
        n_val = int(validation)
    else:
        n_val = int(round(float(validation) * n))
    if n_val >= n:
        raise ValueError(
            f"validation={validation!r} holds out {n_val} of the {n} training images; "
            "at least one must stay in the training set"
        )
    return n_val


def _read_checked(directory, key, verify):
    name = FILES[key]
    path = directory / name
    shape, dtype, payload = _read_idx_payload(path, EXPECTED_SHAPES[key] if verify else None)
    arr = _to_array(shape, dtype, payload)
    if verify:
        actual = _idx_sha256(shape, dtype, payload)
        if actual != PAYLOAD_SHA256[name]:
            raise DataError(
                f"{path}: corrupted: SHA-256 of the decompressed data is {actual}, "
                f"expected {PAYLOAD_SHA256[name]}; delete the file and get it again"
            )
    return arr, path


def _images_and_labels(directory, split, verify):
    images, ipath = _read_checked(directory, f"{split}_images", verify)
    labels, lpath = _read_checked(directory, f"{split}_labels", verify)
    # Structural checks that hold for any usable copy, also with verify=False.
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{ipath}: expected a 3-d uint8 image array, got {images.ndim}-d {images.dtype}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{lpath}: expected a 1-d uint8 label array, got {labels.ndim}-d {labels.dtype}")
    if len(images) != len(labels):
        raise DataError(f"{lpath}: {len(labels)} labels but {ipath.name} holds {len(images)} images")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lpath}: label {int(labels.max())} out of range (expected 0..9)")
    return images, labels.astype(np.int64)


def load_fashion_mnist(data_dir=None, download=True, validation=0, seed=0,
                       flatten=True, verify=True, progress=True):
    """Load Fashion-MNIST as a ``FashionMNIST`` (images float32 in [0, 1], labels int64).

    The files are looked for on ``search_path(data_dir)``; if absent and
    ``download``, they are downloaded into ``data_dir`` (or ``default_data_dir()``).
    ``validation`` (an int count or a fraction in [0, 1)) of the training set is
    held out as a validation set, chosen by ``np.random.default_rng(seed)``.
    With ``verify`` the shapes and the SHA-256 of the decompressed files are checked.
    """
    _check_validation(validation)
    directory = find_fashion_mnist(data_dir)
    if directory is None:
        if not download:
            raise DataError(_not_found_message(data_dir))
        dest = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        try:
            # MIRROR read now (not the default bound at def time) so it can be patched.
            directory = download_fashion_mnist(dest, mirror=MIRROR, progress=progress)
        except DataError as exc:
            raise DataError(_not_found_message(data_dir, reason=exc)) from exc

    train_images, y_train = _images_and_labels(directory, "train", verify)
    test_images, y_test = _images_and_labels(directory, "test", verify)

    def to_float(images):
        # One pass uint8 -> float32 in [0, 1]; 255 / 255 is exactly 1.0.
        x = np.divide(images, np.float32(255), dtype=np.float32)
        return x.reshape(len(x), -1) if flatten else x

    X_train, X_test = to_float(train_images), to_float(test_images)
    X_val = y_val = None
    n_val = _validation_count(validation, len(X_train))
    if n_val > 0:
        perm = np.random.default_rng(seed).permutation(len(X_train))
        # Sorted, so the training set keeps the file order whatever is held out.
        val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        X_val, y_val = X_train[val_idx], y_train[val_idx]
        X_train, y_train = X_train[train_idx], y_train[train_idx]
    return FashionMNIST(
        X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
        X_val=X_val, y_val=y_val, source=str(directory), class_names=CLASS_NAMES,
    )


# ---------------------------------------------------------------- noise

def add_noise(X, sigma, seed=0):
    r"""$X+\sigma\varepsilon$ with $\varepsilon\sim\mathcal N(0,1)$ from ``default_rng(seed)``, not clipped (the paper's additive Gaussian noise).

    Parameters
    ----------
    X : array
        float32 or float64; not modified.
    sigma : float
        $\sigma\ge0$, finite.
    seed : int
        Seed of $\varepsilon$.

    Returns
    -------
    array
        Of the shape and dtype of ``X``.
    """
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        raise ValueError(f"add_noise: X must be a float32 or float64 array, got {X.dtype}")
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"add_noise: sigma must be finite and >= 0, got {sigma}")
    if sigma == 0:
        return X.copy()
    eps = np.random.default_rng(seed).standard_normal(X.shape, dtype=X.dtype)
    eps *= sigma  # a Python float keeps eps's dtype
    eps += X
    return eps


# ---------------------------------------------------------------- synthetic problems
# Small problems the package generates itself, for tests, notebooks and students.
# Host NumPy arrays (float32 features, int64 labels); move them with flowattn_np.asarray.


def make_blobs(n=600, classes=3, dim=2, spread=0.5, radius=2.0, seed=0, dtype="float32"):
    """Gaussian clusters around ``classes`` centres on a circle (other axes 0); linearly separable for small ``spread``.

    Parameters
    ----------
    n : int
        Number of points.
    classes : int
        Number of clusters.
    dim : int
        Dimension, at least 2.
    spread : float
        Standard deviation of each cluster.
    radius : float
        Radius of the circle of centres.
    seed : int
        Seed.
    dtype : str
        Floating dtype of ``X``.

    Returns
    -------
    X : array, shape (n, dim)
    y : array of int, shape (n,)
    """
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(classes) / classes
    centres = np.zeros((classes, dim))
    centres[:, 0], centres[:, 1] = radius * np.cos(angles), radius * np.sin(angles)
    y = rng.integers(0, classes, size=n)
    X = centres[y] + spread * rng.standard_normal((n, dim))
    return X.astype(dtype), y.astype(np.int64)


def make_xor(n=800, spread=0.3, dim=2, seed=0, dtype="float32"):
    r"""XOR: four clusters at $(\pm1,\pm1)$; class 1 where the two signs differ.

    No linear classifier through the origin (logits $Z\theta^\top$, no intercept) can beat
    chance on it: class($z$) = class($-z$) while a linear score is odd. With ``dim`` > 2 the
    extra axes carry pure noise.

    Parameters
    ----------
    n : int
        Number of points.
    spread : float
        Standard deviation of each cluster.
    dim : int
        Dimension, at least 2.
    seed : int
        Seed.
    dtype : str
        Floating dtype of ``X``.

    Returns
    -------
    X : array, shape (n, dim)
    y : array of int, shape (n,)
    """
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n, 2))
    X = np.zeros((n, dim))
    X[:, :2] = signs + spread * rng.standard_normal((n, 2))
    if dim > 2:
        X[:, 2:] = spread * rng.standard_normal((n, dim - 2))
    y = (signs[:, 0] != signs[:, 1]).astype(np.int64)
    return X.astype(dtype), y


def random_spd(d, seed=0, condition=4.0):
    r"""A random symmetric positive-definite $d\times d$ matrix with eigenvalues in $[1,\text{condition}]$."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (Q * np.linspace(1.0, condition, d)) @ Q.T


def make_retrieval(num_seqs=512, tokens=8, d=6, theta_star=None, seed=0, dtype="float32"):
    r"""Self-attention retrieval: each token's target is the token it scores highest under a hidden SPD matrix.

    $$
    y_{bi}=\arg\max_j\,(Z_b\theta^\star Z_b^\top)_{ij}
    $$

    Parameters
    ----------
    num_seqs : int
        Number of sequences $B$.
    tokens : int
        Tokens per sequence $n$.
    d : int
        Token dimension.
    theta_star : array, shape (d, d), optional
        The hidden matrix; a random SPD one by default.
    seed : int
        Seed.
    dtype : str
        Floating dtype of ``X``.

    Returns
    -------
    X : array, shape (B, n, d)
    y : array of int, shape (B, n)
    theta_star : array, shape (d, d)
    """
    rng = np.random.default_rng(seed)
    if theta_star is None:
        theta_star = random_spd(d, seed=seed + 1)
    X = rng.standard_normal((num_seqs, tokens, d)) / d ** 0.25
    scores = X @ theta_star @ X.transpose(0, 2, 1)
    return X.astype(dtype), scores.argmax(axis=-1).astype(np.int64), theta_star.astype(dtype)


# every public name (the package exports a few of them for the course; the API page lists all)
__all__ = [
    "DataError", "CLASS_NAMES", "FILES", "MIRROR", "SHA256", "PAYLOAD_SHA256", "EXPECTED_SHAPES", "ENV_VAR",
    "DEBIAN_DIR", "read_idx", "write_idx", "default_data_dir", "search_path", "find_fashion_mnist",
    "download_fashion_mnist", "FashionMNIST", "load_fashion_mnist", "add_noise", "make_blobs", "make_xor",
    "random_spd", "make_retrieval",
]
