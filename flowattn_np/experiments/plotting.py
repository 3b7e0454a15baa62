"""Figures: Figure 1 of the paper, accuracy against depth, training curves, part 5.

Host-side (matplotlib, NumPy): callers pass NumPy arrays (``to_numpy``). Every
function draws into a new figure, writes a PNG atomically when ``path`` is given
(temporary file, then rename) and returns the figure.
"""

from __future__ import annotations

import os
import re

import numpy as np

from flowattn_np.experiments.compare import best_by_validation
from flowattn_np.training.files import atomic_write

# One colour per method, used by every figure of the package and the notebooks, so a
# method looks the same everywhere. Depths and noise levels of one method differ by
# line style and marker, never by colour. A legend label that names a key (whole
# words, any case) must be drawn in its colour (checked by tests/test_figures.py).
METHOD_COLORS = {
    "lie": "#d62728",               # Lie splitting A(h), B(h) (red)
    "strang": "#2ca02c",            # Strang splitting A(h/2), B(h), A(h/2) (green)
    "full flow": "#000000",         # the unsplit gradient flow, eq. (6)
    "euler": "#1f77b4",             # explicit Euler steps of the full flow (blue)
    "regression": "#7f7f7f",        # multinomial regression, L = 0: the baseline (grey)
    "attention sub-flow": "#9467bd",  # (a) label-free: the attention sub-flow alone (purple)
    "learned oracle": "#ff7f0e",    # (b) label-free: C replaced by C_hat(Z) (orange)
    "memory": "#8c564b",            # (c) key/value memory (brown)
    "no normalisation": "#555555",  # part 4: flat blocks (dark grey)
    "post-sphere": "#17becf",       # part 4: post-norm on the sphere (cyan)
    "post-layer": "#bcbd22",        # part 4: post-norm LayerNorm (olive)
    "pre-sphere": "#e377c2",        # part 4: pre-norm on the sphere, not a flow on it (pink)
    "mlp oracle": "#0b3d91",        # part 5: the MLP oracle inside the blocks (navy)
    "mlp alone": "#e6ab02",         # part 5: (a) the MLP alone as a classifier (mustard)
    "parameter-matched mlp": "#66c2a5",  # part 5: (d) the MLP with the network's parameter count (mint)
    "numpy": "#1f77b4",             # backends (notebook 5)
    "cupy": "#76b900",
}

# Line styles and markers that tell apart the depths or noise levels of one method.
STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v")


def method_color(method):
    """The colour of ``method`` (a key of METHOD_COLORS, any case)."""
    try:
        return METHOD_COLORS[method.lower()]
    except KeyError:
        raise ValueError(f"method: expected one of {sorted(METHOD_COLORS)}, got {method!r}") from None


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


def matplotlib_available():
    """True if matplotlib's pyplot can be imported, i.e. the figures can be drawn."""
    try:
        _plt()
    except ImportError:
        return False
    return True


def save(fig, path, dpi=110):
    """Write ``fig`` to ``path`` as a PNG, atomically (``files.atomic_write``)."""
    with atomic_write(path) as f:
        fig.savefig(f, dpi=dpi, bbox_inches="tight", format="png")


def _image(v):
    v = np.asarray(v)
    side = int(round(v.size ** 0.5))
    return v.reshape(side, side) if side * side == v.size else v.reshape(1, -1)


def method_in(label):
    """The METHOD_COLORS key that ``label`` names (whole words, any case); None if none or several."""
    found = [m for m in METHOD_COLORS if re.search(rf"\b{re.escape(m)}\b", label, re.I)]
    return found[0] if len(found) == 1 else None


def _prediction(class_names, predicted, label):
    verdict = "right" if predicted == label else "wrong"
    return f"-> {class_names[predicted]} ({verdict})"


