"""Figures: Figure 1 of the paper, accuracy against depth, training curves.

Host-side (matplotlib, NumPy): callers pass NumPy arrays (``to_numpy``). Every
function draws into a new figure, writes a PNG atomically when ``path`` is given
(temporary file, then rename) and returns the figure.
"""

from __future__ import annotations

import os

import numpy as np

from .files import atomic_write


def _plt():
    try:
        import matplotlib

        if not os.environ.get("DISPLAY") and "MPLBACKEND" not in os.environ:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib: pip install 'flowattn-np[plot]'"
        ) from exc
    return plt


def save(fig, path, dpi=110):
    """Write ``fig`` to ``path`` as a PNG, atomically (``files.atomic_write``)."""
    with atomic_write(path) as f:
        fig.savefig(f, dpi=dpi, bbox_inches="tight", format="png")


def _image(v):
    v = np.asarray(v)
    side = int(round(v.size ** 0.5))
    return v.reshape(side, side) if side * side == v.size else v.reshape(1, -1)


def figure1(x, panels, label, class_names, sigma, path=None):
    """Figure 1: a sample Z^(l) evolving through the blocks.

    For each panel (dict with 'title', 'iterates' [Z^(0), ..., Z^(L)] and
    'predictions'), the top row shows the clean image X, Z^(0) (noisy) and the
    iterates; the bottom row Z^(l) - Z^(0) with a diverging colour map centred at 0.
    Panels are drawn side by side.
    """
    plt = _plt()
    widths = [len(p["iterates"]) + 1 for p in panels]
    fig = plt.figure(figsize=(1.45 * sum(widths) + 0.6 * len(panels), 3.8), layout="constrained")
    subs = fig.subfigures(1, len(panels), width_ratios=widths, wspace=0.02) if len(panels) > 1 else [fig]
    gray = dict(cmap="gray", vmin=0.0, vmax=1.0)
    for sub, panel in zip(subs, panels):
        its = [np.asarray(z) for z in panel["iterates"]]
        axes = sub.subplots(2, len(its) + 1, squeeze=False)
        diffs = [z - its[0] for z in its]
        lim = max(float(np.abs(d).max()) for d in diffs) or 1.0
        axes[0, 0].imshow(_image(x), **gray)
        axes[0, 0].set_title(f"X: {class_names[label]}", fontsize=8)
        axes[1, 0].axis("off")
        for j, (z, d) in enumerate(zip(its, diffs), start=1):
            pred = class_names[panel["predictions"][j - 1]]
            axes[0, j].imshow(_image(z), **gray)
            name = "Z(0), sigma=%g" % sigma if j == 1 else f"Z({j - 1})"
            axes[0, j].set_title(f"{name}\n-> {pred}", fontsize=8)
            im = axes[1, j].imshow(_image(d), cmap="RdBu_r", vmin=-lim, vmax=lim)
            axes[1, j].set_title(f"Z({j - 1}) - Z(0)", fontsize=8)
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
        sub.colorbar(im, ax=axes[1, 1:].tolist(), shrink=0.8, location="right")
        sub.suptitle(panel["title"], fontsize=9)
    if path:
        save(fig, path)
    return fig


def accuracy_vs_layers(part2, path=None):
    """Accuracy and cross-entropy against L, one line per noise level, per scheme."""
    plt = _plt()
    schemes = part2["schemes"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    styles = {"lie": "-o", "strang": "--s"}
    for scheme, per in schemes.items():
        for k, r in per.items():
            L = np.arange(len(r["loss"]))
            axes[0].plot(L, 100 * np.asarray(r["accuracy"]), styles.get(scheme, "-"), ms=3,
                         label=f"{scheme}, sigma = {k}")
            axes[1].plot(L, r["loss"], styles.get(scheme, "-"), ms=3, label=f"{scheme}, sigma = {k}")
    axes[0].set(xlabel="blocks L", ylabel="test accuracy (%)",
                title="feature discovery with the TRUE labels (oracle)")
    axes[1].set(xlabel="blocks L", ylabel="cross-entropy", yscale="log",
                title=f"h = {part2['h_units']:g} / lam_max = {part2['h']:.3g}")
    return _finish(fig, axes, axes[0], 7, path)


def training_curves(curves, path=None):
    """Training loss and accuracy per epoch; ``curves`` maps a label to a History dict."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for label, hist in curves.items():
        ep = [e["epoch"] for e in hist["epochs"]]
        axes[0].plot(ep, [e["train_loss"] for e in hist["epochs"]], "-o", ms=3, label=label)
        axes[1].plot(ep, [100 * e["train_accuracy"] for e in hist["epochs"]], "-o", ms=3, label=label)
    axes[0].set(xlabel="epoch", ylabel="training cross-entropy")
    axes[1].set(xlabel="epoch", ylabel="training accuracy (%)")
    return _finish(fig, axes, axes[1], 6, path)


def _finish(fig, axes, legend_ax, fontsize, path):
    """Grid on every panel, one legend, and the PNG when ``path`` is given."""
    for ax in axes:
        ax.grid(alpha=0.3)
    legend_ax.legend(fontsize=fontsize)
    if path:
        save(fig, path)
    return fig
