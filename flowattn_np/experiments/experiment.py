"""The paper's Fashion-MNIST experiment, made explicit about where the targets come from.

``python -m flowattn_np reproduce`` runs parts 1-3 (``--parts`` selects others; part 1,
the baseline whose theta parts 2 and 4 use, runs with either of them) and writes a
Markdown table, ``results.json`` and PNG figures:

1. Multinomial regression (L = 0), trained with the package's SGD: the baseline.
2. Feature discovery with the TRUE labels (the paper's theory): theta fixed from
   part 1, the Lie block of eq. (8) and the Strang block applied to the (noisy) test
   features for L = 0..8 with step h = h_units / lam_max(theta theta^T). An oracle
   computation (the test labels enter the features): never a classifier's accuracy.
3. Label-free classifiers trained end to end (hand-derived backward passes): tied
   blocks with (a) the attention sub-flow alone, (b) a learned oracle
   C_hat(Z) = softmax(Z W^T + b) in place of C, (c) separate learned keys and values
   Z + h softmax(Z K^T) V (beyond the theory), trained on clean images and with noise
   augmentation, tested on clean and noisy images, over several seeds.
4. (``--parts 4``, module ``experiment_norm``) Normalisation as a sphere constraint:
   true-label feature discovery on the sphere against the flat flow, and the label-free
   networks with normalised blocks (post-norm sphere / LayerNorm, pre-norm sphere).
5. (``--parts 5``) The MLP oracle inside the blocks (a transformer block), beside the
   MLP alone, the linear-oracle network, multinomial regression and a parameter-matched
   MLP: module ``experiment_mlp``.

``results.json`` schema (``SCHEMA``): see docs/results.md.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace

from flowattn_np import __version__
from flowattn_np.experiments import corruptions
from flowattn_np.backend import asarray, get_array_module, get_backend, to_float, to_numpy, use_backend
from flowattn_np.training.files import RunFolder, write_text
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.equations.models import linear_logits
from flowattn_np.blocks.network import Network, NetworkConfig
from flowattn_np.equations.ops import mean_cross_entropy, one_hot
from flowattn_np.training.optim import SGD, Adam, Cosine
from flowattn_np.training.progress import progress_bar
from flowattn_np.random import host_rng
from flowattn_np.training.train import FitConfig, evaluate, fit
from flowattn_np.threads import compute as _package_compute, cpu_report, policy_line

SCHEMA = "flowattn_np.reproduce/1"
PARTS = (1, 2, 3, 4, 5)
FIGURES_SKIPPED = ('figures skipped: matplotlib is not installed; the numbers are in results.json and '
                   'results.md. For the figures: pip install "flowattn-np[plot]" (or pip install matplotlib)')

PART_TITLES = {
    "part1": "Part 1. Multinomial regression without blocks, trained with SGD",
    "part2": "Part 2. Feature discovery with the true labels (an oracle computation)",
    "part3": "Part 3. Label-free classifiers trained end to end",
}
# what each title leaves to the text under it (a heading stays plain text)
PART_NOTES = {
    "part1": "L = 0: the targets are used only by the loss.",
    "part2": "The paper's theory: the test labels C enter the features, so these numbers are not a "
             "classifier's test accuracy.",
    "part3": "No labels inside the blocks.",
}

VARIANTS = {
    "baseline": ("multinomial regression, L = 0", None),
    "attention": ("(a) attention sub-flow only: Z - h CA(Z, theta)",
                  dict(model="linear", targets="none")),
    "oracle": ("(b) learned oracle: Z + h (C_hat(Z) - sigma(Z theta^T)) theta, C_hat = softmax(Z W^T + b)",
               dict(model="linear", targets="learned")),
    "memory": ("(c) key/value memory Z + h softmax(Z K^T) V (beyond the theory)",
               dict(model="memory", targets="none")),
}


@dataclass(frozen=True)
class ReproduceConfig:
    """Settings of the reproduction; the defaults are the documented full run."""

    noise: tuple = (0.0, 0.5, 1.0)        # test noise levels sigma
    max_layers: int = 8                   # part 2: L = 0..max_layers
    layers: tuple = (1, 2, 4)             # part 3: depths of the label-free networks
    variants: tuple = ("attention", "oracle", "memory")
    epochs: int = 5
    seeds: int = 3                        # part 1 and part 3 repeat over seeds seed..seed+seeds-1
    seed: int = 0
    batch_size: int = 256
    baseline_lr: float = 0.05             # part 1: SGD, momentum 0.9, cosine decay
    lr: float = 3e-3                      # part 3: Adam, cosine decay
    optimizer: str = "adam"               # part 3 optimiser: 'adam' or 'sgd'
    h_units: float = 1.0                  # part 2: h = h_units / lam_max(theta theta^T)
    h_init: float = 0.1                   # part 3: initial (learned) step
    train_noise: float = 0.5              # part 3: sigma of the noise augmentation setting
    memory_slots: int = 64
    figure_noise: float = 0.5
    figure_class: int = 6                 # the first test image of this class (6 = Shirt)
    train_size: int | None = None         # None: all 60000 (quick runs use a subset)
    test_size: int | None = None
    quick: bool = False
    parts: tuple = (1, 2, 3)              # parts to run; parts 2 and 4 also run part 1 (its theta)
    norm_layers: int = 2                  # part 4 (b): depth L of the normalised label-free networks
    norm_variants: tuple = ("oracle", "memory")
    norms: tuple = ("none", "post-sphere", "post-layer", "pre-sphere")
    mlp_layers: tuple = (1, 2, 4)         # part 5: depths of the MLP-oracle networks
    mlp_widths: tuple = (64, 256)         # part 5: hidden widths k of the MLP oracle
    mlp_activation: str = "gelu"          # part 5: 'gelu' (tanh form) or 'relu'
    # robustness of every model of parts 3-5: test accuracy against each corruption's strength
    robust_noise: tuple = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)   # Gaussian noise sigma
    occlusion: tuple = (0.2, 0.3, 0.4, 0.5)   # occluded square, side as a fraction of the image's (unseen)
    blur: tuple = (0.5, 1.0, 1.5, 2.0)        # Gaussian blur sigma in pixels (unseen)
    # parts 4 and 5: early stopping on a validation split held out from the training set
    early_stopping_parts: tuple = (4, 5)
    max_epochs: int = 10                  # the cap (and the length of the cosine decay)
    patience: int = 2                     # epochs without a better validation accuracy before stopping
    val_fraction: float = 0.1             # the share of the training images held out for validation

    def levels(self):
        """The corruptions every model of parts 3-5 is tested on: kind -> strengths (0 first)."""
        noise = sorted({float(s) for s in self.noise} | {float(s) for s in self.robust_noise} | {0.0})
        return {"noise": tuple(noise), "occlusion": (0.0,) + tuple(self.occlusion),
                "blur": (0.0,) + tuple(self.blur)}

    def __post_init__(self):
        parts = tuple(self.parts)
        if not parts or any(p not in PARTS for p in parts):
            raise ValueError(f"parts: expected part numbers among {', '.join(map(str, PARTS))}, got {self.parts!r}")
        object.__setattr__(self, "parts", tuple(sorted(set(parts))))
        from flowattn_np.experiments.experiment_norm import check_norms  # that module imports this one

        object.__setattr__(self, "norms", check_norms(self.norms))
        unknown = [v for v in self.norm_variants if v not in VARIANTS or v == "baseline"]
        if unknown:
            raise ValueError(f"norm_variants: expected names among attention, oracle, memory, got {unknown}")
        for name, kind in (("noise", "noise"), ("robust_noise", "noise"), ("occlusion", "occlusion"),
                           ("blur", "blur")):
            for s in getattr(self, name):
                try:
                    corruptions.check_strength(kind, s)
                except ValueError as exc:
                    raise ValueError(f"{name}: {str(exc).removeprefix('strength: ')}") from None
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a fraction in (0, 1), got {self.val_fraction!r}")
        for name in ("max_epochs", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")

    @classmethod
    def quick_run(cls, **overrides):
        """A smoke-sized run: a data subset, 1 epoch (at most 2 with early stopping), 2 seeds,
        shallow networks."""
        base = dict(max_layers=3, layers=(1, 2), epochs=1, seeds=2, train_size=4000,
                    test_size=1000, memory_slots=16, quick=True, norm_layers=1, mlp_layers=(1, 2),
                    mlp_widths=(16,), max_epochs=2, patience=1)
        base.update(overrides)
        return cls(**base)


def noise_key(sigma):
    """The key of a noise level in results.json: '0', '0.5', '1'."""
    return f"{float(sigma):g}"


def seed_stats(values):
    """Mean, standard deviation, range (max - min) and the values of a metric over seeds."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n) if n > 1 else 0.0
    return {"mean": mean, "std": std, "range": max(values) - min(values), "values": list(values)}


