"""Checkpoints: a network's parameters, configuration, optimiser state and history in one .npz.

Format (version 1): an uncompressed NumPy ``.npz`` archive holding

* ``param/<name>``: every parameter array,
* ``opt/<key>``: the optimiser's state arrays (``velocity/<name>``, ``m/<name>``, ...),
* ``__meta__``: UTF-8 JSON bytes (uint8) with ``version``, ``config``
  (``NetworkConfig.to_dict()``), ``extra``, and optionally ``optimizer``
  (class, lr, step count t) and ``history``.

Arrays are copied to the host, so a checkpoint saved on CuPy loads on NumPy. A file is
untrusted: it is read with ``allow_pickle=False`` (it cannot run code); only a regular
file is opened (a FIFO or device would block or never end); and every array's declared
shape is read from its header and checked against the stored bytes and, for a
checkpoint, against the configuration in its metadata before any array is loaded or any
network is built, so a small file cannot make the reader allocate much.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile

import numpy
from numpy.lib import format as npy_format

from flowattn_np.backend import asarray, to_numpy
from flowattn_np.training.files import atomic_write
from flowattn_np.blocks.network import Network, NetworkConfig

CHECKPOINT_VERSION = 1
META_KEY = "__meta__"
MAX_META_BYTES = 64 * 2 ** 20  # JSON metadata: configuration, history (a few KB in practice)
MAX_META_DEPTH = 32  # nesting of the metadata JSON (the configuration nests 3 deep)
MAX_DEFLATE_RATIO = 1032  # the most DEFLATE can expand a byte (for compressed archives)


def _host_array(name, a):
    """A NumPy array of a numeric dtype, or a TypeError naming ``name`` (before any write)."""
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(a).__name__}")
    host = to_numpy(a)
    if host.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a numeric array, got dtype {host.dtype}")
    return host


def save_arrays(path, arrays, meta):
    """Write a dict of arrays (either backend) and a JSON-able ``meta`` dict to one .npz.

    Every value is checked (an array of a numeric dtype) and ``meta`` encoded before the
    file is opened. Atomic (``files.atomic_write``): an interrupted or failed save leaves
    any previous file intact and no half-written file behind.
    """
    host = {k: _host_array(f"arrays[{k!r}]", v) for k, v in arrays.items()}
    host[META_KEY] = numpy.frombuffer(json.dumps(meta).encode("utf-8"), dtype=numpy.uint8)
    with atomic_write(path) as f:
        numpy.savez(f, **host)


def _regular_file(path):
    """``path`` as a string if it names a regular file; FileNotFoundError or ValueError."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode  # stat never blocks, where opening a FIFO would
    except FileNotFoundError:
        raise FileNotFoundError(f"path: no checkpoint at {path}") from None
    except OSError as exc:  # a loop of symbolic links, no permission, a name too long
        raise ValueError(f"path: {path} cannot be read as a checkpoint: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"path: {path} is not a regular file (a folder, FIFO or device), "
                         "so it cannot be a checkpoint")
    return path


def _member_header(archive, info, path):
    """(shape, dtype) of one .npy member from its header alone, checked against the
    member's stored size: the data is not read."""
    if info.file_size > max(info.compress_size, 1) * MAX_DEFLATE_RATIO:
        raise ValueError(f"path: {path}: member {info.filename!r} declares {info.file_size} "
                         f"bytes from {info.compress_size}, more than compression can give")
    with archive.open(info) as f:
        version = npy_format.read_magic(f)
        read = npy_format.read_array_header_1_0 if version == (1, 0) else \
            npy_format.read_array_header_2_0
        shape, _, dtype = read(f)
        header = f.tell()
    if dtype.hasobject:
        raise ValueError(f"path: {path}: member {info.filename!r} holds Python objects")
    nbytes = dtype.itemsize
    for s in shape:
        nbytes *= s
    if nbytes + header != info.file_size:
        raise ValueError(f"path: {path}: member {info.filename!r} declares shape {shape} "
                         f"({nbytes} bytes) but stores {info.file_size - header} bytes")
    return shape, dtype


