"""Pictures of an evaluation, drawn with matplotlib's Agg canvas (no pyplot, no display) and written atomically.

- :func:`save_grid`: rows of :class:`Panel` s: images, label maps or perturbed-pixel maps, optionally with
  detected boxes (solid red) and ground-truth boxes (dashed green); a legend names the classes of the label maps.
  Saved at 120 dpi, about :data:`GRID_PIXELS` wide at most (312 pixels per panel for up to 4 columns, narrower
  for more), titles wrapped to the panel's width: a grid reads well at its natural size (show it unscaled).
- :func:`save_curve`: a metric against the budget ``k``.
- :func:`save_heatmap`: an annotated matrix (the transferability matrix).

>>> import tempfile, torch
>>> from PIL import Image
>>> path = tempfile.mkdtemp() + "/grid.png"
>>> clean = torch.zeros(3, 8, 8); adversarial = clean.clone(); adversarial[:, 2, 3] = 1
>>> save_grid([[Panel(clean, "clean", truth=[((1, 1, 5, 6), "cat")]),
...             Panel(adversarial, "adversarial", boxes=[((1, 1, 5, 6), "cat 0.9")]),
...             Panel(perturbed_pixels(clean, adversarial), counted(1, "pixel"), kind="mask")]], path, title="k=1")
>>> Image.open(path).format
'PNG'
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from torch import Tensor

from .records import atomic_write

KINDS = ("rgb", "labels", "mask")
#: The value of unlabelled pixels in label maps (drawn black).
UNLABELLED = 255
DPI = 120
#: The widest grid, in pixels (a grid of many columns gets narrower panels), and the widest panel, in inches.
GRID_PIXELS = 1300
PANEL_INCHES = 2.6
#: Characters of a panel's 8-point title per inch of panel width (longer lines are wrapped).
TITLE_CHARACTERS_PER_INCH = 17


@dataclass
class Panel:
    """One picture in a grid.

    ``image``: for ``kind="rgb"`` a ``(3, H, W)`` tensor in ``[0, 1]`` or an ``(H, W, 3)`` uint8 array; for
    ``"labels"`` an ``(H, W)`` map of class ids (255: unlabelled, drawn black); for ``"mask"`` an ``(H, W)`` bool
    map (perturbed pixels drawn black on white). ``boxes`` (detections, solid red, text inside the top-left corner)
    and ``truth`` (ground truth, dashed green, text under the box): ``((x0, y0, x1, y1), text)`` pairs in pixels.
    """

    image: Any
    title: str = ""
    kind: str = "rgb"
    boxes: Sequence[tuple[Sequence[float], str]] = ()
    truth: Sequence[tuple[Sequence[float], str]] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown panel kind {self.kind!r}; allowed: {list(KINDS)}")


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1.

    >>> counted(1, "detection"), counted(3, "detection"), counted(0, "object")
    ('1 detection', '3 detections', '0 objects')
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def perturbed_title(record: dict) -> str:
    """The title of a perturbed-pixel panel: the pixels changed, and the kernel placements when they differ.

    >>> perturbed_title({"l0": 3, "pixels_changed": 27}), perturbed_title({"l0": 5, "pixels_changed": 5})
    ('perturbed: 3 placements, 27 pixels', 'perturbed: 5 pixels')
    """
    pixels = record.get("pixels_changed", record["l0"])
    placements = f"{counted(record['l0'], 'placement')}, " if pixels != record["l0"] else ""
    return f"perturbed: {placements}{counted(pixels, 'pixel')}"


def label_colours(num_classes: int) -> Colormap:
    """The colour of each class id ``0 .. num_classes - 1`` of label maps (unlabelled, masked: black)."""
    if num_classes <= 10:
        colours = matplotlib.colormaps["tab10"].colors[:num_classes]
    elif num_classes <= 20:
        colours = matplotlib.colormaps["tab20"].colors[:num_classes]
    else:
        colours = matplotlib.colormaps["nipy_spectral"].resampled(num_classes)(np.arange(num_classes))
    return ListedColormap(colours).with_extremes(bad="black")


def perturbed_pixels(clean: Tensor, adversarial: Tensor) -> Tensor:
    """``(H, W)`` bool map of the pixels where any channel of ``(C, H, W)`` images differs."""
    return (clean != adversarial).any(dim=0)


def _array(image: Any) -> np.ndarray:
    if isinstance(image, Tensor):
        image = image.detach().cpu()
        image = image.permute(1, 2, 0).clamp(0, 1).numpy() if image.dim() == 3 else image.numpy()
    return np.asarray(image)


def _title(panel: Panel, inches: float) -> str:
    """The panel's title with each line wrapped to a panel ``inches`` wide."""
    width = int(TITLE_CHARACTERS_PER_INCH * inches)
    return "\n".join(textwrap.fill(line, width) for line in panel.title.split("\n"))


