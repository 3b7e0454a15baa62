"""The paper's Fashion-MNIST experiment, made explicit about where the targets come from:
the driver that runs the parts and writes their files.

``python -m flowattn_np reproduce`` runs parts 1-3 (``--parts`` selects others; part 1,
the baseline whose theta parts 2 and 4 use, runs with either of them) and writes a
Markdown table, ``results.json`` and PNG figures. Each part is a module:

1. ``part1_baseline``: multinomial regression (L = 0), trained with the package's SGD.
2. ``part2_feature_discovery``: the Lie block of eq. (8) and the Strang block fed the TRUE
   labels (the paper's theory, an oracle computation), L = 0..8.
3. ``part3_label_free``: label-free classifiers trained end to end (attention sub-flow,
   learned oracle, key/value memory), clean and noise-augmented, over seeds.
4. ``part4_normalisation`` (``--parts 4``): normalisation as a sphere constraint.
5. ``part5_mlp_oracle`` (``--parts 5``): the MLP oracle inside the blocks (a transformer
   block) beside its controls.

What they share is in ``common``, the paired comparisons in ``compare``. This module
imports the parts; none of them imports it.

``results.json`` schema (``SCHEMA``): see docs/results.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict

import flowattn_np.experiments.data as datasets
from flowattn_np import __version__
from flowattn_np.backend import asarray, get_backend, to_numpy, use_backend
from flowattn_np.equations.models import linear_logits
from flowattn_np.experiments import corruptions, plotting
from flowattn_np.experiments.common import ReproduceConfig, RunData, noise_key, noisy, true_label_network
from flowattn_np.experiments.compare import part3_comparisons
from flowattn_np.experiments.part1_baseline import part1_baseline, part1_lines
from flowattn_np.experiments.part2_feature_discovery import part2_checks, part2_feature_discovery, part2_lines
from flowattn_np.experiments.part3_label_free import part3_label_free, part3_lines, part3_robustness_panels
from flowattn_np.experiments.part4_normalisation import (
    part4_check_lines,
    part4_checks,
    part4_markdown,
    part4_normalisation,
    part4_robustness_panels,
)
from flowattn_np.experiments.part5_mlp_oracle import markdown_part5, part5_mlp_oracle, part5_robustness_panels
from flowattn_np.threads import compute as _package_compute, cpu_report, policy_line
from flowattn_np.training.files import RunFolder, write_text


SCHEMA = "flowattn_np.reproduce/1"


FIGURES_SKIPPED = ('figures skipped: matplotlib is not installed; the numbers are in results.json and '
                   'results.md. For the figures: pip install "flowattn-np[plot]" (or pip install matplotlib)')


# ---------------------------------------------------------------- checks


def run_checks(results, cfg):
    """The claims the numbers should show (docs/results.md), evaluated on this run, for the parts that ran.

    Part 2's monotone cross-entropy and accuracy gain; the paired comparisons of parts 3-5
    (``compare``).
    """
    out = {}
    if "part2" in results:
        out.update(part2_checks(results["part2"]))
    if "part3" in results:
        out["part3_comparisons"] = part3_comparisons(results["part3"])
    if "part4" in results:
        out["part4"] = part4_checks(results["part4"])
    if "part5" in results:
        out["part5"] = results["part5"]["checks"]
    return out


# ---------------------------------------------------------------- table


def markdown_table(results):
    """The results as Markdown: one titled table per part that ran, then the checks."""
    keys = [noise_key(s) for s in results["config"]["noise"]]
    lines = [f"# Fashion-MNIST: {results['data']['n_train']} training / {results['data']['n_test']} "
             f"test images, backend {results['backend']}, {results['seconds']:.0f} s", ""]
    if "part1" in results:
        lines += part1_lines(results["part1"], keys)
    if "part2" in results:
        lines += part2_lines(results["part2"], results["part1"])
    if "part3" in results:
        lines += part3_lines(results["part3"], keys)
    if "part4" in results:
        lines += part4_markdown(results["part4"], keys)
    if "part5" in results:
        lines += markdown_part5(results["part5"]).splitlines() + [""]
    lines += ["## Checks", ""] + check_lines(results["checks"])
    return "\n".join(lines) + "\n"


def check_lines(ch):
    """The checks as Markdown list items."""
    lines = []
    for k, v in ch.get("part2_lie_monotone", {}).items():
        lines.append(f"- part 2, Lie, sigma = {k}: cross-entropy strictly decreasing in L: "
                     f"{v['loss_strictly_decreasing']}; accuracy non-decreasing: {v['accuracy_non_decreasing']}")
    if "part2_lie_gain_clean_points" in ch:
        lines.append(f"- part 2, Lie, clean: accuracy gain L = 0 -> L = max: "
                     f"{ch['part2_lie_gain_clean_points']:+.1f} points (oracle computation)")
    for part in ("part3", "part4", "part5"):
        comparisons = ch.get(f"{part}_comparisons") or ch.get(part, {}).get("comparisons", [])
        claims = [(c, k, v) for c in comparisons for k, v in c["by_condition"].items() if v["claim"]]
        if comparisons:
            lines.append(f"- {part.replace('part', 'part ')}: {len(claims)} claims (difference above twice its "
                         f"seed spread) among {sum(len(c['by_condition']) for c in comparisons)} paired comparisons, "
                         "in the tables above")
    if "part4" in ch:
        lines += part4_check_lines(ch["part4"])
    return lines


# ---------------------------------------------------------------- driver


def default_out():
    """A new output folder under runs/, named by the start time."""
    return os.path.join("runs", time.strftime("reproduce-%Y%m%d-%H%M%S"))


@_package_compute
def reproduce(cfg=None, out=None, backend=None, data_dir=None, progress=True, figures=True,
              command=None, log=print):
    """Run the experiment; write results.json, results.md and figures into ``out``.

    ``out`` is a folder path (default: a new folder under runs/, suffixed if the name is
    taken) or a prepared ``files.RunFolder``. It is created and proven writable before
    the data is loaded; a folder holding a previous run is refused (a RunFolder with
    ``overwrite=True`` replaces it). The files land together at the end; if the run fails
    or is interrupted, what it added is removed and the folder is as it was. Without
    matplotlib the figures are skipped, saying so through ``log``, and the numbers are
    still written. Returns the results dict (the content of results.json).
    """
    cfg = cfg or ReproduceConfig()
    if figures and not plotting.matplotlib_available():  # say so now, not after minutes of compute
        log(FIGURES_SKIPPED)
        figures = False
    t_start = time.perf_counter()
    if not isinstance(out, RunFolder):
        out = RunFolder(out) if out else RunFolder(default_out(), fresh=True)
    with out as folder, use_backend(backend or get_backend()):
        ds = datasets.load_fashion_mnist(data_dir=data_dir, progress=progress)
        train, test = slice(cfg.train_size or None), slice(cfg.test_size or None)  # None: all rows
        X, y = asarray(ds.X_train[train]), asarray(ds.y_train[train])  # host -> backend, once
        Xt, yt = asarray(ds.X_test[test]), asarray(ds.y_test[test])
        # every corrupted test set drawn on the host, then moved to the backend once
        suite = {k: asarray(v) for k, v in corruptions.suite(ds.X_test[test], cfg.levels()).items()}
        data = RunData(X, y, suite, yt, cfg)
        log(f"data: {X.shape[0]} training / {Xt.shape[0]} test images from {ds.source}; "
            f"backend {get_backend()}")
        results = {"schema": SCHEMA, "version": __version__, "command": command,
                   "backend": get_backend(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                               "cpus": os.cpu_count(), "cpus_usable": cpu_report(),
                               "threads": policy_line(get_backend())},
                   "config": asdict(cfg),
                   "data": {"source": ds.source, "n_train": int(X.shape[0]), "n_test": int(Xt.shape[0])}}
        nets1, kept = run_parts(results, cfg, data, progress, log)
        results["seconds"] = time.perf_counter() - t_start
        results["checks"] = run_checks(results, cfg)
        results["figures"] = {}
        if figures and nets1:  # part 1 ran: its curves, and the figures of parts 2-4 that ran
            theta = nets1[0][0].params["theta"]
            results["figures"] = _figures(folder, cfg, results, theta, Xt, yt, kept, nets1, datasets.CLASS_NAMES)
        if figures and 5 in cfg.parts:
            plotting.part5_accuracy(results["part5"], path=folder.file("part5_accuracy.png"))
            results["figures"]["part5_accuracy"] = "part5_accuracy.png"
        if figures:
            results["figures"].update(robustness_figures(folder, results))
        results["seconds"] = time.perf_counter() - t_start
        write_text(folder.file("results.json"), json.dumps(results, indent=1))
        write_text(folder.file("results.md"), markdown_table(results))
    return results


def run_parts(results, cfg, data, progress, log):
    """Run the selected parts into ``results``; part 1 (the baseline) also runs for parts 2
    and 4, which use its theta. Returns part 1's and part 3's networks."""
    nets1, kept = [], {}
    ran = sorted(set(cfg.parts) | ({1} if {2, 4} & set(cfg.parts) else set()))
    results["parts"] = ran
    if 1 in ran:
        results["part1"], nets1 = _timed(log, 1, part1_baseline, data, cfg, progress)
    theta = nets1[0][0].params["theta"] if nets1 else None
    if 2 in ran:
        results["part2"] = _timed(log, 2, part2_feature_discovery, theta, data.tests(), data.yt, cfg, progress)
    if 3 in ran:
        results["part3"], kept = _timed(log, 3, part3_label_free, data, cfg, progress)
    if 4 in ran:
        results["part4"] = _timed(log, 4, part4_normalisation, data, theta, cfg, progress)
    if 5 in ran:
        results["part5"] = _timed(log, 5, part5_mlp_oracle, data, cfg, progress)
    return nets1, kept


def _timed(log, part, fn, *args):
    """fn(*args), logging how long part ``part`` took."""
    t = time.perf_counter()
    out = fn(*args)
    log(f"part {part} done in {time.perf_counter() - t:.1f} s")
    return out


# ---------------------------------------------------------------- figures


def robustness_figures(folder, results):
    """The robustness figure of each of parts 3-5 that ran: {name: file}."""
    files = {}
    makers = {"part3": part3_robustness_panels, "part4": lambda p: part4_robustness_panels(p["label_free"]),
              "part5": part5_robustness_panels}
    n = results["data"]["n_test"]
    for part, make in makers.items():
        if part in results:
            name = f"robustness_{part}"
            plotting.robustness(make(results[part]), path=folder.file(f"{name}.png"),
                                title=f"{results[part]['title']}: accuracy on {n} corrupted test images "
                                      "(mean over seeds, band one standard deviation)")
            files[name] = f"{name}.png"
    return files


def _figure1_panel(title, net, iterates):
    """One row of Figure 1: the iterates Z_0..Z_L of one image, and the head's class after each."""
    theta = net.params["theta"]
    return {"title": title, "iterates": [to_numpy(z)[0] for z in iterates],
            "predictions": [int(to_numpy(net.predictions(linear_logits(z, theta)))[0]) for z in iterates]}


