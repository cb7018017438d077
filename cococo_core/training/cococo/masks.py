"""Training masks for CoCoCo (paper, "New Training Data Paradigm"; Implementation Details: kinds 0.7 / 0.2 / 0.1).

Three kinds of training samples, each with its mask sequence and prompt (probabilities in :class:`MaskMix`):

* ``instance`` (0.7): instance-aware region selection. One or more of the objects GroundingDINO found in the
  video (the phrases of the first frame, tracked by per-frame boxes) are chosen; every frame's mask is a random
  shape that COVERS the union of the chosen objects' boxes in that frame (an enlarged box, the ellipse
  circumscribing it, or a random convex polygon around it; shape and margin fixed per clip, so the mask follows
  the object). The prompt is made from the object names ("dog", "dog and cat").
* ``random`` (0.2): random shapes (ellipses, convex polygons or thick brush strokes) drifting at a constant
  velocity over the clip, with the video caption as the prompt (the paper mixes these in "to avoid overfitting").
* ``unconditional`` (0.1): the third kind, chosen here from the paper's "we also occasionally drop text
  conditioning, hinting at classifier-free guidance": an instance-aware mask (a random one when the video has no
  detected object) with the EMPTY prompt, which trains the unconditional branch CFG uses at inference.

An instance sample of a video without usable boxes falls back to ``random`` with the caption. Coordinates are
pixels of the training clip; boxes are ``(x0, y0, x1, y1)``; a pixel is inside a box when its centre is (the rule
of :func:`cococo_core.masks.morphology.box_masks`), and masks always include those pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KINDS = ("instance", "random", "unconditional")
INSTANCE_SHAPES = ("box", "ellipse", "polygon")
RANDOM_SHAPES = ("ellipse", "polygon", "strokes")


@dataclass
class MaskMix:
    """Probabilities of the three sample kinds (normalised; the paper's 0.7 / 0.2 / 0.1 by default)."""

    instance: float = 0.7
    random: float = 0.2
    unconditional: float = 0.1
    max_margin: float = 0.15
    """instance masks enlarge the boxes by up to this fraction of their size on each side"""
    random_area: tuple[float, float] = (0.05, 0.4)
    """random shapes cover about this fraction of the frame"""

    def probabilities(self) -> np.ndarray:
        weights = np.array([self.instance, self.random, self.unconditional], dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"mask kind probabilities must be >= 0 and not all 0, got {weights.tolist()}")
        return weights / weights.sum()

    def choose(self, rng: np.random.Generator) -> str:
        return KINDS[int(rng.choice(len(KINDS), p=self.probabilities()))]


@dataclass
class TrainingMask:
    """``masks`` (F, H, W) float32 in {0, 1}; ``prompt`` the text the sample is trained with; ``kind``; the
    phrases the instance mask covers."""

    masks: np.ndarray
    prompt: str
    kind: str
    objects: tuple[str, ...] = ()


# -- rasterising -------------------------------------------------------------------------------------------------
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float64)[None, :] + 0.5
    return ys, xs


def box_pixels(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies in one of the (n, 4) boxes."""
    ys, xs = _grid(height, width)
    out = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        out |= (ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1)
    return out


def ellipse_pixels(cx: float, cy: float, rx: float, ry: float, height: int, width: int) -> np.ndarray:
    ys, xs = _grid(height, width)
    return ((xs - cx) / max(rx, 1e-6)) ** 2 + ((ys - cy) / max(ry, 1e-6)) ** 2 <= 1.0


def convex_polygon_pixels(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels inside the convex hull of ``points`` (k, 2) (x, y)."""
    hull = convex_hull(points)
    ys, xs = _grid(height, width)
    inside = np.ones((height, width), dtype=bool)
    for (x0, y0), (x1, y1) in zip(hull, np.roll(hull, -1, axis=0)):
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0  # left of each counter-clockwise edge
    return inside


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise (in x-right, y-down pixel axes: ``cross >= 0`` is inside) hull, Andrew's monotone chain."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))
    if len(pts) < 3:
        return np.asarray(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1])


