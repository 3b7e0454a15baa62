"""Part 3 of ``reproduce``: label-free classifiers trained end to end.

Tied blocks with (a) the attention sub-flow alone, (b) a learned oracle
C_hat(Z) = softmax(Z W^T + b) in place of C, (c) separate learned keys and values
Z + h softmax(Z K^T) V (beyond the theory), trained on clean images and with noise
augmentation, tested on clean and corrupted images, over several seeds.
"""

from __future__ import annotations

import functools

from flowattn_np.experiments.common import VARIANTS, label_free_network, settings_lines, step_report, train_over_seeds
from flowattn_np.experiments.compare import markdown, part3_comparisons, short

TITLE = "Part 3. Label-free classifiers trained end to end"
NOTE = "No labels inside the blocks."


def part3_label_free(data, cfg, progress):
    """Train the label-free variants end to end in two settings; mean and spread over seeds."""
    settings = {"clean": 0.0, "noise-augmented": cfg.train_noise}
    out = {"title": TITLE,
           "optimizer": (f"Adam(lr={cfg.lr}, cosine)" if cfg.optimizer == "adam"
                         else f"SGD(lr={cfg.lr}, momentum=0.9, cosine)"),
           "epochs": cfg.epochs, "seeds": [cfg.seed + s for s in range(cfg.seeds)],
           "h_init": cfg.h_init, "memory_slots": cfg.memory_slots, "settings": {}}
    kept = {}
    rows_todo = [("baseline", 0)] + [(v, L) for v in cfg.variants for L in cfg.layers]
    for name, sigma in settings.items():
        rows = []
        for variant, L in rows_todo:
            stats, net, hist0 = train_over_seeds(
                functools.partial(label_free_network, variant, L, data.X.shape[1], cfg),
                data, cfg, progress, sigma, f"part 3, {name}, {variant} L={L}",
                early=3 in cfg.early_stopping_parts)
            kept[(name, variant, L)] = net
            row = {"variant": variant, "description": VARIANTS[variant][0], "layers": L,
                   "targets": "none inside the blocks" if variant != "oracle" else "learned oracle C_hat(Z)",
                   "history_seed0": hist0, **{k: v for k, v in stats.items() if k != "h"}}
            if L:
                row["h"] = step_report(stats["h"])
            rows.append(row)
        out["settings"][name] = {"train_noise": sigma, "rows": rows}
    return out, kept


def part3_lines(p3, keys):
    """Part 3 as Markdown lines: one table per training setting."""
    lines = [f"## {p3['title']}", "", f"{NOTE} {p3['optimizer']}, {p3['epochs']} epochs, tied "
             f"blocks, {len(p3['seeds'])} seeds (mean ± std of test accuracy %); learned h reported with its sign.", ""]
    lines += settings_lines(p3["settings"], keys, [("variant", lambda r: r["description"]),
                                                   ("L", lambda r: r["layers"])])
    return lines + markdown(part3_comparisons(p3))


PART3_LINES = {"baseline": ("regression", ":s"), "attention": ("attention sub-flow", "-.v"),
               "oracle": ("learned oracle", "-o"), "memory": ("memory", "--^")}


def part3_robustness_panels(p3):
    """Part 3's lines of the robustness figure: multinomial regression and each variant at the
    largest depth (fixed before the run), per training setting."""
    panels = {}
    for name, setting in p3["settings"].items():
        deepest = max(r["layers"] for r in setting["rows"])
        panels[name] = [(short(r["variant"]) + (f", L = {r['layers']}" if r["layers"] else ", L = 0"),
                         *PART3_LINES[r["variant"]], r["robustness"])
                        for r in setting["rows"] if r["layers"] in (0, deepest)]
    return panels
