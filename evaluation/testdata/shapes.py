"""A deterministic procedural "shapes" dataset: the data of the embedded models, and handy test data.

Every sample is a function of ``(seed, index)`` only (a NumPy generator seeded with both), so any sample can be
regenerated alone, in any order, in any process, and held-out data is just another ``seed``:
:data:`TRAIN_SEED` trains the embedded models, :data:`TEST_SEED` evaluates them.

An image (``size x size``, default 64) has a textured background — smooth noise, stripes at a random angle and
period, or a linear gradient between two colours, plus mild pixel noise — and 1 to 3 objects of the classes in
:data:`CLASSES` (circle, axis-aligned square, triangle of random rotation) with random colours (kept away from
the background's colours) and random sizes. Objects are painted in order, a later one on top of the earlier ones.
Overlaps are allowed but bounded: an object is placed only if every object keeps at least
:data:`MIN_VISIBLE` of its area visible (else its placement is redrawn, and after a few tries it is left out), so
every annotated object is clearly there.

Annotations, consistent with what is visible (a later object occludes an earlier one):

- ``boxes``: ``float32 (n, 4)``, pixel **xyxy** (``x0, y0, x1, y1``, origin top-left, ``x1``/``y1`` exclusive, so
  ``x1 - x0`` is the width in pixels): the tight box of each object's *visible* pixels. COCO json wants xywh:
  ``[x0, y0, x1 - x0, y1 - y0]``. This is the annotation format of :meth:`tasks.DetectionObjective.prepare`.
- ``labels``: ``int64 (n,)`` class ids in ``[0, C)``, indices into :data:`CLASSES` (detection and classification).
- ``label_map``: ``uint8 (size, size)``, ``0`` background and ``1 + class id`` for object pixels (segmentation,
  ``C + 1`` classes: :data:`SEGMENTATION_CLASSES`).

The classification variant (:func:`classification_sample`) draws exactly one object, larger, on the same kind of
background; its label is the shape's class. It shares the generator with detection and segmentation so the three
embedded models see one visual world (and the demo needs no other data); scikit-learn's 8x8 digits would be
upsampled 8x and look nothing like the detection data.

>>> sample = shapes_sample(seed=0, index=3)
>>> sample.image.shape, sample.image.dtype, sample.label_map.shape
((64, 64, 3), dtype('uint8'), (64, 64))
>>> len(sample.labels) == len(sample.boxes) and 1 <= len(sample.labels) <= 3
True
>>> same = shapes_sample(seed=0, index=3)
>>> bool((same.image == sample.image).all() and (same.label_map == sample.label_map).all())
True
>>> images, annotations = shapes_batch(2, seed=TEST_SEED)
>>> sorted(annotations[0]), len(images)
(['boxes', 'label_map', 'labels', 'size'], 2)
>>> classification_sample(seed=0, index=0).labels.shape
(1,)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

#: Object classes; a class id is an index into this tuple.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
#: Segmentation classes: background, then the object classes (label ``1 + class id``).
SEGMENTATION_CLASSES: tuple[str, ...] = ("background",) + CLASSES
#: Seed of the training stream of the embedded models.
TRAIN_SEED = 0
#: Seed of the held-out evaluation stream (never used for training).
TEST_SEED = 1_000_003
#: Each object keeps at least this fraction of its pixels visible.
MIN_VISIBLE = 0.6
#: Objects per detection/segmentation image.
MIN_OBJECTS, MAX_OBJECTS = 1, 3
_MIN_COLOUR_DISTANCE = 90.0  # Euclidean RGB distance between an object's colour and the background's colours
_PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class ShapesSample:
    """One generated image and its annotations (see the module docstring for the formats)."""

    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (n, 4) float32 pixel xyxy of the visible pixels
    labels: np.ndarray  # (n,) int64 class ids in [0, len(CLASSES))
    label_map: np.ndarray  # (H, W) uint8: 0 background, 1 + class id

    @property
    def pil(self) -> Image.Image:
        """The image as an RGB PIL image."""
        return Image.fromarray(self.image)

    def annotation(self) -> dict:
        """``{"boxes", "labels", "label_map", "size"}`` with ``size = (height, width)``."""
        return {
            "boxes": self.boxes,
            "labels": self.labels,
            "label_map": self.label_map,
            "size": self.image.shape[:2],
        }


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return np.random.default_rng([int(seed), int(index), stream])


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(float image (size, size, 3) in [0, 255], (m, 3) colours it is made of)``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    kind = rng.integers(3)
    if kind == 0:  # smooth noise: a coarse random grid upsampled bilinearly, between colours a and b
        cells = int(rng.integers(3, 9))
        grid = rng.uniform(0, 1, (cells, cells)).astype(np.float32)
        t = np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BILINEAR))
    elif kind == 1:  # stripes (soft square wave) at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) * size / period + rng.uniform(0, 1)
        t = np.clip(0.5 + 2.0 * np.sin(2 * np.pi * phase), 0, 1)
    else:  # linear gradient at a random angle
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = a + t[..., None].astype(np.float64) * (b - a)
    return image, np.stack([a, b])


def _colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A random colour at least ``_MIN_COLOUR_DISTANCE`` from every colour of the segment between the two
    background colours (the background interpolates between them); the farthest of 32 draws if none is."""
    a, b = avoid[0], avoid[1]
    candidates = rng.uniform(0, 255, (32, 3))
    direction = b - a
    t = np.clip(((candidates - a) @ direction) / max(float(direction @ direction), 1e-6), 0, 1)
    distance = np.linalg.norm(candidates - (a + t[:, None] * direction), axis=1)
    ok = np.flatnonzero(distance >= _MIN_COLOUR_DISTANCE)
    return candidates[ok[0]] if len(ok) else candidates[int(distance.argmax())]


