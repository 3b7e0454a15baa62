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

from .experiment import fit_config, pct, run_optimizer, seed_stats
from .layers import BlockConfig
from .mlp import MLPClassifier, MLPClassifierConfig
from .network import Network, NetworkConfig
from .train import evaluate, fit

TITLE = ("Part 5. The MLP oracle C_hat(Z) = softmax(act(Z W1^T + b1) W2^T + b2) inside the blocks "
         "(a transformer block, label-free), with its controls")

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


def train_row(kind, width, layers, X, y, tests, yt, cfg, sigma, progress, label):
    """Train one row over the seeds; its accuracies, losses and learned h per seed."""
    accs, losses, hs, params = [], [], [], 0
    for s in range(cfg.seeds):
        seed = cfg.seed + s
        net = build(kind, width, layers, X.shape[1], 10, cfg, seed)
        opt = run_optimizer("adam", net, cfg.lr, cfg, X.shape[0])
        desc = f"part 5, {label}, {kind} k={width} L={layers}, seed {seed}"
        fit(net, X, y, optimizer=opt, config=fit_config(cfg, seed, desc, progress, sigma))
        ev = {key: evaluate(net, Xs, yt) for key, Xs in tests.items()}
        accs.append({key: v["accuracy"] for key, v in ev.items()})
        losses.append({key: v["loss"] for key, v in ev.items()})
        hs.append(net.step_sizes().get("h"))
        params = parameter_count(net)
    row = {"kind": kind, "description": KINDS[kind], "width": width, "layers": layers,
           "params": params,
           "accuracy": {key: seed_stats([a[key] for a in accs]) for key in tests},
           "loss": {key: seed_stats([a[key] for a in losses]) for key in tests}}
    if layers:
        row["h"] = {"values": hs, "mean": sum(hs) / len(hs),
                    "sign": "negative" if all(v < 0 for v in hs) else
                            "positive" if all(v > 0 for v in hs) else "mixed"}
    return row


def part5_mlp_oracle(X, y, tests, yt, cfg, progress):
    """Train every row clean and noise-augmented; mean and spread over seeds, and the checks."""
    settings = {"clean": 0.0, "noise-augmented": cfg.train_noise}
    specs = row_specs(cfg, X.shape[1], 10)
    out = {"title": TITLE, "optimizer": f"Adam(lr={cfg.lr}, cosine)", "epochs": cfg.epochs,
           "seeds": [cfg.seed + s for s in range(cfg.seeds)], "h_init": cfg.h_init,
           "widths": list(cfg.mlp_widths), "layers": list(cfg.mlp_layers),
           "activation": cfg.mlp_activation, "blocks": "tied, Lie splitting, Euler A, learned h",
           "settings": {}}
    for label, sigma in settings.items():
        rows = [train_row(kind, k, L, X, y, tests, yt, cfg, sigma, progress, label)
                for kind, k, L in specs]
        out["settings"][label] = {"train_noise": sigma, "rows": rows}
    out["checks"] = attention_checks(out)
    return out


def _mean_over_noise(row):
    return sum(s["mean"] for s in row["accuracy"].values()) / len(row["accuracy"])


def attention_checks(p5):
    """For each setting and width: the best MLP-oracle depth against the MLP alone (a) and
    the parameter-matched MLP (d), per test noise level, in points, with the seed spread."""
    out = {}
    for label, setting in p5["settings"].items():
        rows = setting["rows"]
        for k in p5["widths"]:
            oracle = [r for r in rows if r["kind"] == "mlp-oracle" and r["width"] == k]
            best = max(oracle, key=_mean_over_noise)
            alone = next(r for r in rows if r["kind"] == "mlp-alone" and r["width"] == k)
            matched = rows[rows.index(alone) + 1]  # row_specs puts (d) right after (a)
            assert matched["kind"] == "mlp-matched"
            per = {}
            for key in best["accuracy"]:
                a, b = best["accuracy"][key], alone["accuracy"][key]
                c = matched["accuracy"][key]
                spread = max(a["range"], b["range"], c["range"])
                gain_a, gain_d = a["mean"] - b["mean"], a["mean"] - c["mean"]
                per[key] = {"vs_mlp_alone_points": 100 * gain_a, "vs_matched_points": 100 * gain_d,
                            "spread_points": 100 * spread,
                            "beats_both_by_more_than_spread": min(gain_a, gain_d) > spread}
            out[f"{label}, k = {k}"] = {"best_layers": best["layers"], "by_noise": per}
    return out


def markdown_part5(p5):
    """Part 5 as Markdown: one table per training setting, then the checks."""
    keys = list(p5["settings"]["clean"]["rows"][0]["accuracy"])
    head = " | ".join(f"sigma = {k}" for k in keys)
    lines = [f"## {p5['title']}", "",
             f"{p5['optimizer']}, {p5['epochs']} epochs, {len(p5['seeds'])} seeds (mean ± std of test "
             f"accuracy %); blocks: {p5['blocks']}, h_init = {p5['h_init']:g}; activation "
             f"{p5['activation']} (tanh form). Learned h reported with its sign.", ""]
    for label, setting in p5["settings"].items():
        lines += [f"**Trained {label} (train sigma = {setting['train_noise']:g})**", "",
                  f"| model | k | L | params | {head} | learned h |",
                  "|---|---|---|---|" + "---|" * len(keys) + "---|"]
        for r in setting["rows"]:
            h = f"{r['h']['mean']:+.3f} ({r['h']['sign']})" if "h" in r else ""
            k = str(r["width"]) if r["width"] else ""
            lines.append(f"| {r['description']} | {k} | {r['layers']} | {r['params']} | "
                         + " | ".join(pct(r["accuracy"][key]) for key in keys) + f" | {h} |")
        lines.append("")
    lines += ["**Does attention add to the MLP it contains?** Best MLP-oracle depth minus (a) the MLP "
              "alone and (d) the parameter-matched MLP, in accuracy points; spread = the largest "
              "max - min over seeds of the three rows.", ""]
    for name, c in p5["checks"].items():
        for key, v in c["by_noise"].items():
            lines.append(f"- {name}, best L = {c['best_layers']}, test sigma = {key}: "
                         f"{v['vs_mlp_alone_points']:+.2f} vs (a), {v['vs_matched_points']:+.2f} vs (d); "
                         f"spread {v['spread_points']:.2f}; beats both by more than the spread: "
                         f"{v['beats_both_by_more_than_spread']}")
    return "\n".join(lines) + "\n"


__all__ = ["KINDS", "TITLE", "attention_checks", "build", "markdown_part5", "matched_width",
           "parameter_count", "part5_mlp_oracle", "row_specs", "train_row"]