def noisy(X, sigma, seed):
    """X + sigma * eps with eps drawn on the host from a seeded NumPy generator and moved
    once: every run, on every backend, sees the same noisy test images."""
    if not sigma:
        return X
    eps = asarray(host_rng(seed).standard_normal(X.shape, dtype=X.dtype))
    eps *= sigma
    return X + eps


def head_metrics(net, Z, y, C):
    """Batch-mean cross-entropy and accuracy of the head Z theta^T on features Z (0-d arrays)."""
    logits = linear_logits(Z, net.params["theta"])
    return mean_cross_entropy(logits, C), (net.predictions(logits) == y).mean()


def run_optimizer(kind, net, lr, cfg, n_rows, epochs=None):
    """SGD (momentum 0.9) or Adam at ``lr`` with cosine decay over ``epochs`` (default cfg.epochs)."""
    schedule = Cosine((epochs or cfg.epochs) * math.ceil(n_rows / cfg.batch_size))
    if kind == "adam":
        return Adam(net.params, lr=lr, schedule=schedule)
    return SGD(net.params, lr=lr, momentum=0.9, schedule=schedule)


def fit_config(cfg, seed, desc, progress, noise=0.0):
    """The fit options shared by parts 1, 3, 4 and 5 (inputs were checked once, on loading)."""
    return FitConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed, noise=noise,
                     progress=progress, desc=desc, check_inputs=False)


