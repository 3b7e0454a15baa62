"""Every figure the package and the notebooks draw follows the rules of ``figure_rules``.

* the package: each ``plotting`` function drawn from the results of a small real run
  (``reproduce`` on a Fashion-MNIST subset, with its figures);
* the notebooks: every ``notebooks/NN_*.py`` (found by glob, so a new notebook is checked
  too) run in this process, cell by cell, with the Agg backend; after each cell every open
  figure is checked and closed, as the inline backend shows and closes them;
* in all of them a method named in a legend (Lie, Strang, ...) has its colour from
  ``plotting.METHOD_COLORS``, so it keeps one colour across figures.

A broken rule fails with one line per problem, naming the figure and the axes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from figure_rules import colour_conflicts, labelled_colours, problems  # noqa: E402

jupytext = pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def check(fig, name):
    """The rule problems of ``fig``, and methods drawn in another colour than their table's."""
    return problems(fig, name) + colour_conflicts(labelled_colours(fig, name))


@contextlib.contextmanager
def _in_folder(path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def notebook_figures(source):
    """Run a jupytext source cell by cell; yield (name, figure) for every figure a cell leaves open."""
    nb = jupytext.read(source)
    namespace = {"__name__": "__main__"}
    plt.close("all")
    with _in_folder(source.parent), pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt, "show", lambda *a, **k: None)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            code = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
            exec(compile(code, f"{source.name}, cell {i}", "exec"), namespace)
            for number in plt.get_fignums():
                yield f"{source.name}, cell {i}, figure {number}", plt.figure(number)
            plt.close("all")


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_every_notebook_figure_is_readable(source):
    found, seen = [], 0
    for name, fig in notebook_figures(source):
        seen += 1
        found += check(fig, name)
    assert not found, "\n".join(found)
    assert seen or "plt." not in source.read_text(encoding="utf-8"), "a notebook that plots drew no figure"


def synthetic_figures():
    """Each plotting function on small made-up inputs of the shapes the reproduction passes."""
    from flowattn_np.experiments import plotting

    rng = np.random.default_rng(0)
    x = rng.uniform(size=784)
    its = [x + 0.5 * rng.normal(size=784)]
    for _ in range(3):
        its.append(its[-1] + 0.05 * rng.normal(size=784))
    panels = [{"title": "true labels", "iterates": its, "predictions": [6, 2, 6, 6]},
              {"title": "learned oracle, L = 2", "iterates": its[:3], "predictions": [6, 6, 0]}]
    names = [f"class {k}" for k in range(10)]
    per = {s: {"loss": list(np.linspace(1, 0.5, 5) * (1 + s)), "accuracy": list(np.linspace(0.6, 0.9, 5) / (1 + s))}
           for s in (0, 0.5, 1)}
    part2 = {"schemes": {"lie": {f"{s:g}": r for s, r in per.items()}, "strang": {f"{s:g}": r for s, r in per.items()}},
             "h_units": 1.0, "h": 0.05}
    hist = {"epochs": [{"epoch": 1, "train_loss": 0.9, "train_accuracy": 0.7}]}  # one epoch: one point
    curves = {"part 1: multinomial regression, L = 0": hist, "part 3: learned oracle, L = 1": hist,
              "part 3: learned oracle, L = 2": hist}
    def row(kind, width, layers, acc):
        stats = {f"{s:g}": {"mean": acc - 0.1 * s, "std": 0.005} for s in (0, 0.5, 1)}
        return {"kind": kind, "width": width, "layers": layers, "accuracy": stats}
    rows = [row("regression", 0, 0, 0.80), row("linear-oracle", 0, 1, 0.81), row("mlp-alone", 4, 0, 0.84),
            row("mlp-matched", 14, 0, 0.84), row("mlp-oracle", 4, 1, 0.82), row("mlp-oracle", 4, 2, 0.83)]
    part5 = {"widths": [4], "settings": {"clean": {"train_noise": 0.0, "rows": rows},
                                         "noise-augmented": {"train_noise": 0.5, "rows": rows}}}
    def curve(acc):
        return {kind: {f"{s:g}": {"mean": acc - 0.2 * s / top, "std": 0.01} for s in np.linspace(0, top, 5)}
                for kind, top in (("noise", 2.0), ("occlusion", 0.5), ("blur", 2.0))}
    lines = [("multinomial regression", "regression", ":s", curve(0.8)),
             ("learned oracle, L = 4", "learned oracle", "-o", curve(0.82)),
             ("key/value memory, L = 4", "memory", "--^", curve(0.85))]
    robustness = {"clean": lines, "noise-augmented": lines}
    from flowattn_np.experiments.part4_normalisation import part4_robustness_panels

    norm_rows = [{"variant": "baseline", "norm": "none", "layers": 0, "robustness": curve(0.8)}] + [
        {"variant": v, "norm": n, "layers": 2, "robustness": curve(0.8 + 0.01 * i)}
        for v in ("oracle", "memory") for i, n in enumerate(("none", "post-sphere", "post-layer", "pre-sphere"))]
    part4 = {"settings": {"clean": {"rows": norm_rows}, "noise-augmented": {"rows": norm_rows}}}
    return {"figure1": plotting.figure1(x, panels, label=6, class_names=names, sigma=0.5, title="Figure 1"),
            "robustness": plotting.robustness(robustness, title="Part 3: accuracy on corrupted test images"),
            "robustness_part4": plotting.robustness(part4_robustness_panels(part4)),
            "accuracy_vs_layers": plotting.accuracy_vs_layers(part2),
            "training_curves": plotting.training_curves(curves),
            "part5_accuracy": plotting.part5_accuracy(part5)}


def test_package_figures_of_made_up_results_are_readable():
    found = [p for name, fig in synthetic_figures().items() for p in check(fig, name)]
    plt.close("all")
    assert not found, "\n".join(found)


@pytest.fixture(scope="module")
def package_figures(tmp_path_factory):
    """The figures ``reproduce`` draws in a small real run (one epoch: a single point per curve)."""
    from flowattn_np.experiments import plotting
    from flowattn_np.experiments.common import ReproduceConfig
    from flowattn_np.experiments.reproduce import reproduce

    drawn = {}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("figure1", "accuracy_vs_layers", "training_curves", "robustness"):

            def spy(*args, _original=getattr(plotting, name), _name=name, **kwargs):
                drawn[_name] = _original(*args, **kwargs)
                return drawn[_name]
            mp.setattr(plotting, name, spy)
        cfg = ReproduceConfig.quick_run(train_size=2000, test_size=500, seeds=1, variants=("oracle",))
        reproduce(cfg, out=str(tmp_path_factory.mktemp("figures")), progress=False, log=lambda m: None)
    return drawn


@pytest.mark.realdata
def test_the_reproduction_draws_its_four_figures(package_figures):
    assert sorted(package_figures) == ["accuracy_vs_layers", "figure1", "robustness", "training_curves"]


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["figure1", "accuracy_vs_layers", "training_curves", "robustness"])
def test_every_package_figure_is_readable(package_figures, name):
    found = check(package_figures[name], name)
    assert not found, "\n".join(found)
