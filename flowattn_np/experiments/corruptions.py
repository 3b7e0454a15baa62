"""Corrupted test images: Gaussian noise, and two corruptions no training run sees.

``corrupt(X, kind, strength, seed)`` returns a corrupted copy of the images ``X`` (rows
of $s\\times s$ pixels, flattened, values in $[0, 1]$), of the same shape and dtype:

* ``"noise"``: $X+\\sigma\\varepsilon$, $\\varepsilon\\sim\\mathcal N(0, 1)$ per pixel; strength $\\sigma\\in[0, 10]$.
  Parts 3-5 also train with it (noise augmentation, $\\sigma = 0.5$).
* ``"occlusion"``: a square patch of side $\\mathrm{round}(a s)$ pixels, at a random place
  in each image, set to 0 (the background); strength $a\\in[0, 1]$, the patch side as a
  fraction of the image side.
* ``"blur"``: a Gaussian blur of standard deviation $b\\in[0, 5]$ pixels, $K X K^\\top$
  per image with $K_{ij}\\propto e^{-(i-j)^2/2b^2}$ ($|i-j|\\le\\lceil 3b\\rceil$, rows
  summing to 1, zero outside the image).

Strength 0 is the identity. Random draws come from a NumPy generator seeded by ``seed``,
so a seed gives the same images on every run and backend. The corruptions run on the
host, before the test set is moved to the backend (``asarray``): once per run, never in
a training step. ``suite`` builds the set of corrupted test sets that ``reproduce``
evaluates every model of parts 3-5 on.
"""

from __future__ import annotations

import math

import numpy as np

from flowattn_np.random import host_rng

# kind -> (what the strength is, its largest allowed value)
KINDS = {
    "noise": ("sigma, the standard deviation of the added Gaussian noise", 10.0),
    "occlusion": ("the side of the occluding square as a fraction of the image side", 1.0),
    "blur": ("sigma of the Gaussian blur in pixels", 5.0),
}
# the kinds no training run of reproduce sees
UNSEEN = ("occlusion", "blur")


def check_strength(kind, strength):
    """``strength`` as a float, after checking ``kind`` and the range of ``strength``."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    what, high = KINDS[kind]
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and 0.0 <= value <= high):
        raise ValueError(f"strength: {kind} takes {what}, expected a number in [0, {high:g}], "
                         f"got {strength!r}")
    return value


def _side(X):
    if not isinstance(X, np.ndarray):
        raise TypeError(f"X: expected a host NumPy array (the corruptions run on the host, before "
                        f"the images move to the backend), got {type(X).__name__}")
    if X.dtype not in (np.float32, np.float64):
        raise ValueError(f"X: expected float32 or float64 images, got {X.dtype}")
    side = math.isqrt(X.shape[-1]) if X.ndim else 0
    if X.ndim < 1 or side * side != X.shape[-1] or side == 0:
        raise ValueError(f"X: expected rows of s x s pixels, flattened (last axis a square number), "
                         f"got shape {X.shape}")
    return side


def corrupt(X, kind, strength, seed=0):
    """A corrupted copy of the images ``X`` (shape (..., s*s), float32/float64), same shape and dtype.

    ``kind`` is ``"noise"``, ``"occlusion"`` or ``"blur"`` (see the module's docstring);
    ``strength`` out of its range raises ValueError, naming the range.
    """
    value = check_strength(kind, strength)
    side = _side(X)
    if value == 0.0:
        return X.copy()
    return {"noise": _noise, "occlusion": _occlusion, "blur": _blur}[kind](X, value, side, seed)


def _noise(X, sigma, side, seed):
    eps = host_rng(seed).standard_normal(X.shape, dtype=X.dtype)
    eps *= X.dtype.type(sigma)
    return X + eps


def _occlusion(X, fraction, side, seed):
    k = min(side, max(1, round(fraction * side)))
    rows = X.reshape(-1, side, side).copy()
    rng = host_rng(seed)
    top, left = (rng.integers(0, side - k + 1, size=rows.shape[0]) for _ in range(2))
    pixels = np.arange(side)
    in_rows = (pixels >= top[:, None]) & (pixels < top[:, None] + k)      # (N, s)
    in_cols = (pixels >= left[:, None]) & (pixels < left[:, None] + k)
    rows[in_rows[:, :, None] & in_cols[:, None, :]] = 0
    return rows.reshape(X.shape)


def blur_matrix(side, sigma, dtype=np.float64):
    """The (side, side) matrix K of a 1-D Gaussian blur with zero padding: rows sum to 1."""
    radius = math.ceil(3 * sigma)
    offset = np.arange(side)[:, None] - np.arange(side)[None, :]
    K = np.where(np.abs(offset) <= radius, np.exp(-0.5 * (offset / sigma) ** 2), 0.0)
    kernel_sum = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).sum()
    return (K / kernel_sum).astype(dtype)


def _blur(X, sigma, side, seed):
    K = blur_matrix(side, sigma, X.dtype)
    images = X.reshape(-1, side, side)
    return (K @ images @ K.T).reshape(X.shape).astype(X.dtype, copy=False)


def seed_of(kind, strength, base=10_000):
    """The seed of one corrupted test set: fixed by the kind and the strength alone, so a
    level shared by two lists (the table's noise, the robustness curve) is the same images."""
    return base + 100_000 * list(KINDS).index(kind) + round(1000 * float(strength))


def strength_key(strength):
    """The key of a strength in results.json: '0', '0.5', '1'."""
    return f"{float(strength):g}"


def suite(X, levels):
    """The corrupted test sets: {(kind, strength key): images} for ``levels``, a dict
    kind -> strengths; each level drawn once, on the host, seeded by ``seed_of``."""
    out = {}
    for kind, strengths in levels.items():
        for s in strengths:
            key = (kind, strength_key(s))
            if key not in out:  # strength 0 of every kind is the clean images themselves, not a copy
                out[key] = X if check_strength(kind, s) == 0 else corrupt(X, kind, s, seed=seed_of(kind, s))
    return out


__all__ = ["KINDS", "UNSEEN", "blur_matrix", "check_strength", "corrupt", "seed_of", "strength_key", "suite"]
