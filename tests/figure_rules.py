"""Rules a readable figure follows, checked by introspecting matplotlib figures.

``problems(fig, name)`` returns one line per broken rule (empty when the figure is fine):

* **labels**: every axes with plotted data has an x and a y label, or is an image panel
  (it shows an image) with a colorbar for the same colour map and limits whose axis is
  labelled (one colorbar may serve a row of panels); an axes with nothing drawn in it, or
  an image of one constant value, is a blank panel and goes;
* **legends off the data**: no data point or line segment (lines, scatter points, bars)
  lies inside a legend's box, in display coordinates;
* **integer ticks**: an axis whose plotted line or scatter data are all integers (epochs,
  depths L) shows only integer major ticks;
* **no overlapping text**: no two visible texts of a figure (titles, axis and tick labels,
  annotations) overlap.

``colour_conflicts(records)`` checks across figures that a method (Lie, Strang, ...: the
keys of ``plotting.METHOD_COLORS``) is drawn in its colour from that table.
"""

from __future__ import annotations

import numpy as np
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle

from flowattn_np.experiments.plotting import METHOD_COLORS, method_in


def _colorbar_axes(fig):
    return {ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None}


def _colorbar_label(ax):
    cbar = ax._colorbar
    return (cbar.ax.get_ylabel() if cbar.orientation == "vertical" else cbar.ax.get_xlabel()).strip()


def _image_key(mappable):
    return (mappable.get_cmap().name, tuple(np.round(mappable.get_clim(), 6)))


def _has_data(ax):
    return bool(ax.lines or ax.images or ax.collections or ax.patches)


def _label_problems(fig, name):
    out = []
    cbar_axes = _colorbar_axes(fig)
    labelled_maps = {_image_key(ax._colorbar.mappable) for ax in cbar_axes if _colorbar_label(ax)}
    for i, ax in enumerate(a for a in fig.axes if a not in cbar_axes):
        where = f"{name}: axes {i} ({ax.get_title()!r})"
        if not ax.get_visible():
            continue
        if not _has_data(ax):
            out.append(f"{where}: a blank panel (nothing drawn): remove it")
            continue
        if ax.images:
            if any(np.ptp(np.asarray(im.get_array(), float)) == 0 for im in ax.images):
                out.append(f"{where}: an image of one constant value (a blank panel): remove it")
            if any(_image_key(im) not in labelled_maps for im in ax.images):
                out.append(f"{where}: an image without a labelled colorbar for its colour map and limits")
            continue
        for axis in ("x", "y"):
            if not getattr(ax, f"get_{axis}label")().strip():
                out.append(f"{where}: no {axis} label")
    return out


def _line_points(line, step=2.0):
    """The display coordinates of a line's vertices, with points every ``step`` pixels between them."""
    xy = np.asarray(line.get_transform().transform(np.column_stack(
        [np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)])), float)
    xy = xy[np.isfinite(xy).all(axis=1)]
    if line.get_linestyle() in ("None", "", " ", "none") or len(xy) < 2:
        return xy
    pts = [xy[:1]]
    for a, b in zip(xy[:-1], xy[1:]):
        n = int(np.hypot(*(b - a)) / step) + 1
        pts.append(a + np.linspace(0, 1, n + 1)[1:, None] * (b - a))
    return np.concatenate(pts)


def _data_points(ax):
    """Display coordinates of what an axes plots: line vertices and segments, scatter points, bar corners."""
    pts = [_line_points(line) for line in ax.lines if line.get_visible()]
    for c in ax.collections:
        if isinstance(c, PathCollection) and len(c.get_offsets()):
            pts.append(c.get_offset_transform().transform(np.asarray(c.get_offsets(), float)))
    for p in ax.patches:
        if isinstance(p, Rectangle) and p is not ax.patch and p.get_visible():
            box = p.get_window_extent()
            xs, ys = np.linspace(box.x0, box.x1, 9), np.linspace(box.y0, box.y1, 9)
            pts.append(np.array([(x, y) for x in xs for y in ys]))
    pts = np.concatenate([p for p in pts if len(p)] or [np.zeros((0, 2))])
    box = ax.bbox  # what lies outside the axes is clipped: not drawn, so not covered
    return pts[(pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1) & (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1)]


