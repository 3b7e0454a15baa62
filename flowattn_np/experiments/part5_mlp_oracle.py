"""Part 5 of ``reproduce``: the MLP oracle, and the controls that say whether attention helps.

A network of tied blocks with the MLP oracle (``BlockConfig(targets="mlp")``),

    Z_half = Z - h CA(Z, theta),   Z_out = Z_half + h softmax(MLP(Z_half)) theta,

is an attention sub-layer and an MLP sub-layer with residual connections: a transformer
block. But the MLP oracle is itself a classifier, so its accuracy alone says nothing
about attention. Every MLP-oracle row is reported beside

(a) the same MLP alone as a classifier, softmax(MLP(X)), with the same width and training;
(b) the linear-oracle network (C_hat = softmax(Z W^T + b), part 3's variant (b));
(c) plain multinomial regression (L = 0);
(d) the MLP alone with k + extra hidden units, so that its parameter count matches the
    MLP-oracle network's (which adds theta, m x d, and h).

Each is trained clean and with noise augmentation, tested at every noise level, over
several seeds (mean and spread), with the learned h and its sign. The question: do the
attention steps add accuracy or noise robustness beyond the MLP they contain?
"""


from __future__ import annotations

from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.mlp_classifier import MLPClassifier, MLPClassifierConfig
from flowattn_np.blocks.network import Network, NetworkConfig
from flowattn_np.experiments.common import epochs_cell, pct, step_report, train_over_seeds, training_note
from flowattn_np.experiments.compare import markdown, part5_comparisons
from flowattn_np.experiments.plotting import PART5_STYLES, part5_rows


TITLE = "Part 5. The MLP oracle inside the blocks, with its controls"


KINDS = {
    "regression": "(c) multinomial regression, L = 0",
    "linear-oracle": "(b) linear-oracle network, C_hat = softmax(Z W^T + b)",
    "mlp-alone": "(a) MLP alone, softmax(MLP(X)), no attention",
    "mlp-matched": "(d) MLP alone, parameter-matched to the MLP-oracle network",
    "mlp-oracle": "MLP-oracle network: Z + h (softmax(MLP(Z)) - softmax(Z theta^T)) theta",
}


def matched_width(k, d, m):
    """Hidden width of the MLP alone with (about) the parameters of a tied MLP-oracle
    network of width k: the network adds theta (m x d) and h, a hidden unit costs d + 1 + m."""
    return k + round((m * d + 1) / (d + 1 + m))


def parameter_count(net):
    """Number of trained scalars of a network or classifier."""
    return int(sum(v.size for v in net.params.values()))


def build(kind, width, layers, d, m, cfg, seed):
    """A fresh model of one row of the table (on the active backend)."""
    if kind in ("mlp-alone", "mlp-matched"):
        return MLPClassifier(MLPClassifierConfig(d, m, hidden=width, activation=cfg.mlp_activation),
                             seed=seed)
    if kind == "regression":
        return Network(NetworkConfig(n_inputs=d, n_classes=m, layers=0), seed=seed)
    if kind == "linear-oracle":
        block = BlockConfig(model="linear", targets="learned", h=cfg.h_init, learn_h=True)
    else:
        block = BlockConfig(model="linear", targets="mlp", mlp_hidden=width,
                            activation=cfg.mlp_activation, h=cfg.h_init, learn_h=True)
    return Network(NetworkConfig(n_inputs=d, n_classes=m, layers=layers, block=block), seed=seed)


def row_specs(cfg, d, m):
    """The rows (kind, width, layers) in the order of the table."""
    rows = [("regression", 0, 0)] + [("linear-oracle", 0, L) for L in cfg.mlp_layers]
    for k in cfg.mlp_widths:
        rows += [("mlp-alone", k, 0), ("mlp-matched", matched_width(k, d, m), 0)]
        rows += [("mlp-oracle", k, L) for L in cfg.mlp_layers]
    return rows