def stroke_pixels(points: np.ndarray, radius: float, height: int, width: int) -> np.ndarray:
    """A brush stroke of ``radius`` along the polyline ``points`` (k, 2)."""
    ys, xs = _grid(height, width)
    out = np.zeros((height, width), dtype=bool)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        length2 = dx * dx + dy * dy
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / length2, 0, 1) if length2 > 0 else 0.0
        out |= (xs - (x0 + t * dx)) ** 2 + (ys - (y0 + t * dy)) ** 2 <= radius * radius
    return out


# -- instance-aware masks ----------------------------------------------------------------------------------------
@dataclass
class CoverShape:
    """One clip's shape around the boxes: kind, margin (fraction of the box size) and polygon spikes."""

    kind: str
    margin: float
    spikes: np.ndarray  # (k, 2): angle, extra radius (fraction), for polygons

    @staticmethod
    def draw(rng: np.random.Generator, max_margin: float) -> "CoverShape":
        kind = INSTANCE_SHAPES[int(rng.integers(len(INSTANCE_SHAPES)))]
        spikes = np.stack([rng.uniform(0, 2 * math.pi, 6), rng.uniform(0.0, 0.5, 6)], axis=1)
        return CoverShape(kind, float(rng.uniform(0, max_margin)), spikes)

    def render(self, box: np.ndarray, height: int, width: int) -> np.ndarray:
        """Pixels of this shape around ``box`` (x0, y0, x1, y1); always a superset of the box's pixels."""
        x0, y0, x1, y1 = (float(v) for v in box)
        w, h = x1 - x0, y1 - y0
        x0, x1, y0, y1 = x0 - self.margin * w, x1 + self.margin * w, y0 - self.margin * h, y1 + self.margin * h
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        if self.kind == "ellipse":  # the ellipse through the four corners: (hw·√2, hh·√2) semi-axes
            shape = ellipse_pixels(cx, cy, hw * math.sqrt(2), hh * math.sqrt(2), height, width)
        elif self.kind == "polygon":  # the corners plus points pushed outwards: its convex hull holds the box
            corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            angle, extra = self.spikes[:, 0], self.spikes[:, 1]
            outer = np.stack([cx + np.cos(angle) * hw * math.sqrt(2) * (1 + extra),
                              cy + np.sin(angle) * hh * math.sqrt(2) * (1 + extra)], axis=1)
            shape = convex_polygon_pixels(np.concatenate([corners, outer]), height, width)
        else:
            shape = box_pixels(np.array([x0, y0, x1, y1]), height, width)
        return shape | box_pixels(box, height, width)  # exact pixel coverage whatever the rounding at the edges


def union_box(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])


def fill_missing(per_frame: list[np.ndarray]) -> list[np.ndarray] | None:
    """Frames without boxes take the boxes of the nearest frame that has some; None if no frame has any."""
    have = [i for i, b in enumerate(per_frame) if len(b)]
    if not have:
        return None
    return [per_frame[i] if len(per_frame[i]) else per_frame[min(have, key=lambda j: abs(j - i))]
            for i in range(len(per_frame))]


def object_prompt(objects: list[str]) -> str:
    return objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + " and " + objects[-1]