def _figure1_panel(sub, x, panel, label, class_names, sigma, columns):
    """One panel of Figure 1 in the subfigure ``sub``: images on top, changes below, padded
    to ``columns`` columns so that every panel's images have the same size."""
    its = [np.asarray(z) for z in panel["iterates"]]
    top = ["X"] + [f"Z{j}" for j in range(len(its))]
    pad = ["."] * (columns - len(top))
    mosaic = [top + pad] + ([[".", "."] + [f"D{j}" for j in range(1, len(its))] + pad] if len(its) > 1 else [])
    axes = sub.subplot_mosaic(mosaic)
    gray = dict(cmap="gray", vmin=0.0, vmax=1.0)
    im = axes["X"].imshow(_image(x), **gray)
    axes["X"].set_title(f"X (clean)\nlabel: {class_names[label]}", fontsize=8)
    for j, z in enumerate(its):
        name = f"Z(0), sigma = {sigma:g}" if j == 0 else f"Z({j})"
        axes[f"Z{j}"].imshow(_image(z), **gray)
        axes[f"Z{j}"].set_title(f"{name}\n{_prediction(class_names, panel['predictions'][j], label)}", fontsize=8)
    sub.colorbar(im, ax=[axes[k] for k in top], shrink=0.8, location="right").set_label(
        "pixel value", fontsize=8)
    diffs = [its[j] - its[0] for j in range(1, len(its))]
    if diffs:
        lim = max(float(np.abs(d).max()) for d in diffs) or 1.0
        for j, d in enumerate(diffs, start=1):
            im = axes[f"D{j}"].imshow(_image(d), cmap="RdBu_r", vmin=-lim, vmax=lim)
            axes[f"D{j}"].set_title(f"Z({j}) - Z(0)", fontsize=8)
        sub.colorbar(im, ax=[axes[f"D{j}"] for j in range(1, len(its))], shrink=0.8,
                     location="right").set_label("change of pixel", fontsize=8)
    for ax in axes.values():
        ax.set_xticks([])
        ax.set_yticks([])
    sub.suptitle(panel["title"], fontsize=9)


def figure1(x, panels, label, class_names, sigma, path=None, title=None):
    r"""Figure 1: a sample $Z^{(l)}$ evolving through the blocks.

    For each panel the top row shows the clean image $X$, $Z^{(0)}$ (noisy) and the
    iterates; the bottom row $Z^{(l)}-Z^{(0)}$ on a diverging colour map centred at 0.
    Panels are drawn one above the other, so the figure reads at the width of a page.

    Parameters
    ----------
    x : array, shape (p,)
        The clean image, flattened (a square: 784 pixels for Fashion-MNIST).
    panels : list of dict
        Each with ``"title"``, ``"iterates"`` $[Z^{(0)},\dots,Z^{(L)}]$ and ``"predictions"``
        (the class index of each iterate).
    label : int
        The image's true class.
    class_names : sequence of str
        Names of the classes.
    sigma : float
        The noise level of $Z^{(0)}$.
    path : str or Path, optional
        Where to save the PNG.
    title : str, optional
        A title for the figure (say which image was chosen, and how).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    columns = max(len(p["iterates"]) for p in panels) + 1
    fig = plt.figure(figsize=(1.3 * columns + 1.4, 3.5 * len(panels) + 0.3), layout="constrained")
    subs = fig.subfigures(len(panels), 1, hspace=0.03) if len(panels) > 1 else [fig]
    for sub, panel in zip(subs, panels):
        _figure1_panel(sub, x, panel, label, class_names, sigma, columns)
    if title:
        fig.suptitle(title, fontsize=10)
    if path:
        save(fig, path)
    return fig


def _integer_ticks(ax):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def accuracy_vs_layers(part2, path=None):
    """Accuracy and cross-entropy against $L$, one line per noise level, per scheme.

    Parameters
    ----------
    part2 : dict
        Part 2 of the results.
    path : str or Path, optional
        Where to save the PNG.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8), layout="constrained")
    for scheme, per in part2["schemes"].items():
        for k, (sigma, r) in enumerate(per.items()):
            L = np.arange(len(r["loss"]))
            style = dict(color=method_color(scheme), ls=STYLES[k % len(STYLES)],
                         marker=MARKERS[k % len(MARKERS)], ms=3, label=f"{scheme.capitalize()}, sigma = {sigma}")
            axes[0].plot(L, 100 * np.asarray(r["accuracy"]), **style)
            axes[1].plot(L, r["loss"], **style)
    axes[0].set(xlabel="blocks L", ylabel="test accuracy (%)",
                title="feature discovery with the true labels (oracle)")
    axes[1].set(xlabel="blocks L", ylabel="cross-entropy", yscale="log",
                title=rf"$h = {part2['h_units']:g}\,/\,\lambda_{{\max}} = {part2['h']:.3g}$")
    return _finish(fig, axes, 7, path)


