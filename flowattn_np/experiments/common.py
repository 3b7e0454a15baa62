"""What the parts of ``reproduce`` share: the settings, the data of a run, training over
seeds, the true-label and label-free networks, and the cells of the Markdown tables.

Every part module (``part1_baseline`` ... ``part5_mlp_oracle``) imports from here, and the
driver ``reproduce`` imports the parts: the imports run one way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from flowattn_np.backend import asarray, get_array_module, to_float
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.network import Network, NetworkConfig
from flowattn_np.equations.models import linear_logits
from flowattn_np.equations.ops import mean_cross_entropy
from flowattn_np.experiments import corruptions
from flowattn_np.random import host_rng
from flowattn_np.training.optim import SGD, Adam, Cosine
from flowattn_np.training.train import FitConfig, evaluate, fit


PARTS = (1, 2, 3, 4, 5)


VARIANTS = {
    "baseline": ("multinomial regression, L = 0", None),
    "attention": ("(a) attention sub-flow only: Z - h CA(Z, theta)",
                  dict(model="linear", targets="none")),
    "oracle": ("(b) learned oracle: Z + h (C_hat(Z) - sigma(Z theta^T)) theta, C_hat = softmax(Z W^T + b)",
               dict(model="linear", targets="learned")),
    "memory": ("(c) key/value memory Z + h softmax(Z K^T) V (beyond the theory)",
               dict(model="memory", targets="none")),
}


# name -> (description, BlockConfig fields)
NORMS = {
    "none": ("no normalisation (flat blocks)", dict(norm="none")),
    "post-sphere": ("post-norm on the sphere |z| = sqrt(d): R(Z + step), a flow on the sphere",
                    dict(norm="sphere", norm_place="post")),
    "post-layer": ("post-norm LayerNorm: R(Z + step) on {mean 0, |z| = sqrt(d)}",
                   dict(norm="layer", norm_place="post")),
    "pre-sphere": ("pre-norm on the sphere: Z + step(R(Z)) (GPT-2 layout, not a flow on the sphere)",
                   dict(norm="sphere", norm_place="pre")),
}


def check_norms(norms):
    """The names of part 4's normalisations (keys of NORMS); returns them as a tuple."""
    norms = tuple(norms)
    unknown = [n for n in norms if n not in NORMS]
    if unknown or not norms:
        raise ValueError(f"norms: expected names among {', '.join(NORMS)}, got {norms!r}")
    return norms


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


# ---------------------------------------------------------------- networks


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


def true_label_network(theta, scheme, h, layers, norm="none"):
    r"""Part 2's network: ``layers`` tied linear blocks fed the true labels, $\theta$ fixed.

    Each block is one step $h$ of the linear flow: ``"lie"`` is the block of eq. (8) (one Euler
    step of the attention sub-flow A, then the exact label sub-flow B), ``"strang"`` the
    symmetric A(h/2), B(h), A(h/2) with Euler half steps (``norm="sphere"``: the post-norm
    blocks on the sphere of part 4); ``features(Z, y)`` gives the iterates
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


# ---------------------------------------------------------------- table cells


def pct(stats):
    """Accuracy in percent, with the seed-to-seed std where there are several seeds."""
    if len(stats["values"]) > 1:
        return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"
    return f"{100 * stats['mean']:.2f}"


def epochs_cell(epochs):
    """The epochs a row used over its seeds, e.g. '7, 9, 10 (cap)' or '5 (fixed)'."""
    if set(epochs["rule"]) == {"fixed"}:
        return f"{epochs['run'][0]} (fixed)"
    return ", ".join(f"{b}/{r}" + (" cap" if rule == "cap" else "")
                     for b, r, rule in zip(epochs["best"], epochs["run"], epochs["rule"]))


def depth_cells(r):
    """'accuracy % / cross-entropy' after each block L = 0..max, for a depth table."""
    return [f"{100 * a:.1f} / {c:.3f}" for a, c in zip(r["accuracy"], r["loss"])]


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


# every public name (the package exports ReproduceConfig and lam_max; the API page lists all)
__all__ = [
    "PARTS", "VARIANTS", "NORMS", "check_norms", "ReproduceConfig", "noise_key", "seed_stats", "noisy",
    "head_metrics", "run_optimizer", "fit_config", "VAL_SEED", "RunData", "validation_split", "test_on_suite",
    "train", "train_over_seeds", "row_stats", "training_note", "lam_max", "true_label_network",
    "depth_metrics", "label_free_network", "step_report", "pct", "epochs_cell", "depth_cells",
    "settings_lines",
]
