"""Part 1 of ``reproduce``: multinomial regression without blocks (L = 0), trained with the
package's SGD over the seeds: the baseline, and the theta that parts 2 and 4 hold fixed.
"""

from __future__ import annotations

from flowattn_np.blocks.network import Network, NetworkConfig
from flowattn_np.experiments.common import fit_config, pct, run_optimizer, seed_stats
from flowattn_np.training.train import evaluate, fit

TITLE = "Part 1. Multinomial regression without blocks, trained with SGD"
NOTE = "L = 0: the targets are used only by the loss."  # what the title leaves to the text under it


def part1_baseline(data, cfg, progress):
    """Train L = 0 with SGD over the seeds; report test loss and accuracy per noise level."""
    runs, nets = [], []
    X, y, yt, tests = data.X, data.y, data.yt, data.tests()
    for s in range(cfg.seeds):
        net = Network(NetworkConfig(n_inputs=X.shape[1], n_classes=10, layers=0), seed=cfg.seed + s)
        opt = run_optimizer("sgd", net, cfg.baseline_lr, cfg, X.shape[0])
        hist = fit(net, X, y, optimizer=opt,
                   config=fit_config(cfg, cfg.seed + s, f"part 1, seed {cfg.seed + s}", progress))
        runs.append({k: evaluate(net, Xs, yt, check=False) for k, Xs in tests.items()})
        nets.append((net, hist))
    by_noise = {}
    for k in tests:
        by_noise[k] = {"accuracy": seed_stats([r[k]["accuracy"] for r in runs]),
                       "loss": seed_stats([r[k]["loss"] for r in runs])}
    return {"title": TITLE, "optimizer": f"SGD(lr={cfg.baseline_lr}, momentum=0.9, cosine)",
            "seeds": [cfg.seed + s for s in range(cfg.seeds)], "by_noise": by_noise}, nets


def part1_lines(p1, keys):
    """Part 1 as Markdown lines."""
    head = " | ".join(f"sigma = {k}" for k in keys)
    lines = [f"## {p1['title']}", "", f"{NOTE} {p1['optimizer']}, {len(p1['seeds'])} seeds "
             "(mean ± std).", "",
             f"| metric | {head} |", "|---|" + "---|" * len(keys)]
    lines.append("| test accuracy % | " + " | ".join(pct(p1["by_noise"][k]["accuracy"]) for k in keys) + " |")
    lines.append("| test cross-entropy | " + " | ".join(f"{p1['by_noise'][k]['loss']['mean']:.4f}" for k in keys) + " |")
    return lines + [""]