# ---------------------------------------------------------------- data, training, testing

VAL_SEED = 4_242  # the validation split: one for every model, so comparisons stay paired


class RunData:
    """The data of a run on the active backend: the training set, the corrupted test sets
    (``suite``: {(kind, strength key): images}, drawn on the host and moved once), the test
    labels, and the validation split held out from the training set for early stopping.

    The split, ``split(n, fraction)``, is a seeded permutation of the training rows only:
    the test images and labels never enter it.
    """

    def __init__(self, X, y, suite, yt, cfg):
        self.X, self.y, self.suite, self.yt, self.cfg = X, y, suite, yt, cfg
        self.table = tuple(noise_key(s) for s in cfg.noise)  # the noise levels of the tables
        self._split, self._val = None, {}

    def tests(self):
        """The table's noisy test sets, {noise key: images} (parts 1 and 2)."""
        return {k: self.suite[("noise", k)] for k in self.table}

    def split(self):
        """(X_fit, y_fit, X_val, y_val): the training set without, and with only, the held-out rows."""
        if self._split is None:
            fit_rows, val_rows = validation_split(self.X.shape[0], self.cfg.val_fraction)
            self._split = (self.X[fit_rows], self.y[fit_rows], self.X[val_rows], self.y[val_rows])
        return self._split

    def validation(self, sigma):
        """The validation images under the training distribution (noise sigma, one seeded draw)."""
        if sigma not in self._val:
            X_val = self.split()[2]
            self._val[sigma] = X_val if not sigma else noisy(X_val, sigma, seed=VAL_SEED + 1)
        return self._val[sigma]


def validation_split(n, fraction, seed=VAL_SEED):
    """Row indices (fit, validation) of a training set of ``n`` rows: a seeded permutation,
    ``max(1, round(fraction n))`` rows held out (on the active backend, moved once)."""
    n_val = min(n - 1, max(1, round(fraction * n)))
    if n_val < 1:
        raise ValueError(f"train_size: early stopping needs at least 2 training images, got {n}")
    order = host_rng(seed).permutation(n)
    return asarray(order[n_val:]), asarray(order[:n_val])


