"""Part 2 of ``reproduce``: feature discovery with the TRUE labels (the paper's theory).

theta fixed from part 1, the Lie block of eq. (8) and the Strang block applied to the
(noisy) test features for L = 0..max_layers with step h = h_units / lam_max(theta theta^T).
An oracle computation (the test labels enter the features): never a classifier's accuracy.
"""

from __future__ import annotations

from flowattn_np.equations.ops import one_hot
from flowattn_np.experiments.common import depth_cells, depth_metrics, lam_max, noise_key, true_label_network
from flowattn_np.training.progress import progress_bar

TITLE = "Part 2. Feature discovery with the true labels (an oracle computation)"
NOTE = ("The paper's theory: the test labels C enter the features, so these numbers are not a "
        "classifier's test accuracy.")


def part2_feature_discovery(theta, tests, yt, cfg, progress):
    """True-label Lie and Strang blocks on the test features: loss/accuracy for L = 0..max."""
    lam = lam_max(theta)
    h = cfg.h_units / lam
    C = one_hot(yt, theta.shape[0], theta.dtype)  # the true labels: oracle targets
    out = {"title": TITLE, "targets": "true labels (oracle computation)",
           "lam_max": lam, "h_units": cfg.h_units, "h": h, "schemes": {}}
    bar = progress_bar(2 * len(tests) * cfg.max_layers, "part 2 (true labels)", progress, unit="block")
    for scheme in ("lie", "strang"):
        net = true_label_network(theta, scheme, h, cfg.max_layers)
        out["schemes"][scheme] = depth_metrics(net, tests, yt, C, bar)
    bar.close()
    return out


def part2_checks(p2):
    """Part 2, Lie blocks: the loss falls at every block, accuracy never drops, the clean gain."""
    lie = p2["schemes"]["lie"]
    mono = {}
    for k, r in lie.items():
        L, A = r["loss"], r["accuracy"]
        mono[k] = {"loss_strictly_decreasing": all(b < a for a, b in zip(L, L[1:])),
                   "accuracy_non_decreasing": all(b >= a for a, b in zip(A, A[1:]))}
    out = {"part2_lie_monotone": mono}
    clean = noise_key(0.0)
    if clean in lie:
        out["part2_lie_gain_clean_points"] = 100 * (lie[clean]["accuracy"][-1] - lie[clean]["accuracy"][0])
    return out


def part2_lines(p2, p1):
    """Part 2 as Markdown lines: accuracy / cross-entropy against L per scheme and noise."""
    lines = [f"## {p2['title']}", "", NOTE, "",
             f"theta from part 1 (seed {p1['seeds'][0]}), lam_max(theta theta^T) = {p2['lam_max']:.2f}, "
             f"h = {p2['h_units']:g} / lam_max = {p2['h']:.4g}. Entries: accuracy % / cross-entropy.", ""]
    for scheme, per in p2["schemes"].items():
        n_layers = len(next(iter(per.values()))["loss"])
        lines += [f"**{scheme.capitalize()} blocks**", "",
                  "| sigma | " + " | ".join(f"L={i}" for i in range(n_layers)) + " |",
                  "|---|" + "---|" * n_layers]
        lines += [f"| {k} | " + " | ".join(depth_cells(r)) + " |" for k, r in per.items()]
        lines.append("")
    return lines