def _legend_problems(fig, name):
    """Each legend against the data of its axes; a figure legend against every axes."""
    out = []
    figure_legends = list(fig.legends) + [leg for sub in getattr(fig, "subfigs", []) for leg in sub.legends]
    for i, ax in enumerate(fig.axes):
        legends = [ax.get_legend()] + figure_legends
        pts = _data_points(ax)
        for legend in legends:
            if legend is None or not legend.get_visible():
                continue
            box = legend.get_window_extent()
            inside = ((pts[:, 0] > box.x0) & (pts[:, 0] < box.x1) & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1))
            if inside.any():
                out.append(f"{name}: axes {i} ({ax.get_title()!r}): a legend covers {int(inside.sum())} "
                           "plotted points: use loc='best' or place it outside the axes")
    return out


def _integer_tick_problems(fig, name):
    out = []
    for i, ax in enumerate(fig.axes):
        for axis in ("x", "y"):
            if getattr(ax, f"get_{axis}scale")() != "linear":
                continue
            values = [np.asarray(getattr(line, f"get_{axis}data")(), float) for line in ax.lines
                      if line.get_transform() == ax.transData and len(line.get_xdata())]
            values += [np.asarray(c.get_offsets(), float)[:, "xy".index(axis)] for c in ax.collections
                       if isinstance(c, PathCollection) and len(c.get_offsets())]
            values = np.concatenate(values) if values else np.zeros(0)
            if not len(values) or not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
                continue
            lo, hi = sorted(getattr(ax, f"get_{axis}lim")())
            ticks = [t for t in getattr(ax, f"get_{axis}ticks")() if lo - 1e-9 <= t <= hi + 1e-9]
            bad = [t for t in ticks if abs(t - round(t)) > 1e-9]
            if bad:
                out.append(f"{name}: axes {i} ({ax.get_title()!r}): integer {axis} data on non-integer "
                           f"ticks {bad[:3]}: use MaxNLocator(integer=True)")
    return out


def _texts(fig):
    texts = list(fig.texts)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):
            drawn = axis._update_ticks()  # the ticks inside the view, as drawn
            texts += [t.label1 for t in drawn] + [t.label2 for t in drawn]
    for sub in getattr(fig, "subfigs", []):
        texts += [t for t in sub.texts]
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def _overlap_problems(fig, name, tolerance=1.0):
    texts = _texts(fig)
    boxes = [t.get_window_extent() for t in texts]
    out = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            a, b = boxes[i], boxes[j]
            w = min(a.x1, b.x1) - max(a.x0, b.x0)
            h = min(a.y1, b.y1) - max(a.y0, b.y0)
            if w > tolerance and h > tolerance:
                out.append(f"{name}: texts {texts[i].get_text()!r} and {texts[j].get_text()!r} overlap")
    return out


def problems(fig, name="figure"):
    """Every broken rule of ``fig`` (drawn first, so positions are final), one line each."""
    fig.canvas.draw()
    return (_label_problems(fig, name) + _legend_problems(fig, name) + _integer_tick_problems(fig, name)
            + _overlap_problems(fig, name))


def labelled_colours(fig, name="figure"):
    """(figure name, label, colour hex) for every labelled line, scatter and bar of ``fig``."""
    out = []
    for ax in fig.axes:
        for line in ax.lines:
            if not line.get_label().startswith("_"):
                out.append((name, line.get_label(), to_hex(line.get_color())))
        for c in ax.collections:
            if isinstance(c, PathCollection) and not c.get_label().startswith("_") and len(c.get_facecolors()):
                out.append((name, c.get_label(), to_hex(c.get_facecolors()[0])))
        for container in ax.containers:
            if not container.get_label().startswith("_") and len(container):
                first = container[0]  # a bar (Rectangle), or an error bar's data line (Line2D)
                colour = first.get_facecolor() if hasattr(first, "get_facecolor") else first.get_color()
                out.append((name, container.get_label(), to_hex(colour)))
    return out


def colour_conflicts(records):
    """Labels that name a method but are not drawn in its METHOD_COLORS colour."""
    out = []
    for name, label, colour in records:
        method = method_in(label)
        if method is not None and colour != to_hex(METHOD_COLORS[method]):
            out.append(f"{name}: {label!r} is drawn in {colour}, but {method!r} is "
                       f"{to_hex(METHOD_COLORS[method])} in plotting.METHOD_COLORS")
    return out
