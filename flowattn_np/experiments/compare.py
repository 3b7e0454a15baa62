"""Comparisons between the rows of parts 3-5, with their statistics over seeds.

Every model of a row is trained once per seed, and seed s of row A and seed s of row B
share their minibatch order, noise draws and test images, so the comparison is paired:
for each seed the difference $d_s = a_s - b_s$ of the test accuracies, then

* the mean difference $\\bar d$ (accuracy points),
* its seed spread: the standard deviation of the $d_s$ (with $n - 1$),
* the paired t statistic $\\bar d / (\\mathrm{sd}/\\sqrt n)$ and how many seeds A won,

and a claim ("A beats B", or B beats A) only where $|\\bar d|$ exceeds twice the spread.

Which rows are compared is fixed before the run (part 3: every label-free row against
multinomial regression; part 4: each normalisation against none; part 5: the MLP-oracle
network against each control), except one choice in part 5: the depth $L$ of the
MLP-oracle and linear-oracle networks, taken by their validation accuracy (a split of the
training set), never by a test accuracy.

Conditions: the clean test images, Gaussian noise at $\\sigma = 1$, and for each corruption
the accuracy averaged over its non-zero strengths (per seed, then paired).
"""

from __future__ import annotations

import math

CLAIM_FACTOR = 2.0  # a claim only where |mean difference| > CLAIM_FACTOR x seed spread


def paired(a, b):
    """Paired comparison of two lists of per-seed values (same seeds, same order), in points.

    Returns {"mean", "spread", "t", "wins", "n", "claim"}: claim is "A", "B" or None; spread is
    NaN and t None for one seed (no claim then), t None where the spread is 0.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"a, b: expected per-seed values of the same seeds, got {len(a)} and {len(b)}")
    d = [100 * (x - y) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    spread = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1)) if n > 1 else float("nan")
    t = mean / (spread / math.sqrt(n)) if n > 1 and spread > 0 else None  # None: undefined
    claim = None
    if n > 1 and abs(mean) > CLAIM_FACTOR * spread:
        claim = "A" if mean > 0 else "B"
    return {"mean": mean, "spread": spread, "t": t, "wins": sum(v > 0 for v in d), "n": n, "claim": claim}


def condition_values(row):
    """Per-seed accuracies of a row under each compared condition: {name: [value per seed]}."""
    rob = row["robustness"]
    out = {"clean": rob["noise"]["0"]["values"]}
    if "1" in rob["noise"]:
        out["noise sigma = 1"] = rob["noise"]["1"]["values"]
    for kind, per in rob.items():
        levels = [per[k]["values"] for k in per if float(k) > 0]
        if levels:
            out[f"{kind}, mean over strengths"] = [sum(v) / len(v) for v in zip(*levels)]
    return out


def compare(a, b):
    """{condition: paired(a, b)} for two rows of one training setting."""
    va, vb = condition_values(a), condition_values(b)
    return {c: paired(va[c], vb[c]) for c in va if c in vb}


def _entry(setting, name_a, name_b, a, b):
    return {"setting": setting, "a": name_a, "b": name_b, "by_condition": compare(a, b)}


def part3_comparisons(p3):
    """Every label-free row of part 3 against multinomial regression, per training setting."""
    out = []
    for setting, s in p3["settings"].items():
        base = next(r for r in s["rows"] if r["layers"] == 0)
        for r in s["rows"]:
            if r["layers"]:
                out.append(_entry(setting, f"{short(r['variant'])}, L = {r['layers']}",
                                  "multinomial regression", r, base))
    return out


SHORT = {"attention": "attention sub-flow", "oracle": "learned oracle", "memory": "key/value memory",
         "baseline": "multinomial regression"}


def short(variant):
    """A short name of a label-free variant."""
    return SHORT.get(variant, variant)


def part4_comparisons(p4):
    """Part 4 (b): each normalisation against none, per variant and training setting."""
    out = []
    for setting, s in p4["label_free"]["settings"].items():
        for variant in dict.fromkeys(r["variant"] for r in s["rows"] if r["layers"]):
            rows = {r["norm"]: r for r in s["rows"] if r["variant"] == variant}
            for norm, r in rows.items():
                if norm != "none" and "none" in rows:
                    out.append(_entry(setting, f"{short(variant)}, {norm}", f"{short(variant)}, no normalisation",
                                      r, rows["none"]))
    return out


def best_by_validation(rows):
    """The row of highest mean validation accuracy (the first depth if there was no validation)."""
    if all("val_accuracy" in r for r in rows):
        return max(rows, key=lambda r: r["val_accuracy"]["mean"])
    return rows[0]


def part5_comparisons(p5):
    """Part 5: per setting and width, the MLP-oracle network at its validation-best depth against
    (a) the MLP alone, (d) the parameter-matched MLP, (b) the linear-oracle network at its
    validation-best depth and (c) multinomial regression."""
    out = []
    for setting, s in p5["settings"].items():
        rows = s["rows"]
        linear = best_by_validation([r for r in rows if r["kind"] == "linear-oracle"]) \
            if any(r["kind"] == "linear-oracle" for r in rows) else None
        regression = next((r for r in rows if r["kind"] == "regression"), None)
        for k in p5["widths"]:
            net = best_by_validation([r for r in rows if r["kind"] == "mlp-oracle" and r["width"] == k])
            name = f"MLP-oracle network, k = {k}, L = {net['layers']}"
            alone = next(r for r in rows if r["kind"] == "mlp-alone" and r["width"] == k)
            matched = rows[rows.index(alone) + 1]  # row_specs puts (d) right after (a)
            controls = [(f"(a) MLP alone, k = {k}", alone), (f"(d) MLP alone, k = {matched['width']}", matched)]
            if linear is not None:
                controls.append((f"(b) linear-oracle network, L = {linear['layers']}", linear))
            if regression is not None:
                controls.append(("(c) multinomial regression", regression))
            out += [_entry(setting, name, b_name, net, b) for b_name, b in controls]
    return out


def cell(c):
    """One comparison as a table cell: mean ± spread, t and wins; bold where it is a claim."""
    t = "t undefined" if c["t"] is None else f"t = {c['t']:.1f}"
    text = f"{c['mean']:+.2f} ± {c['spread']:.2f} ({t}, {c['wins']}/{c['n']})"
    return f"**{text}**" if c["claim"] else text


def markdown(comparisons):
    """The comparisons of one part as Markdown lines: a table per training setting."""
    if not comparisons:
        return []
    conditions = list(comparisons[0]["by_condition"])
    lines = ["Paired over seeds: A - B in accuracy points, mean ± standard deviation of the per-seed "
             "differences (t statistic, seeds won by A). **Bold**: the difference exceeds twice its spread, "
             "the only cases read as a claim.", ""]
    for setting in dict.fromkeys(c["setting"] for c in comparisons):
        lines += [f"Trained {setting}:", "",
                  "| A | B | " + " | ".join(conditions) + " |", "|---|---|" + "---|" * len(conditions)]
        for c in comparisons:
            if c["setting"] == setting:
                lines.append(f"| {c['a']} | {c['b']} | "
                             + " | ".join(cell(c["by_condition"][k]) for k in conditions) + " |")
        lines.append("")
    return lines


__all__ = ["CLAIM_FACTOR", "best_by_validation", "cell", "compare", "condition_values", "markdown", "paired",
           "part3_comparisons", "part4_comparisons", "part5_comparisons"]
