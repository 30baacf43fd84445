"""ε labels that stay readable, shared by `Sweep.plot` and the `jaxlump` command's figures.

A sweep has many ε and neighbouring ε often give the same or nearly the same point, so labelling every point
piles the labels into a smear. Here consecutive identical points share one label (`ε=a…b`), the curve's two ends
are always labelled, and the others are tried evenly spread along the curve (the middle first, then the quarters,
...) and kept only where their text, beside its point on one of six sides, overlaps no label kept so far, no
marker and not the legend, and stays inside the axes (measured in display space), up to `MAX_LABELS`.
"""

import collections

import numpy as np

MAX_LABELS = 12
_PAD = 2.0  # pixels kept free around each label
# Where a label may sit beside its point (offset in points, horizontal alignment), tried in this order.
_PLACES = (((4, 4), "left"), ((-4, 4), "right"), ((7, -3), "left"), ((-7, -3), "right"), ((4, -12), "left"),
           ((-4, -12), "right"))  # fmt: skip


def _spread(n: int) -> list[int]:
    """`0 … n-1` in the order to try them: both ends, then the middles of ever smaller halves (breadth first)."""
    order, queue = list(dict.fromkeys((0, n - 1)))[:n], collections.deque([(0, n - 1)])
    while queue:
        low, high = queue.popleft()
        if high - low >= 2:
            middle = (low + high) // 2
            order.append(middle)
            queue.extend(((low, middle), (middle, high)))
    return order


def eps_labels(ax, x, y, eps, *, fontsize: float = 8.0) -> list:
    """Annotate the points `(x[i], y[i])` of one curve, in curve order, with their ε; returns the candidates.

    One candidate per run of consecutive identical points (`ε=a…b`), in the order `keep_readable` tries them (the
    ends first). Call `keep_readable` once the figure's limits and layout are final.
    """
    x, y, eps = np.asarray(x), np.asarray(y), np.asarray(eps)
    runs = []  # [first index, last index]
    for i in range(len(x)):
        if runs and (x[runs[-1][1]], y[runs[-1][1]]) == (x[i], y[i]):
            runs[-1][1] = i
        else:
            runs.append([i, i])
    annotations = []
    for r in _spread(len(runs)):
        first, last = runs[r]
        text = f"ε={eps[first]:.3g}" + (f"…{eps[last]:.3g}" if last > first else "")
        annotations.append(
            ax.annotate(text, (x[first], y[first]), xytext=_PLACES[0][0], textcoords="offset points", fontsize=fontsize)
        )
    return annotations


def _markers(ax) -> tuple[np.ndarray, np.ndarray]:
    """The display positions `(n, 2)` and half-sizes `(n,)` in pixels of every marker drawn on `ax`."""
    points, radii = [np.zeros((0, 2))], [np.zeros(0)]
    for line in ax.lines:
        if line.get_marker() in (None, "None", "none", "", " "):
            continue
        xy = np.column_stack([np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)])
        xy = line.get_transform().transform(xy) if len(xy) else xy
        points.append(xy)
        radii.append(np.full(len(xy), line.get_markersize() * ax.figure.dpi / 72.0 / 2.0))
    return np.concatenate(points), np.concatenate(radii)


def keep_readable(ax, annotations, *, max_labels: int = MAX_LABELS) -> list:
    """Place each annotation where it overlaps no label kept before it, no marker and not the legend, inside the
    axes; remove the ones that fit nowhere (and all after `max_labels`). Returns the kept ones.

    The first two (the curve's ends, from `eps_labels`) are always kept, in the first place free of labels and
    markers inside the axes (else free of labels inside, else free of labels, else the first place); they may cover
    the legend, which moves away from text when it is placed "best" (matplotlib's default). Overlap is measured on
    the drawn text in display space, so call this after the axes' limits and the figure's layout are final (before
    `savefig`).
    """
    if not annotations:
        return []
    ax.figure.draw_without_rendering()
    frame, legend = ax.get_window_extent(), ax.get_legend()
    obstacles = [] if legend is None else [legend.get_window_extent()]
    points, radii = _markers(ax)

    def on_marker(box, own) -> bool:  # a marker other than the label's own point's under the label
        x, y = points[:, 0], points[:, 1]
        under = (x + radii >= box.x0) & (x - radii <= box.x1) & (y + radii >= box.y0) & (y - radii <= box.y1)
        return bool(np.any(under & (np.hypot(x - own[0], y - own[1]) > 0.5)))

    kept, boxes = [], []
    for i, annotation in enumerate(annotations):
        own = ax.transData.transform(annotation.xy)
        options = []  # (place, box, free of labels, free of markers, free of the legend, inside the axes)
        for offset, align in _PLACES:
            annotation.xyann = offset
            annotation.set_horizontalalignment(align)
            box = annotation.get_window_extent().padded(_PAD)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            free = not any(box.overlaps(b) for b in boxes)
            options.append(
                (
                    (offset, align),
                    box,
                    free,
                    not on_marker(box, own),
                    not any(box.overlaps(b) for b in obstacles),
                    inside,
                )
            )
        if i < 2:  # an end: a legend placed "best" moves away from it at draw
            good = [o for o in options if o[2] and o[3] and o[5]] or [o for o in options if o[2] and o[5]]
            good = good or [o for o in options if o[2]] or options
        else:
            good = [o for o in options if all(o[2:])]
        if good and (i < 2 or len(kept) < max_labels):
            (offset, align), box = good[0][:2]
            annotation.xyann = offset
            annotation.set_horizontalalignment(align)
            kept.append(annotation)
            boxes.append(box)
        else:
            annotation.remove()
    return kept