def training_curves(curves, path=None):
    """Training loss and accuracy per epoch.

    Parameters
    ----------
    curves : dict
        Maps a label to a `History` dict.
    path : str or Path, optional
        Where to save the PNG.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    seen = {}
    for label, hist in curves.items():
        method = method_in(label)
        k = seen[method] = seen.get(method, -1) + 1
        style = dict(ls=STYLES[k % len(STYLES)], marker=MARKERS[k % len(MARKERS)], ms=3, label=label)
        if method is not None:
            style["color"] = METHOD_COLORS[method]
        ep = [e["epoch"] for e in hist["epochs"]]
        axes[0].plot(ep, [e["train_loss"] for e in hist["epochs"]], **style)
        axes[1].plot(ep, [100 * e["train_accuracy"] for e in hist["epochs"]], **style)
    axes[0].set(xlabel="epoch", ylabel="training cross-entropy")
    axes[1].set(xlabel="epoch", ylabel="training accuracy (%)")
    return _finish(fig, axes, 7, path)


PART5_STYLES = {  # kind: (legend label, METHOD_COLORS key, line style and marker)
    "regression": ("(c) multinomial regression", "regression", ":s"),
    "linear-oracle": ("(b) learned oracle (linear) network", "learned oracle", "--^"),
    "mlp-alone": ("(a) MLP alone", "mlp alone", "-o"),
    "mlp-matched": ("(d) parameter-matched MLP", "parameter-matched mlp", "-.D"),
    "mlp-oracle": ("MLP oracle network", "mlp oracle", "-v"),
}


def part5_rows(rows, width):
    """The rows drawn for hidden width ``width``, by kind (the matched MLP follows its (a) row)."""
    alone = next(r for r in rows if r["kind"] == "mlp-alone" and r["width"] == width)
    by_kind = {"regression": [r for r in rows if r["kind"] == "regression"],
               "linear-oracle": [r for r in rows if r["kind"] == "linear-oracle"],
               "mlp-alone": [alone], "mlp-matched": [rows[rows.index(alone) + 1]],
               "mlp-oracle": [r for r in rows if r["kind"] == "mlp-oracle" and r["width"] == width]}
    # the depth chosen by validation, never by test
    return {kind: best_by_validation(rs) for kind, rs in by_kind.items() if rs}


def part5_accuracy(part5, width=None, path=None):
    """Part 5: test accuracy against test noise, one panel per training setting.

    Mean over seeds with the std as error bars, for multinomial regression, the
    linear-oracle and MLP-oracle networks at the depth of their best validation accuracy
    (the first depth without validation), the MLP alone and the
    parameter-matched MLP, at hidden width ``width`` (default: the largest).
    """
    plt = _plt()
    width = width or max(part5["widths"])
    settings = part5["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.6 * len(settings), 4.8),
                             layout="constrained")
    axes = list(np.atleast_1d(axes))
    for ax, (name, setting) in zip(axes, settings.items()):
        for kind, row in part5_rows(setting["rows"], width).items():
            label, colour, style = PART5_STYLES[kind]
            sizes = ", ".join(f"{key} = {row[field]}" for key, field in (("L", "layers"), ("k", "width"))
                              if row[field])
            stats = list(row["accuracy"].values())
            sigma, mean = [float(s) for s in row["accuracy"]], [100 * s["mean"] for s in stats]
            ax.plot(sigma, mean, style, color=method_color(colour), ms=4,
                    label=label + (f" ({sizes})" if sizes else ""))
            ax.errorbar(sigma, mean, yerr=[100 * s["std"] for s in stats], fmt="none",
                        ecolor=method_color(colour), capsize=3)
        ax.set(xlabel="test noise sigma", ylabel="test accuracy (%)",
               title=f"trained {name} (train sigma = {setting['train_noise']:g})")
        ax.grid(alpha=0.3)
        # one legend per panel, below it: the best depth differs between the settings
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    if path:
        save(fig, path)
    return fig


def _finish(fig, axes, fontsize, path):
    """Grid and integer ticks on the x axis (epochs, depths) of every panel, one legend
    outside the panels (never over the data), and the PNG when ``path`` is given."""
    for ax in axes:
        ax.grid(alpha=0.3)
        _integer_ticks(ax)
    axes[-1].legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    if path:
        save(fig, path)
    return fig


# part 4's names -> METHOD_COLORS keys: one colour per normalisation in every panel
NORM_METHODS = {"none": "no normalisation", "flat": "no normalisation", "post-sphere": "post-sphere",
                "sphere": "post-sphere", "post-layer": "post-layer", "pre-sphere": "pre-sphere"}
_DASHES = ("-", "--", ":", "-.")


def normalisation(part4, path=None):
    """Part 4: (a) accuracy and cross-entropy against L, flat vs sphere, one line style per test
    noise; (b) test accuracy against the test noise for each variant and normalisation, trained
    clean and noise-augmented (mean over seeds, error bars one standard deviation)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), layout="constrained")
    for flow, per in part4["discovery"]["flows"].items():
        for (k, r), ls in zip(per.items(), _DASHES):
            L = np.arange(len(r["loss"]))
            kw = dict(color=method_color(NORM_METHODS[flow]), ls=ls, marker="o" if flow == "flat" else "s", ms=3,
                      label=f"{flow}, test sigma = {k}")
            axes[0, 0].plot(L, 100 * np.asarray(r["accuracy"]), **kw)
            axes[0, 1].plot(L, r["loss"], **kw)
    d = part4["discovery"]
    axes[0, 0].set(xlabel="blocks L", ylabel="test accuracy (%)",
                   title="(a) true labels (oracle computation): flat vs sphere")
    axes[0, 1].set(xlabel="blocks L", ylabel="cross-entropy", yscale="log",
                   title=rf"(a) Lie blocks, $h = {d['h_units']:g}\,/\,\lambda_{{\max}} = {d['h']:.3g}$")
    for ax in axes[0]:
        _integer_ticks(ax)
    for ax, (name, setting) in zip(axes[1], part4["label_free"]["settings"].items()):
        _label_free_panel(ax, setting["rows"])
        ax.set(xlabel="test noise sigma", ylabel="test accuracy (%)",
               title=f"(b) label-free, trained {name} (train sigma = {setting['train_noise']:g})")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
    for ax in (axes[0, 1], axes[1, 1]):
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if path:
        save(fig, path)
    return fig