def test_on_suite(net, data):
    """Accuracy and cross-entropy of ``net`` on every corrupted test set: {kind: {key: {...}}}."""
    out = {}
    for (kind, key), Xs in data.suite.items():
        out.setdefault(kind, {})[key] = evaluate(net, Xs, data.yt, check=False)
    return out


def train(net, data, cfg, seed, sigma, desc, progress, optimizer="adam", lr=None, early=False):
    """Train ``net`` (train noise ``sigma``); returns its History dict and the epochs it used.

    Without ``early``: cfg.epochs epochs on all the training images. With it: on the
    training images less the validation split, at most cfg.max_epochs epochs (cosine decay
    over them), stopping after cfg.patience epochs without a better validation accuracy;
    the parameters of the best epoch are restored. Only the validation split (held out from
    the training set) is read to decide: never the test set.
    """
    lr = cfg.lr if lr is None else lr
    if not early:
        opt = run_optimizer(optimizer, net, lr, cfg, data.X.shape[0])
        hist = fit(net, data.X, data.y, optimizer=opt, config=fit_config(cfg, seed, desc, progress, sigma))
        return hist.to_dict(), {"rule": "fixed", "run": cfg.epochs, "best": cfg.epochs}
    X, y, _, y_val = data.split()
    X_val = data.validation(sigma)
    opt = run_optimizer(optimizer, net, lr, cfg, X.shape[0], epochs=cfg.max_epochs)
    records, best, best_acc, best_epoch, rule = [], None, -1.0, 0, "cap"
    for epoch in range(1, cfg.max_epochs + 1):
        # a fresh minibatch order and training noise each epoch, fixed by (seed, epoch)
        config = replace(fit_config(cfg, seed + 10_007 * epoch, f"{desc}, epoch {epoch} (cap {cfg.max_epochs}),",
                                        progress, sigma), epochs=1)
        record = fit(net, X, y, optimizer=opt, X_val=X_val, y_val=y_val, config=config).epochs[0]
        record["epoch"] = epoch
        records.append(record)
        if record["val_accuracy"] > best_acc:
            best_acc, best_epoch = record["val_accuracy"], epoch
            best = {k: v.copy() for k, v in net.params.items()}  # on the device: no host copy
        elif epoch - best_epoch >= cfg.patience:
            rule = "patience"
            break
    for k, v in best.items():
        net.params[k][...] = v
    return {"epochs": records}, {"rule": rule, "run": len(records), "best": best_epoch,
                                 "val_accuracy": best_acc}


def train_over_seeds(make_net, data, cfg, progress, sigma, desc, optimizer=None, lr=None, early=False):
    """Train ``make_net(seed)`` for each seed (train noise sigma) and test it on every corrupted test set.

    Returns (row statistics: ``accuracy`` and ``loss`` at the table's noise levels,
    ``robustness`` {kind: {strength: accuracy stats}}, ``h``, ``epochs`` and, with early
    stopping, ``val_accuracy``; the seed-0 network; its training history as a dict).
    """
    runs, first = [], None
    for s in range(cfg.seeds):
        seed = cfg.seed + s
        net = make_net(seed)
        hist, epochs = train(net, data, cfg, seed, sigma, f"{desc}, seed {seed}", progress,
                             optimizer or cfg.optimizer, lr, early)
        runs.append((test_on_suite(net, data), net.step_sizes().get("h"), epochs))
        first = first or (net, hist)
    return row_stats(runs, data.table), first[0], first[1]


def row_stats(runs, table):
    """Seed statistics of one row from its runs [(suite results, learned h, epochs), ...]."""
    suites = [r[0] for r in runs]
    noise = suites[0]["noise"]
    out = {"accuracy": {k: seed_stats([t["noise"][k]["accuracy"] for t in suites]) for k in table if k in noise},
           "loss": {k: seed_stats([t["noise"][k]["loss"] for t in suites]) for k in table if k in noise},
           "robustness": {kind: {key: seed_stats([t[kind][key]["accuracy"] for t in suites]) for key in per}
                          for kind, per in suites[0].items()},
           "h": [r[1] for r in runs],
           "epochs": {field: [r[2][field] for r in runs] for field in ("rule", "run", "best")}}
    if "val_accuracy" in runs[0][2]:
        out["val_accuracy"] = seed_stats([r[2]["val_accuracy"] for r in runs])
    return out