def _draw(ax, panel: Panel, num_classes: int, title: str) -> None:
    image = _array(panel.image)
    if panel.kind == "labels":
        ax.imshow(np.ma.masked_equal(image, UNLABELLED), cmap=label_colours(num_classes), vmin=-0.5,
                  vmax=num_classes - 0.5, interpolation="nearest")
    elif panel.kind == "mask":
        ax.imshow(image.astype(bool), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    height, width = image.shape[:2]
    for boxes, colour, text_colour, style, under in ((panel.truth, "lime", "black", (0, (3, 2)), True),
                                                     (panel.boxes, "red", "white", "solid", False)):
        for (x0, y0, x1, y1), text in boxes:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                                   linestyle=style, linewidth=1.5 if under else 1))
            if text:  # at the box's left edge, or its right one for a box in the right half (to stay inside)
                right = x0 + x1 > width
                x = min(x1, width) - 0.5 if right else max(x0, 0) - 0.5
                y = min(y1, height) - 0.5 if under else max(y0, 0) - 0.5
                ax.text(x, y, text, color=text_colour, fontsize=7, va="top", ha="right" if right else "left",
                        clip_on=True, bbox={"facecolor": colour, "pad": 1, "linewidth": 0})
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(figure: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write(path, buffer.getvalue())


def save_grid(rows: Sequence[Sequence[Panel]], path: str | os.PathLike, title: str = "",
              num_classes: int = 20, class_names: Mapping[int, str] | None = None) -> None:
    """A grid with one row per example; ``num_classes`` fixes the colours of label maps (:func:`label_colours`).

    With ``class_names`` (class id -> name, as a config's ``id2label``) and label-map panels, a legend under the
    grid names each class the maps show (and "unlabelled" when some pixel is).
    """
    if not rows:
        raise ValueError("a grid needs at least one row of panels")
    columns = max(len(row) for row in rows)
    inches = min(PANEL_INCHES, (GRID_PIXELS / DPI - 0.2) / columns)
    titles = [[_title(panel, inches) for panel in row] for row in rows]
    lines = max(t.count("\n") + 1 for row in titles for t in row)
    shown = {int(v) for row in rows for panel in row if panel.kind == "labels" for v in np.unique(_array(panel.image))}
    legend = class_names is not None and bool(shown)
    height = (inches + 0.15 * lines + 0.15) * len(rows) + 0.4 * bool(title) + 0.7 * legend
    figure = Figure(figsize=(inches * columns + 0.2, height), layout="constrained")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row, row_titles, row_axes in zip(rows, titles, axes):
        for i, ax in enumerate(row_axes):
            if i < len(row):
                _draw(ax, row[i], num_classes, row_titles[i])
            else:
                ax.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=10)
    if legend:
        colours = label_colours(num_classes)
        handles = [Patch(facecolor=colours(c), edgecolor="grey", label=f"{c} {class_names.get(c, c)}")
                   for c in sorted(shown - {UNLABELLED})]
        if UNLABELLED in shown:
            handles.append(Patch(facecolor="black", label=f"{UNLABELLED} unlabelled"))
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize=9,
                      title="classes", title_fontsize=9)
    _save(figure, path)


def save_curve(ks: Sequence[int], series: dict[str, Sequence[float]], path: str | os.PathLike, ylabel: str,
               title: str = "") -> None:
    """Each series of ``series`` (name -> one value per k) against the budget ``k``.

    >>> import tempfile
    >>> save_curve([1, 2, 4], {"robust accuracy": [0.8, 0.5, 0.1]}, tempfile.mkdtemp() + "/k.png", "accuracy")
    """
    figure = Figure(figsize=(4.5, 3.2), layout="constrained")
    ax = figure.subplots()
    for name, values in series.items():
        ax.plot(list(ks), [math.nan if v is None else v for v in values], marker="o", label=name)
    ax.set_xlabel("k (budget)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(list(ks))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    _save(figure, path)


def save_heatmap(matrix: Tensor | np.ndarray, rows: Sequence[str], columns: Sequence[str],
                 path: str | os.PathLike, title: str = "", note: str = "", xlabel: str = "target model",
                 ylabel: str = "source model (attacked)") -> None:
    """``matrix`` as an annotated heatmap (``nan`` cells read ``n/a``), with ``note`` printed under it.

    >>> import tempfile, torch
    >>> save_heatmap(torch.tensor([[1.0, 0.25], [float("nan"), 0.9]]), ["a", "b"], ["a", "b"],
    ...              tempfile.mkdtemp() + "/m.png", note="diagonal: white-box")
    """
    values = np.asarray(torch.as_tensor(matrix, dtype=torch.float64))
    finite = values[np.isfinite(values)]
    low, high = min(0.0, finite.min(initial=0.0)), max(1.0, finite.max(initial=1.0))
    figure = Figure(figsize=(1.4 * len(columns) + 2.5, 1.0 * len(rows) + 2.0), layout="constrained")
    ax = figure.subplots()
    ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=low, vmax=high)
    for (i, j), value in np.ndenumerate(values):
        text = "n/a" if not np.isfinite(value) else f"{value:.2f}"
        bright = np.isfinite(value) and value > low + 0.6 * (high - low)
        ax.text(j, i, text, ha="center", va="center", color="black" if bright else "white", fontsize=9)
    ax.set_xticks(range(len(columns)), short_names(columns), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), short_names(rows), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    if note:
        figure.supxlabel(textwrap.fill(note, 90), fontsize=7)
    _save(figure, path)


def short_names(names: Sequence[str]) -> list[str]:
    """Model names for axes: the last path component of each, unless two would then read the same.

    >>> short_names(["/runs/models/vit", "google/vit-base-patch16-224"]), short_names(["a/vit", "b/vit"])
    (['vit', 'vit-base-patch16-224'], ['a/vit', 'b/vit'])
    """
    short = [str(name).rstrip("/").rsplit("/", 1)[-1] for name in names]
    return short if len(set(short)) == len(short) else [str(name) for name in names]