def _label_free_panel(ax, rows):
    """Accuracy against test noise: colour = normalisation, line style = variant."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for r in rows:
        keys = list(r["accuracy"])
        sig = np.array([float(k) for k in keys])
        mean = 100 * np.array([r["accuracy"][k]["mean"] for k in keys])
        std = 100 * np.array([r["accuracy"][k]["std"] for k in keys])
        ls = _DASHES[variants.index(r["variant"]) % len(_DASHES)]
        # the normalisation's full name: its colour's key (a variant name alone, e.g. memory, would claim its own)
        label = "baseline (L = 0)" if r["variant"] == "baseline" else f"{r['variant']}, {NORM_METHODS[r['norm']]}"
        colour = method_color("regression" if r["variant"] == "baseline" else NORM_METHODS[r["norm"]])
        ax.errorbar(sig, mean, yerr=std, color=colour,
                    ls=ls, marker="o", ms=3, capsize=2, label=label)


CORRUPTION_AXES = {  # kind -> x-axis label
    "noise": "Gaussian noise sigma",
    "occlusion": "occluded square: side / image side",
    "blur": "blur sigma (pixels)",
}


def robustness(panels, path=None, title=None, unseen=("occlusion", "blur")):
    """Test accuracy against the strength of each corruption: one row of panels per training
    setting, one column per corruption; per line the mean over seeds and a band of one
    standard deviation. One legend below the panels.

    Parameters
    ----------
    panels : dict
        Training setting name -> list of ``(label, method, line style, robustness)``:
        ``method`` a key of METHOD_COLORS (the line's colour), ``robustness`` a row's
        ``{kind: {strength: {"mean", "std"}}}``.
    path : str or Path, optional
        Where to save the PNG.
    title : str, optional
        A title for the figure.
    unseen : tuple
        The corruptions no training run saw (said in their panels' titles).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    settings = list(panels)
    kinds = list(dict.fromkeys(k for lines in panels.values() for *_, rob in lines for k in rob))
    fig, axes = plt.subplots(len(settings), len(kinds), figsize=(4.1 * len(kinds), 3.3 * len(settings) + 1.2),
                             layout="constrained", squeeze=False)
    handles = {}
    for i, setting in enumerate(settings):
        for j, kind in enumerate(kinds):
            ax = axes[i, j]
            for label, method, style, rob in panels[setting]:
                per = rob[kind]
                x = np.array([float(k) for k in per])
                mean = 100 * np.array([per[k]["mean"] for k in per])
                std = 100 * np.array([per[k]["std"] for k in per])
                colour = method_color(method)
                (line,) = ax.plot(x, mean, style, color=colour, ms=3.5, lw=1.4, label=label)
                ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.18, lw=0)
                handles.setdefault(label, line)
            what = "unseen in training" if kind in unseen else "noise"
            ax.set(xlabel=CORRUPTION_AXES.get(kind, kind), ylabel="test accuracy (%)",
                   title=f"trained {setting}: {kind} ({what})" if kind in unseen else f"trained {setting}: {what}")
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncol=min(3, len(handles)), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    if path:
        save(fig, path)
    return fig


# every public name (the package exports method_color and the module; the API page lists all)
__all__ = [
    "METHOD_COLORS", "STYLES", "MARKERS", "method_color", "matplotlib_available", "save", "method_in",
    "figure1", "accuracy_vs_layers", "training_curves", "PART5_STYLES", "part5_rows", "part5_accuracy",
    "NORM_METHODS", "normalisation", "CORRUPTION_AXES", "robustness",
]