def training_note(cfg, early):
    """How a part's networks were trained, in words (results.json and the tables)."""
    if early:
        return (f"early stopping: at most {cfg.max_epochs} epochs (cosine decay over them), stopped after "
                f"{cfg.patience} epochs without a better validation accuracy, the best epoch's parameters "
                f"kept; validation on {cfg.val_fraction:.0%} of the training images, held out from "
                "training (the test set chooses nothing)")
    return f"{cfg.epochs} epochs on all the training images"


def epochs_cell(epochs):
    """The epochs a row used over its seeds, e.g. '7, 9, 10 (cap)' or '5 (fixed)'."""
    if set(epochs["rule"]) == {"fixed"}:
        return f"{epochs['run'][0]} (fixed)"
    return ", ".join(f"{b}/{r}" + (" cap" if rule == "cap" else "")
                     for b, r, rule in zip(epochs["best"], epochs["run"], epochs["rule"]))


# ---------------------------------------------------------------- parts


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
    return {"title": PART_TITLES["part1"], "optimizer": f"SGD(lr={cfg.baseline_lr}, momentum=0.9, cosine)",
            "seeds": [cfg.seed + s for s in range(cfg.seeds)], "by_noise": by_noise}, nets


def lam_max(theta):
    r"""Largest eigenvalue $\lambda_{\max}$ of $\theta\theta^\top$: the unit of the step size.

    An Euler step of the full linear flow descends for $h<4/\lambda_{\max}$ (the mathematics,
    section 4).

    Parameters
    ----------
    theta : array, shape (m, d)
        One row per class.

    Returns
    -------
    float
    """
    xp = get_array_module(theta)
    t64 = theta.astype("float64")
    return to_float(xp.linalg.eigvalsh(t64 @ t64.T).max())


def part2_feature_discovery(theta, tests, yt, cfg, progress):
    """True-label Lie and Strang blocks on the test features: loss/accuracy for L = 0..max."""
    lam = lam_max(theta)
    h = cfg.h_units / lam
    C = one_hot(yt, theta.shape[0], theta.dtype)  # the true labels: oracle targets
    out = {"title": PART_TITLES["part2"], "targets": "true labels (oracle computation)",
           "lam_max": lam, "h_units": cfg.h_units, "h": h, "schemes": {}}
    bar = progress_bar(2 * len(tests) * cfg.max_layers, "part 2 (true labels)", progress, unit="block")
    for scheme in ("lie", "strang"):
        net = true_label_network(theta, scheme, h, cfg.max_layers)
        out["schemes"][scheme] = depth_metrics(net, tests, yt, C, bar)
    bar.close()
    return out


def depth_metrics(net, tests, yt, C, bar):
    """For each test noise level: the head's cross-entropy and accuracy on the iterates Z_0..Z_L
    of a true-label network (an oracle computation), as lists of Python floats."""
    per_noise = {}
    for k, X in tests.items():
        metrics = [head_metrics(net, Z_l, yt, C) for Z_l in net.features(X, yt)]  # L = 0..max
        bar.update(net.config.layers)
        per_noise[k] = {"loss": [to_float(loss) for loss, _ in metrics],
                        "accuracy": [to_float(acc) for _, acc in metrics]}
    return per_noise


def true_label_network(theta, scheme, h, layers, norm="none"):
    r"""Part 2's network: ``layers`` tied linear blocks fed the true labels, $\theta$ fixed.

    Each block is one Lie or Strang step of eq. (8) with step $h$ (``norm="sphere"``: the
    post-norm blocks on the sphere of part 4); ``features(Z, y)`` gives the iterates
    $Z_0,\dots,Z_L$ (an oracle computation: the labels enter them).

    Parameters
    ----------
    theta : array, shape (m, d)
        The trained regression of part 1.
    scheme : str
        ``"lie"`` or ``"strang"``.
    h : float
        Step size.
    layers : int
        Number of blocks $L$.
    norm : str
        ``"none"`` or ``"sphere"``.

    Returns
    -------
    Network
    """
    block = BlockConfig(model="linear", scheme=scheme, targets="labels", h=h, norm=norm)
    config = NetworkConfig(n_inputs=theta.shape[1], n_classes=theta.shape[0], layers=layers,
                           block=block, dtype=theta.dtype.name)
    return Network(config, params={"theta": theta})