def train_row(kind, width, layers, data, cfg, sigma, progress, label):
    """Train one row over the seeds (early stopping when part 5 is in cfg.early_stopping_parts);
    its accuracies, losses, robustness, epochs and learned h per seed."""
    d = data.X.shape[1]
    stats, net, _ = train_over_seeds(lambda seed: build(kind, width, layers, d, 10, cfg, seed), data, cfg,
                                     progress, sigma, f"part 5, {label}, {kind} k={width} L={layers}",
                                     optimizer="adam", early=5 in cfg.early_stopping_parts)
    row = {"kind": kind, "description": KINDS[kind], "width": width, "layers": layers,
           "params": parameter_count(net), **{k: v for k, v in stats.items() if k != "h"}}
    if layers:
        row["h"] = step_report(stats["h"])
    return row


def part5_mlp_oracle(data, cfg, progress):
    """Train every row clean and noise-augmented; mean and spread over seeds, and the checks."""
    settings = {"clean": 0.0, "noise-augmented": cfg.train_noise}
    specs = row_specs(cfg, data.X.shape[1], 10)
    out = {"title": TITLE, "optimizer": f"Adam(lr={cfg.lr}, cosine)", "epochs": cfg.epochs,
           "training": training_note(cfg, 5 in cfg.early_stopping_parts),
           "seeds": [cfg.seed + s for s in range(cfg.seeds)], "h_init": cfg.h_init,
           "widths": list(cfg.mlp_widths), "layers": list(cfg.mlp_layers),
           "activation": cfg.mlp_activation, "blocks": "tied, Lie splitting, Euler A, learned h",
           "settings": {}}
    for label, sigma in settings.items():
        rows = [train_row(kind, k, L, data, cfg, sigma, progress, label)
                for kind, k, L in specs]
        out["settings"][label] = {"train_noise": sigma, "rows": rows}
    out["checks"] = {"comparisons": part5_comparisons(out)}
    return out


def part5_robustness_panels(p5):
    """Part 5's lines of the robustness figure: the rows ``plotting.part5_accuracy`` draws
    (largest width; the networks at the depth of their best validation accuracy)."""
    width = max(p5["widths"])
    panels = {}
    for name, setting in p5["settings"].items():
        lines = []
        for kind, row in part5_rows(setting["rows"], width).items():
            label, colour, style = PART5_STYLES[kind]
            sizes = ", ".join(f"{key} = {row[field]}" for key, field in (("L", "layers"), ("k", "width"))
                              if row[field])
            lines.append((label + (f" ({sizes})" if sizes else ""), colour, style, row["robustness"]))
        panels[name] = lines
    return panels


def markdown_part5(p5):
    """Part 5 as Markdown: one table per training setting, then the checks."""
    keys = list(p5["settings"]["clean"]["rows"][0]["accuracy"])
    head = " | ".join(f"sigma = {k}" for k in keys)
    lines = [f"## {p5['title']}", "",
             "A transformer block, label-free: the oracle C_hat(Z) = softmax(act(Z W1^T + b1) W2^T + b2).", "",
             f"{p5['optimizer']}, {p5.get('training', str(p5['epochs']) + ' epochs')}; {len(p5['seeds'])} seeds "
             "(mean ± std of test "
             f"accuracy %); blocks: {p5['blocks']}, h_init = {p5['h_init']:g}; activation "
             f"{p5['activation']} (tanh form). Learned h reported with its sign.", ""]
    for label, setting in p5["settings"].items():
        lines += [f"**Trained {label} (train sigma = {setting['train_noise']:g})**", "",
                  f"| model | k | L | params | {head} | learned h | epochs (best / run, per seed) |",
                  "|---|---|---|---|" + "---|" * len(keys) + "---|---|"]
        for r in setting["rows"]:
            h = f"{r['h']['mean']:+.3f} ({r['h']['sign']})" if "h" in r else ""
            k = str(r["width"]) if r["width"] else ""
            lines.append(f"| {r['description']} | {k} | {r['layers']} | {r['params']} | "
                         + " | ".join(pct(r["accuracy"][key]) for key in keys)
                         + f" | {h} | {epochs_cell(r['epochs'])} |")
        lines.append("")
    lines += ["**Does attention add to the MLP it contains?** The MLP-oracle network at the depth of its best "
              "validation accuracy against each control.", ""]
    lines += markdown(p5["checks"]["comparisons"])
    return "\n".join(lines) + "\n"


__all__ = ["KINDS", "TITLE", "build", "markdown_part5", "matched_width",
           "parameter_count", "part5_mlp_oracle", "row_specs", "train_row"]
