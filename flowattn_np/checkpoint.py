"""Checkpoints: a network's parameters, configuration, optimiser state and history in one .npz.

Format (version 1): an uncompressed NumPy ``.npz`` archive holding

* ``param/<name>``: every parameter array,
* ``opt/<key>``: the optimiser's state arrays (``velocity/<name>``, ``m/<name>``, ...),
* ``__meta__``: UTF-8 JSON bytes (uint8) with ``version``, ``config``
  (``NetworkConfig.to_dict()``), ``extra``, and optionally ``optimizer``
  (class, lr, step count t) and ``history``.

Arrays are copied to the host, so a checkpoint saved on CuPy loads on NumPy. A file is
read with ``allow_pickle=False``: a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import json
import os

import numpy

from .backend import asarray, to_numpy
from .files import atomic_write
from .network import Network, NetworkConfig

CHECKPOINT_VERSION = 1
META_KEY = "__meta__"


def save_arrays(path, arrays, meta):
    """Write a dict of arrays (either backend) and a JSON-able ``meta`` dict to one .npz.

    Atomic (``files.atomic_write``): an interrupted save leaves any previous file
    intact and no half-written file behind.
    """
    host = {k: to_numpy(v) for k, v in arrays.items()}
    host[META_KEY] = numpy.frombuffer(json.dumps(meta).encode("utf-8"), dtype=numpy.uint8)
    with atomic_write(path) as f:
        numpy.savez(f, **host)


def load_arrays(path):
    """Read what ``save_arrays`` wrote: (dict of NumPy arrays, meta dict)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no checkpoint at {path}")
    try:
        with numpy.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise ValueError(f"path: {path} is not a readable checkpoint (.npz): {exc}") from exc
    if META_KEY not in arrays:
        raise ValueError(f"path: {path} is an .npz file but not a flowattn_np checkpoint (no metadata)")
    meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    return arrays, meta


def save_checkpoint(path, net, optimizer=None, history=None, extra=None):
    """Save all parameters, the configuration (and optimiser state, history) to one .npz.

    Written atomically (temporary file, then rename): an interrupted save leaves the
    previous checkpoint intact. Arrays are copied to the host, so a checkpoint saved
    on CuPy loads on NumPy.
    """
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


def load_checkpoint(path):
    """Load a Network (on the active backend) from ``save_checkpoint``'s file.

    The saved history and extra data are on ``net.checkpoint_meta``; to resume
    training, build an optimiser on the returned network's params and call
    ``restore_optimizer``.
    """
    arrays, meta = load_arrays(path)
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"path: {path} has checkpoint version {meta.get('version')}, "
                         f"expected {CHECKPOINT_VERSION}")
    config = NetworkConfig.from_dict(meta["config"])
    params = _with_prefix(arrays, "param/")
    net = Network(config, params=params)
    missing = set(net.init_params(0)) - set(params)
    if missing:
        raise ValueError(f"path: {path} lacks parameters {sorted(missing)} for its configuration")
    net.checkpoint_meta = meta
    net.checkpoint_optimizer_state = _with_prefix(arrays, "opt/")
    return net


def restore_optimizer(optimizer, net):
    """Put the optimiser state saved with ``net``'s checkpoint into ``optimizer``."""
    state = dict(getattr(net, "checkpoint_optimizer_state", {}))
    state["t"] = net.checkpoint_meta.get("optimizer", {}).get("t", 0)
    optimizer.load_state(state)
    return optimizer
