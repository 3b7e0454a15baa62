"""Part 4 of ``reproduce``: normalisation as a sphere constraint, measured on Fashion-MNIST.

(a) Feature discovery with the TRUE labels on the sphere against the flat flow: theta
    from part 1 held fixed, Lie blocks with step h = h_units / lam_max(theta theta^T),
    applied to the noisy test images for L = 0..max_layers. On the sphere the blocks are
    post-norm (every sub-step followed by the retraction R(z) = sqrt(d) z / |z|) and the
    input is normalised too. An oracle computation, like part 2: the test labels enter
    the features, so these numbers are never a classifier's test accuracy.
(b) Label-free classifiers (learned oracle C_hat, key/value memory) whose blocks use no
    normalisation, post-norm on the sphere, post-norm LayerNorm, or pre-norm on the
    sphere (the GPT-2 layout; not a flow on the sphere), trained end to end on clean
    images and with noise augmentation, over seeds: mean and spread of the test accuracy
    at every test noise level, and the learned step h with its sign.

``python -m flowattn_np reproduce --parts 4`` runs it (with part 1, which provides theta).
"""

from __future__ import annotations

import functools

from flowattn_np.equations.ops import one_hot
from flowattn_np.experiments.common import (
    NORMS,
    check_norms,
    depth_cells,
    depth_metrics,
    label_free_network,
    lam_max,
    settings_lines,
    step_report,
    train_over_seeds,
    training_note,
    true_label_network,
)
from flowattn_np.experiments.compare import markdown, part4_comparisons, short
from flowattn_np.experiments.plotting import NORM_METHODS
from flowattn_np.training.progress import progress_bar


TITLE = "Part 4. Normalisation as a sphere constraint"


SHORT_NAMES = {"baseline": "multinomial regression", "oracle": "learned oracle C_hat",
               "memory": "key/value memory (beyond the theory)", "attention": "attention sub-flow only"}


def part4_discovery(theta, tests, yt, cfg, progress):
    """(a): head accuracy and cross-entropy after L = 0..max true-label Lie blocks, flat and on the sphere."""
    lam = lam_max(theta)
    h = cfg.h_units / lam
    C = one_hot(yt, theta.shape[0], theta.dtype)  # the true labels: oracle targets
    out = {"targets": "true labels (oracle computation)", "scheme": "lie", "lam_max": lam,
           "h_units": cfg.h_units, "h": h, "flows": {}}
    bar = progress_bar(2 * len(tests) * cfg.max_layers, "part 4 (a), true labels", progress, unit="block")
    for flow, norm in (("flat", "none"), ("sphere", "sphere")):
        net = true_label_network(theta, "lie", h, cfg.max_layers, norm=norm)
        out["flows"][flow] = depth_metrics(net, tests, yt, C, bar)
    bar.close()
    return out


def part4_label_free(data, cfg, progress):
    """(b): the label-free variants with each normalisation, trained clean and noise-augmented
    (with early stopping on the validation split when part 4 is in cfg.early_stopping_parts)."""
    norms = check_norms(cfg.norms)
    L = cfg.norm_layers
    early = 4 in cfg.early_stopping_parts
    out = {"layers": L, "epochs": cfg.epochs, "seeds": [cfg.seed + s for s in range(cfg.seeds)],
           "training": training_note(cfg, early),
           "norms": {n: NORMS[n][0] for n in norms}, "settings": {}}
    todo = [("baseline", "none", 0)] + [(v, n, L) for v in cfg.norm_variants for n in norms]
    for name, sigma in {"clean": 0.0, "noise-augmented": cfg.train_noise}.items():
        rows = []
        for variant, norm, layers in todo:
            make = functools.partial(label_free_network, variant, layers, data.X.shape[1], cfg, **NORMS[norm][1])
            stats, net, _ = train_over_seeds(make, data, cfg, progress, sigma,
                                             f"part 4, {name}, {variant} {norm} L={layers}", early=early)
            row = {"variant": variant, "norm": norm, "layers": layers, "description": net.describe(),
                   **{k: v for k, v in stats.items() if k != "h"}}
            if layers:
                row["h"] = step_report(stats["h"])
            rows.append(row)
        out["settings"][name] = {"train_noise": sigma, "rows": rows}
    return out