def read_headers(path):
    """Name -> (shape, dtype) of every array in an .npz file, from the headers only.

    Each declared size is checked against the bytes the archive stores for it, so what
    a later load allocates is bounded by the file (times the DEFLATE ratio when the
    archive is compressed). Raises ValueError naming the file when it is not an .npz.
    """
    path = _regular_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [i.filename for i in infos]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:  # zipfile would silently read the last copy
                raise ValueError(f"path: {path}: members {repeated} appear more than once")
            return {info.filename[:-4] if info.filename.endswith(".npy") else info.filename:
                    _member_header(archive, info, path) for info in infos}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"path: {path} is not a readable checkpoint (.npz): {exc}") from exc
    except ValueError as exc:
        if str(exc).startswith("path:"):
            raise
        raise ValueError(f"path: {path} is not a readable checkpoint (.npz): {exc}") from exc


def _parse_meta(raw, path):
    """The metadata dict from its stored bytes; ValueError naming the file otherwise."""
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except RecursionError:
        meta = None
    except UnicodeDecodeError as exc:
        raise ValueError(f"path: {path}: the checkpoint metadata is not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"path: {path}: the checkpoint metadata is not JSON ({exc})") from None
    if meta is None or _depth(meta) > MAX_META_DEPTH:
        raise ValueError(f"path: {path}: the checkpoint metadata nests deeper than {MAX_META_DEPTH} levels")
    if not isinstance(meta, dict):
        raise ValueError(f"path: {path}: the checkpoint metadata is not a JSON object")
    return meta


def _depth(value):
    """How deep lists and dicts nest in a JSON value (iterative: no recursion limit)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            todo.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def load_arrays(path, names=None):
    """Read what ``save_arrays`` wrote: (dict of NumPy arrays, meta dict).

    ``names`` (optional) is called with the name -> (shape, dtype) of the stored arrays
    and the metadata before any array is loaded, and may raise to refuse the file.
    """
    headers = read_headers(path)
    path = os.fspath(path)
    if META_KEY not in headers:
        raise ValueError(f"path: {path} is an .npz file but not a flowattn_np checkpoint (no metadata)")
    shape, dtype = headers.pop(META_KEY)
    if len(shape) != 1 or dtype != numpy.uint8 or shape[0] > MAX_META_BYTES:
        raise ValueError(f"path: {path}: the checkpoint metadata is not a byte string of at most "
                         f"{MAX_META_BYTES} bytes (shape {shape}, dtype {dtype})")
    try:
        with numpy.load(path, allow_pickle=False) as f:
            meta = _parse_meta(f[META_KEY], path)
            if names is not None:
                names(headers, meta)
            arrays = {k: f[k] for k in headers}
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"path: {path} is not a readable checkpoint (.npz): {exc}") from exc
    return arrays, meta


def save_checkpoint(path, net, optimizer=None, history=None, extra=None):
    """Save all parameters and the configuration (and optimiser state, history) to one ``.npz``.

    Written atomically (temporary file, then rename): an interrupted save leaves the previous
    checkpoint intact. Arrays are copied to the host, so a checkpoint saved on CuPy loads on
    NumPy.

    Parameters
    ----------
    path : str or Path
        The ``.npz`` file.
    net : Network
        Its params and config.
    optimizer : Optimizer, optional
        Its state, to resume training.
    history : History, optional
        The training records.
    extra : dict, optional
        JSON-able data to keep alongside.
    """
    net.check_params(net.params, "net.params")  # a file that will load again, or nothing
    arrays = {f"param/{k}": v for k, v in net.params.items()}
    meta = {"version": CHECKPOINT_VERSION, "config": net.config.to_dict(), "extra": extra or {}}
    if optimizer is not None:
        state = optimizer.state()
        meta["optimizer"] = {"class": type(optimizer).__name__, "lr": optimizer.lr, "t": state.pop("t")}
        arrays.update({f"opt/{k}": v for k, v in state.items()})
    if history is not None:
        meta["history"] = history.to_dict()
    save_arrays(path, arrays, meta)


def _with_prefix(arrays, prefix):
    """The arrays whose key starts with ``prefix``, keyed without it, on the active backend."""
    return {k[len(prefix):]: asarray(v) for k, v in arrays.items() if k.startswith(prefix)}


def _config_from_meta(meta, path):
    """The NetworkConfig in a checkpoint's metadata; ValueError naming the file otherwise."""
    for key in ("version", "config"):
        if key not in meta:
            raise ValueError(f"path: {path}: the checkpoint metadata lacks the key {key!r}")
    if meta["version"] != CHECKPOINT_VERSION:
        raise ValueError(f"path: {path} has checkpoint version {meta['version']}, "
                         f"expected {CHECKPOINT_VERSION}")
    try:
        return NetworkConfig.from_dict(meta["config"])
    except KeyError as exc:
        raise ValueError(f"path: {path}: the checkpoint's configuration lacks the key {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"path: {path}: the checkpoint's configuration is not valid: {exc}") from None


def _check_stored(config, headers, path):
    """Refuse a checkpoint whose stored arrays do not fit its configuration, from the
    headers alone: before any array is loaded or any network built."""
    source = f"path: {path}"
    params = {k[len("param/"):]: shape for k, (shape, _) in headers.items() if k.startswith("param/")}
    config.check_param_shapes(params, source)
    for key, (shape, _) in headers.items():
        if not key.startswith("param/"):
            name = key.split("/")[-1]  # opt/velocity/<name>, opt/m/<name>, ...
            if not key.startswith("opt/") or params.get(name) != shape:
                raise ValueError(f"{source}: unexpected array {key!r} of shape {shape} "
                                 "(not a parameter, nor optimiser state of one)")


def load_checkpoint(path):
    """Load a `Network`, on the active backend, from the file of `save_checkpoint`.

    The saved history and extra data are on ``net.checkpoint_meta``; to resume training,
    build an optimiser on the returned network's params and call `restore_optimizer`.

    Parameters
    ----------
    path : str or Path
        The ``.npz`` file.

    Returns
    -------
    Network
    """
    path = os.fspath(path)
    found = {}

    def check(headers, meta):
        found["config"] = _config_from_meta(meta, path)
        _check_stored(found["config"], headers, path)

    arrays, meta = load_arrays(path, names=check)
    params = _with_prefix(arrays, "param/")
    net = Network(found["config"], params=params)
    net.checkpoint_path = path
    net.checkpoint_meta = meta
    net.checkpoint_optimizer_state = _with_prefix(arrays, "opt/")
    return net


def restore_optimizer(optimizer, net):
    """Put the optimiser state saved with ``net``'s checkpoint into ``optimizer``.

    The saved state must be of ``optimizer``'s kind and each array of the shape and dtype
    of the parameter it belongs to in ``optimizer.params``; otherwise a ValueError naming
    the checkpoint file, before ``optimizer`` changes.

    Parameters
    ----------
    optimizer : Optimizer
        Built on ``net.params``.
    net : Network
        Returned by `load_checkpoint`.
    """
    path = getattr(net, "checkpoint_path", "the checkpoint")
    saved = getattr(net, "checkpoint_meta", {}).get("optimizer")
    kind = type(optimizer).__name__
    if not isinstance(saved, dict):
        raise ValueError(f"path: {path} holds no optimiser state (it was saved without an optimizer)")
    if saved.get("class") != kind:
        raise ValueError(f"optimizer: {path} holds the state of {saved.get('class')!r}, got a {kind}")
    t = saved.get("t")
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError(f"path: {path}: the optimiser's step count t is {t!r}, expected an integer >= 0")
    state = dict(getattr(net, "checkpoint_optimizer_state", {}))
    for key, array in state.items():
        prefix, _, name = key.partition("/")
        param = optimizer.params.get(name)
        if prefix not in optimizer.state_prefixes or param is None:
            raise ValueError(f"optimizer: {path} holds {key!r}, which a {kind} on these parameters has not")
        if tuple(array.shape) != tuple(param.shape) or array.dtype != param.dtype:
            raise ValueError(f"optimizer: {path} holds {key!r} of shape {tuple(array.shape)} "
                             f"({array.dtype}), but the parameter {name!r} is {tuple(param.shape)} ({param.dtype})")
    state["t"] = t
    optimizer.load_state(state)
    return optimizer