def label_free_network(variant, L, d, cfg, seed, **block_changes):
    """A network of ``VARIANTS[variant]`` with L tied blocks and learned h (L = 0: the baseline).

    ``block_changes`` set further BlockConfig fields (part 4: the normalisation).
    """
    if variant == "baseline" or L == 0:
        return Network(NetworkConfig(n_inputs=d, n_classes=10, layers=0), seed=seed)
    spec = dict(VARIANTS[variant][1], **block_changes)
    block = BlockConfig(h=1.0 if spec["model"] == "memory" else cfg.h_init, learn_h=True,
                        slots=cfg.memory_slots if spec["model"] == "memory" else 0, **spec)
    return Network(NetworkConfig(n_inputs=d, n_classes=10, layers=L, block=block), seed=seed)


def step_report(hs):
    """The learned steps of a row over seeds: values, mean and their common sign (a finding)."""
    return {"values": hs, "mean": sum(hs) / len(hs),
            "sign": "negative" if all(v < 0 for v in hs) else
                    "positive" if all(v > 0 for v in hs) else "mixed"}


def part3_label_free(data, cfg, progress):
    """Train the label-free variants end to end in two settings; mean and spread over seeds."""
    settings = {"clean": 0.0, "noise-augmented": cfg.train_noise}
    out = {"title": PART_TITLES["part3"],
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


# ---------------------------------------------------------------- checks


def checks(results, cfg):
    """The claims the numbers should show (docs/results.md), evaluated on this run, for the parts that ran.

    Part 2's monotone cross-entropy and accuracy gain; the paired comparisons of parts 3-5
    (`experiment_compare`).
    """
    from flowattn_np.experiments import experiment_compare as compare

    out = {}
    if "part2" in results:
        out.update(part2_checks(results["part2"]))
    if "part3" in results:
        out["part3_comparisons"] = compare.part3_comparisons(results["part3"])
    if "part4" in results:
        from flowattn_np.experiments.experiment_norm import part4_checks

        out["part4"] = part4_checks(results["part4"])
    if "part5" in results:
        out["part5"] = results["part5"]["checks"]
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


# ---------------------------------------------------------------- table


def pct(stats):
    """Accuracy in percent, with the seed-to-seed std where there are several seeds."""
    if len(stats["values"]) > 1:
        return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"
    return f"{100 * stats['mean']:.2f}"


def markdown_table(results):
    """The results as Markdown: one titled table per part that ran, then the checks."""
    from flowattn_np.experiments.experiment_mlp import markdown_part5

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
        from flowattn_np.experiments.experiment_norm import part4_markdown

        lines += part4_markdown(results["part4"], keys)
    if "part5" in results:
        lines += markdown_part5(results["part5"]).splitlines() + [""]
    lines += ["## Checks", ""] + check_lines(results["checks"])
    return "\n".join(lines) + "\n"


def part1_lines(p1, keys):
    """Part 1 as Markdown lines."""
    head = " | ".join(f"sigma = {k}" for k in keys)
    lines = [f"## {p1['title']}", "", f"{PART_NOTES['part1']} {p1['optimizer']}, {len(p1['seeds'])} seeds "
             "(mean ± std).", "",
             f"| metric | {head} |", "|---|" + "---|" * len(keys)]
    lines.append("| test accuracy % | " + " | ".join(pct(p1["by_noise"][k]["accuracy"]) for k in keys) + " |")
    lines.append("| test cross-entropy | " + " | ".join(f"{p1['by_noise'][k]['loss']['mean']:.4f}" for k in keys) + " |")
    return lines + [""]


def part2_lines(p2, p1):
    """Part 2 as Markdown lines: accuracy / cross-entropy against L per scheme and noise."""
    lines = [f"## {p2['title']}", "", PART_NOTES["part2"], "",
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


def part3_lines(p3, keys):
    """Part 3 as Markdown lines: one table per training setting."""
    from flowattn_np.experiments.experiment_compare import markdown, part3_comparisons

    lines = [f"## {p3['title']}", "", f"{PART_NOTES['part3']} {p3['optimizer']}, {p3['epochs']} epochs, tied "
             f"blocks, {len(p3['seeds'])} seeds (mean ± std of test accuracy %); learned h reported with its sign.", ""]
    lines += settings_lines(p3["settings"], keys, [("variant", lambda r: r["description"]),
                                                   ("L", lambda r: r["layers"])])
    return lines + markdown(part3_comparisons(p3))


def settings_lines(settings, keys, label_columns):
    """One Markdown table per training setting: the label columns ((header, row -> cell) pairs),
    the test accuracy at each noise level (mean ± std over seeds), the learned h, and with
    early stopping the epochs each seed used (best epoch / epochs run)."""
    early = any("val_accuracy" in r for s in settings.values() for r in s["rows"])
    extra = ["learned h"] + (["epochs (best / run, per seed)"] if early else [])
    head = " | ".join([h for h, _ in label_columns] + [f"sigma = {k}" for k in keys] + extra)
    lines = []
    for name, setting in settings.items():
        lines += [f"**Trained {name} (train sigma = {setting['train_noise']:g})**", "",
                  f"| {head} |", "|" + "---|" * (len(label_columns) + len(keys) + len(extra))]
        for r in setting["rows"]:
            h = f"{r['h']['mean']:+.3f} ({r['h']['sign']})" if "h" in r else ""
            cells = [str(cell(r)) for _, cell in label_columns] + [pct(r["accuracy"][k]) for k in keys] + [h]
            cells += [epochs_cell(r["epochs"])] if early else []
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def depth_cells(r):
    """'accuracy % / cross-entropy' after each block L = 0..max, for a depth table."""
    return [f"{100 * a:.1f} / {c:.3f}" for a, c in zip(r["accuracy"], r["loss"])]


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
        from flowattn_np.experiments.experiment_norm import part4_check_lines

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
    from flowattn_np.experiments import plotting
    from flowattn_np.experiments.data import CLASS_NAMES, load_fashion_mnist

    cfg = cfg or ReproduceConfig()
    if figures and not plotting.matplotlib_available():  # say so now, not after minutes of compute
        log(FIGURES_SKIPPED)
        figures = False
    t_start = time.perf_counter()
    if not isinstance(out, RunFolder):
        out = RunFolder(out) if out else RunFolder(default_out(), fresh=True)
    with out as folder, use_backend(backend or get_backend()):
        ds = load_fashion_mnist(data_dir=data_dir, progress=progress)
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
        results["checks"] = checks(results, cfg)
        results["figures"] = {}
        if figures and nets1:  # part 1 ran: its curves, and the figures of parts 2-4 that ran
            theta = nets1[0][0].params["theta"]
            results["figures"] = _figures(folder, cfg, results, theta, Xt, yt, kept, nets1, CLASS_NAMES)
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
    from flowattn_np.experiments.experiment_mlp import part5_mlp_oracle

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
        from flowattn_np.experiments.experiment_norm import part4_normalisation  # it imports this module's helpers

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


PART3_LINES = {"baseline": ("regression", ":s"), "attention": ("attention sub-flow", "-.v"),
               "oracle": ("learned oracle", "-o"), "memory": ("memory", "--^")}


def part3_robustness_panels(p3):
    """Part 3's lines of the robustness figure: multinomial regression and each variant at the
    largest depth (fixed before the run), per training setting."""
    from flowattn_np.experiments.experiment_compare import short

    panels = {}
    for name, setting in p3["settings"].items():
        deepest = max(r["layers"] for r in setting["rows"])
        panels[name] = [(short(r["variant"]) + (f", L = {r['layers']}" if r["layers"] else ", L = 0"),
                         *PART3_LINES[r["variant"]], r["robustness"])
                        for r in setting["rows"] if r["layers"] in (0, deepest)]
    return panels


def robustness_figures(folder, results):
    """The robustness figure of each of parts 3-5 that ran: {name: file}."""
    from flowattn_np.experiments import plotting
    from flowattn_np.experiments.experiment_mlp import part5_robustness_panels
    from flowattn_np.experiments.experiment_norm import part4_robustness_panels

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
    from flowattn_np.experiments import plotting

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
    from flowattn_np.experiments import plotting

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