def part4_normalisation(data, theta, cfg, progress):
    """Part 4, (a) and (b); returns the dict stored as results['part4']."""
    return {"title": TITLE, "discovery": part4_discovery(theta, data.tests(), data.yt, cfg, progress),
            "label_free": part4_label_free(data, cfg, progress)}


def part4_checks(p4):
    """What part 4 shows, evaluated on this run: (a) monotone on the sphere, and which flow gains
    more; (b) per variant and setting, each normalisation against none, paired over seeds."""
    out = {}
    for flow, per in p4["discovery"]["flows"].items():
        out[f"discovery_{flow}"] = {
            k: {"loss_strictly_decreasing": all(b < a for a, b in zip(r["loss"], r["loss"][1:])),
                "accuracy_gain_points": 100 * (r["accuracy"][-1] - r["accuracy"][0])}
            for k, r in per.items()}
    out["comparisons"] = part4_comparisons(p4)
    return out


def part4_robustness_panels(label_free):
    """Part 4's lines of the robustness figure: colour = normalisation, line style = variant."""
    styles = ("-o", "--s", ":^")
    panels = {}
    for name, setting in label_free["settings"].items():
        variants = list(dict.fromkeys(r["variant"] for r in setting["rows"] if r["layers"]))
        lines = []
        for r in setting["rows"]:
            if not r["layers"]:
                lines.append(("multinomial regression, L = 0", "regression", ":D", r["robustness"]))
            else:
                # colour = normalisation (the label names it and the variant)
                lines.append((f"{short(r['variant'])}, {NORM_METHODS[r['norm']]}",
                              NORM_METHODS[r["norm"]], styles[variants.index(r["variant"]) % 3], r["robustness"]))
        panels[name] = lines
    return panels


def part4_markdown(p4, keys):
    """Part 4 as Markdown lines: (a) accuracy / cross-entropy against L; (b) one table per setting."""
    d = p4["discovery"]
    lines = [f"## {p4['title']}", "", "(a) Feature discovery with the true labels on the sphere and flat (an "
             "oracle computation, not a classifier's test accuracy); (b) label-free classifiers with normalised "
             "blocks.", "", f"**(a)** theta from part 1, lam_max = {d['lam_max']:.2f}, Lie blocks, "
             f"h = {d['h_units']:g} / lam_max = {d['h']:.4g}; on the sphere the input and every sub-step are "
             "normalised (r = sqrt(d)). Entries: accuracy % / cross-entropy.", ""]
    n_layers = len(next(iter(d["flows"]["flat"].values()))["loss"])
    lines += ["| flow | sigma | " + " | ".join(f"L={i}" for i in range(n_layers)) + " |",
              "|---|---|" + "---|" * n_layers]
    for flow, per in d["flows"].items():
        lines += [f"| {flow} | {k} | " + " | ".join(depth_cells(r)) + " |" for k, r in per.items()]
    b = p4["label_free"]
    lines += ["", f"**(b)** L = {b['layers']} tied blocks, {b.get('training', str(b['epochs']) + ' epochs')}; "
              f"{len(b['seeds'])} seeds (mean ± std of test accuracy %); learned h with its sign.", ""]
    lines += settings_lines(b["settings"], keys, [("variant", lambda r: SHORT_NAMES[r["variant"]]),
                                                  ("normalisation", lambda r: r["norm"]),
                                                  ("L", lambda r: r["layers"])])
    return lines + markdown(part4_comparisons(p4))


def part4_check_lines(checks):
    """The part 4 checks as Markdown list items."""
    lines = []
    for flow in ("flat", "sphere"):
        for k, v in checks.get(f"discovery_{flow}", {}).items():
            lines.append(f"- part 4 (a), {flow}, sigma = {k}: cross-entropy strictly decreasing in L: "
                         f"{v['loss_strictly_decreasing']}; accuracy gain {v['accuracy_gain_points']:+.1f} points")
    return lines