def _figures(folder, cfg, results, theta, Xt, yt, kept, nets1, class_names):
    """The PNG files (in the RunFolder) of the parts that ran: Figure 1 and accuracy/cross-entropy
    against L (part 2), training curves (parts 1 and 3), the normalisation figure (part 4)."""
    files = {}
    if "part2" in results:
        files["figure1"] = _figure1(folder, cfg, results, theta, Xt, yt, kept, class_names)
        plotting.accuracy_vs_layers(results["part2"], path=folder.file("accuracy_vs_layers.png"))
        files["accuracy_vs_layers"] = "accuracy_vs_layers.png"
    curves = {"part 1: multinomial regression, L = 0 (SGD)": nets1[0][1].to_dict()}
    names = {"baseline": "multinomial regression", "oracle": "learned oracle"}  # plotting.METHOD_COLORS keys
    for name, setting in results.get("part3", {}).get("settings", {}).items():
        for r in setting["rows"]:
            if r["variant"] in names:
                curves[f"part 3, {name}: {names[r['variant']]}, L = {r['layers']}"] = r["history_seed0"]
    plotting.training_curves(curves, path=folder.file("training_curves.png"))
    files["training_curves"] = "training_curves.png"
    if "part4" in results:
        plotting.normalisation(results["part4"], path=folder.file("normalisation.png"))
        files["normalisation"] = "normalisation.png"
    return files


