"""Helpers shared by several test modules (plain functions; fixtures live in conftest.py)."""

import numpy as np

import flowattn_np as fa

ID_TOL = 1e-12


def offline_without_data(monkeypatch, folder):
    """Fashion-MNIST nowhere (no Debian copy, an empty data folder under ``folder``, no
    $FLOWATTN_DATA) and no network: the loader must fail with its how-to message."""
    import flowattn_np.experiments.data as data

    monkeypatch.setattr(data, "DEBIAN_DIR", folder / "none")
    monkeypatch.setattr(data, "default_data_dir", lambda: folder / "empty")
    monkeypatch.delenv("FLOWATTN_DATA", raising=False)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)


def host(a):
    """A NumPy copy of an array of either backend."""
    return np.asarray(fa.to_numpy(a))


def assert_round_off(actual, expected, *terms, tol=ID_TOL):
    """actual == expected up to tol relative to the largest of the terms involved."""
    actual, expected = host(actual), host(expected)
    scale = max([np.abs(expected).max(initial=0.0)] + [np.abs(host(t)).max(initial=0.0) for t in terms]
                + [1e-300])
    err = np.abs(actual - expected).max(initial=0.0)
    assert err <= tol * scale, f"max abs error {err:.3e} > {tol:.0e} x scale {scale:.3e}"


def network_data(config, rows, seqs, tokens, seed=0, dtype=None, uniform=False):
    """(X, y) matching a NetworkConfig: rows of classes, sequences of tokens, or multi-head
    labels. ``uniform`` draws pixel-like features in [0, 1) instead of N(0, 1)."""
    rng = np.random.default_rng(seed)
    dtype = dtype or config.dtype
    if config.head_model == "quadratic":
        X = rng.normal(size=(seqs, tokens, config.n_inputs))
        y = rng.integers(0, tokens, size=(seqs, tokens))
    else:
        X = rng.random(size=(rows, config.n_inputs)) if uniform else rng.normal(size=(rows, config.n_inputs))
        if config.block.heads is None:
            y = rng.integers(0, config.n_classes, size=rows)
        else:
            y = np.stack([rng.integers(0, m, size=rows) for m in config.block.heads], axis=1)
    return fa.asarray(X, dtype=dtype), fa.asarray(y)


CHROMIUM = "/usr/bin/chromium"  # Debian's chromium and chromium-driver
CHROMEDRIVER = "/usr/bin/chromedriver"


def require_browser():
    """(chromium, chromedriver) for the browser tests: Debian's, or $FLOWATTN_CHROMIUM and
    $FLOWATTN_CHROMEDRIVER. Where either is missing the test skips, saying what to install;
    under CI=true it fails instead, since CI installs them (.ci/run)."""
    import os
    from pathlib import Path

    import pytest

    paths = (os.environ.get("FLOWATTN_CHROMIUM") or CHROMIUM,
             os.environ.get("FLOWATTN_CHROMEDRIVER") or CHROMEDRIVER)
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        reason = (f"{' and '.join(missing)} not found: the website's tests need a browser, Debian's "
                  "chromium and chromium-driver (sudo apt-get install chromium chromium-driver, as .ci/run "
                  "does), or FLOWATTN_CHROMIUM and FLOWATTN_CHROMEDRIVER naming a Chromium and its chromedriver")
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(reason + " (CI=true: never skipped in CI)")
        pytest.skip(reason)
    return paths


LAYERS = ("equations", "blocks", "fast", "training", "experiments", "teaching")
"""The subpackages of flowattn_np, from the paper up: each may import only from those
before it (and from the modules of no subpackage, such as backend and validate)."""


def package_modules():
    """Every module file of flowattn_np, subpackages included (searched recursively), as
    {dotted name below flowattn_np: path}; the notebook links of ``teaching`` are not
    modules of the package."""
    from pathlib import Path

    package = Path(fa.__file__).resolve().parent
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if len(parts) == 1 or (parts[0] in LAYERS and len(parts) == 2):
            out[".".join(parts)] = path
    return out