def instance_masks(boxes: list[np.ndarray], phrases: list[str], height: int, width: int, rng: np.random.Generator,
                   max_margin: float = 0.15) -> TrainingMask | None:
    """Instance-aware masks: ``boxes[f]`` is (n, 5) ``x0 y0 x1 y1 phrase_index`` in pixels of frame f.

    Chooses 1..all of the phrases seen in the clip, covers their boxes in every frame; None when no box exists."""
    present = sorted({int(p) for b in boxes for p in np.asarray(b).reshape(-1, 5)[:, 4] if 0 <= int(p) < len(phrases)})
    if not present:
        return None
    count = int(rng.integers(1, len(present) + 1))
    chosen = sorted(rng.choice(present, size=count, replace=False).tolist())
    selected = [np.asarray(b).reshape(-1, 5) for b in boxes]
    selected = [b[np.isin(b[:, 4].astype(int), chosen)][:, :4] for b in selected]
    filled = fill_missing(selected)
    if filled is None:
        return None
    shape = CoverShape.draw(rng, max_margin)
    masks = np.zeros((len(boxes), height, width), dtype=np.float32)
    for f, frame_boxes in enumerate(filled):
        covered = np.zeros((height, width), dtype=bool)
        for box in frame_boxes:  # one shape per object box, so distant objects do not merge into one blob
            covered |= shape.render(box, height, width)
        masks[f] = covered
    objects = tuple(phrases[i] for i in chosen)
    return TrainingMask(masks, object_prompt(list(objects)), "instance", objects)


# -- random masks ------------------------------------------------------------------------------------------------
def random_masks(frames: int, height: int, width: int, rng: np.random.Generator,
                 area: tuple[float, float] = (0.05, 0.4)) -> np.ndarray:
    """A random shape (ellipse, convex polygon, or brush strokes) drifting linearly over the clip: (F, H, W)."""
    kind = RANDOM_SHAPES[int(rng.integers(len(RANDOM_SHAPES)))]
    fraction = rng.uniform(*area)
    radius = math.sqrt(fraction * height * width / math.pi)
    start = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height])
    velocity = rng.normal(0, 0.01 * min(height, width), size=2)
    aspect = rng.uniform(0.5, 2.0)
    if kind == "polygon":
        angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(3, 9))))
        radii = rng.uniform(0.6, 1.4, angles.shape[0]) * radius
        offsets = np.stack([np.cos(angles) * radii * aspect ** 0.5, np.sin(angles) * radii / aspect ** 0.5], axis=1)
    elif kind == "strokes":
        steps = int(rng.integers(3, 7))
        walk = np.cumsum(rng.normal(0, radius, size=(steps, 2)), axis=0)
        offsets = walk - walk.mean(0)
        brush = max(2.0, radius * rng.uniform(0.15, 0.35))
    masks = np.zeros((frames, height, width), dtype=np.float32)
    for f in range(frames):
        cx, cy = start + velocity * f
        if kind == "ellipse":
            masks[f] = ellipse_pixels(cx, cy, radius * aspect ** 0.5, radius / aspect ** 0.5, height, width)
        elif kind == "polygon":
            masks[f] = convex_polygon_pixels(offsets + [cx, cy], height, width)
        else:
            masks[f] = stroke_pixels(offsets + [cx, cy], brush, height, width)
        if not masks[f].any():  # drifted out of the frame: keep at least the centre cell
            masks[f] = ellipse_pixels(width / 2, height / 2, radius, radius, height, width)
    return masks


# -- one sample --------------------------------------------------------------------------------------------------
def training_mask(boxes: list[np.ndarray], phrases: list[str], caption: str, height: int, width: int,
                  rng: np.random.Generator, mix: MaskMix | None = None) -> TrainingMask:
    """The mask sequence and prompt of one training clip (kind drawn from ``mix``; see the module docstring)."""
    mix = mix or MaskMix()
    kind = mix.choose(rng)
    frames = len(boxes)
    if kind in ("instance", "unconditional"):
        instance = instance_masks(boxes, phrases, height, width, rng, mix.max_margin)
        if instance is not None:
            if kind == "unconditional":
                return TrainingMask(instance.masks, "", kind, instance.objects)
            return instance
        if kind == "unconditional":
            return TrainingMask(random_masks(frames, height, width, rng, mix.random_area), "", kind)
    return TrainingMask(random_masks(frames, height, width, rng, mix.random_area), caption, "random")