def _figure1(folder, cfg, results, theta, Xt, yt, kept, class_names):
    """Figure 1: one noisy test image through the true-label blocks and the best learned oracle."""
    labels = to_numpy(yt)
    matches = [i for i, c in enumerate(labels) if c == cfg.figure_class]
    index = matches[0] if matches else 0
    x = Xt[index:index + 1]
    z0 = noisy(x, cfg.figure_noise, seed=20_000)
    oracle_net = true_label_network(theta, "lie", results["part2"]["h"], cfg.max_layers)
    panels = [_figure1_panel(f"true labels C (oracle), Lie, h = {results['part2']['h']:.3g}",
                             oracle_net, oracle_net.features(z0, yt[index:index + 1]))]
    oracle = [(L, net) for (name, v, L), net in kept.items() if name == "noise-augmented" and v == "oracle"]
    if oracle:  # the deepest: a depth fixed before the run, never chosen by a test accuracy
        L, net = max(oracle, key=lambda pair: pair[0])
        panels.append(_figure1_panel(f"learned oracle C_hat (label-free), L = {L}, learned h = "
                                     f"{net.step_sizes().get('h', float('nan')):+.3g}", net, net.features(z0)))
    chosen = (f"the first test image of class {class_names[cfg.figure_class]} (chosen by its class "
              f"before the run, not by the result)" if matches else "the first test image")
    plotting.figure1(to_numpy(x)[0], panels, label=int(labels[index]), class_names=class_names,
                     sigma=cfg.figure_noise, path=folder.file("figure1.png"),
                     title=f"Figure 1: {chosen}, noise sigma = {cfg.figure_noise:g}")
    return "figure1.png"