def _shape_mask(rng: np.random.Generator, cls: int, size: int, low: float, high: float) -> np.ndarray:
    """Boolean ``(size, size)`` mask of one shape of class ``cls`` with side/diameter in ``[low, high]`` pixels,
    entirely inside the image."""
    side = rng.uniform(low, high)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    half = side / 2
    cx, cy = rng.uniform(half, size - half), rng.uniform(half, size - half)
    if CLASSES[cls] == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= half**2
    if CLASSES[cls] == "square":
        return (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    # triangle: equilateral, circumradius `half`, random rotation; inside all three edges
    angle = rng.uniform(0, 2 * np.pi)
    turns = angle + np.arange(3) * 2 * np.pi / 3
    corners = list(zip(cx + half * np.cos(turns), cy + half * np.sin(turns)))
    inside = np.ones((size, size), dtype=bool)
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
    return inside


def _render(
    seed: int, index: int, size: int, stream: int, counts: tuple[int, int], side: tuple[float, float]
) -> ShapesSample:
    rng = _rng(seed, index, stream)
    image, background_colours = _background(rng, size)
    n = int(rng.integers(counts[0], counts[1] + 1))
    owner = np.full((size, size), -1, dtype=np.int64)  # which object each pixel shows
    areas: list[int] = []
    classes: list[int] = []
    colours: list[np.ndarray] = []
    low, high = side[0] * size, side[1] * size
    for _ in range(n):
        cls = int(rng.integers(len(CLASSES)))
        colour = _colour(rng, background_colours)
        for _ in range(_PLACEMENT_TRIES):
            mask = _shape_mask(rng, cls, size, low, high)
            trial = np.where(mask, len(areas), owner)
            visible = [np.count_nonzero(trial == j) / a for j, a in enumerate(areas + [int(mask.sum())])]
            if min(visible) >= MIN_VISIBLE:
                owner = trial
                areas.append(int(mask.sum()))
                classes.append(cls)
                colours.append(colour)
                break
    for j, colour in enumerate(colours):
        shade = colour + rng.normal(0, 6, 3)  # slight per-object shading variation
        image[owner == j] = shade
    image = image + rng.normal(0, 4, image.shape)  # mild pixel noise everywhere
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    boxes = np.zeros((len(classes), 4), dtype=np.float32)
    for j in range(len(classes)):
        ys, xs = np.nonzero(owner == j)
        boxes[j] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    labels = np.asarray(classes, dtype=np.int64)
    label_map = np.zeros((size, size), dtype=np.uint8)
    for j, cls in enumerate(classes):
        label_map[owner == j] = 1 + cls
    return ShapesSample(image, boxes, labels, label_map)


def shapes_sample(seed: int, index: int, size: int = 64) -> ShapesSample:
    """Detection/segmentation sample ``index`` of stream ``seed``: 1-3 objects with side 20%-45% of ``size``."""
    return _render(seed, index, size, stream=0, counts=(MIN_OBJECTS, MAX_OBJECTS), side=(0.2, 0.45))


def classification_sample(seed: int, index: int, size: int = 64) -> ShapesSample:
    """Classification sample: exactly one object (side 30%-70% of ``size``); its class is ``labels[0]``."""
    return _render(seed, index, size, stream=1, counts=(1, 1), side=(0.3, 0.7))


def shapes_batch(n: int, seed: int = TEST_SEED, start: int = 0, size: int = 64) -> tuple[list[np.ndarray], list[dict]]:
    """Samples ``start .. start + n - 1``: ``(images (H, W, 3) uint8, annotations)`` with the annotation dicts of
    :meth:`ShapesSample.annotation` (``boxes`` xyxy, ``labels``, ``label_map``, ``size``)."""
    samples = [shapes_sample(seed, start + i, size) for i in range(n)]
    return [s.image for s in samples], [s.annotation() for s in samples]


def classification_batch(
    n: int, seed: int = TEST_SEED, start: int = 0, size: int = 64
) -> tuple[list[np.ndarray], np.ndarray]:
    """Classification samples ``start .. start + n - 1``: ``(images (H, W, 3) uint8, labels int64 (n,))``."""
    samples = [classification_sample(seed, start + i, size) for i in range(n)]
    return [s.image for s in samples], np.array([s.labels[0] for s in samples], dtype=np.int64)
