"""Weakly supervised localization: find the object with a classifier trained on class labels only, and score where
its maps point against the true box.

:func:`cluttered_mnist` builds the data set (cluttered MNIST as in the Spatial Transformer Networks paper, at fixed
parameters): on a 64x64 canvas one digit rescaled to a side of 20-32 px at a random position, plus 6 clutter
fragments of 8x8 px cut from other digits, each overlapping the digit's box by at most 10 % of the fragment. The true
box is the tight box of the digit's ink (pixels above 30/255 after rescaling). Deterministic from a seed, in memory.

Metrics: :func:`pointing_game` (the centre of the map's highest cell, at the map's own grid, inside the true box)
and :func:`box_accuracy` (the box of the largest connected region of the upsampled map above a threshold
``fraction`` of the way from its minimum to its maximum has IoU >= 0.5 with the truth).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vitkit.checks import check_number
from vitkit.sources import InMemoryImages

__all__ = ["ClutterSpec", "cluttered_mnist", "pointing_game", "box_iou", "box_from_map", "box_accuracy"]


@dataclass(frozen=True)
class ClutterSpec:
    """The data set's fixed parameters: 64x64 canvases, one digit of 20-32 px and clutter fragments
    of other digits, placed at random."""
    canvas: int = 64
    min_side: int = 20
    max_side: int = 32
    fragments: int = 6
    fragment: int = 8
    max_overlap: float = 0.10  # of a fragment's area, inside the digit's box
    ink: int = 30  # a pixel above this (of 255) is ink


def _ink_box(img: torch.Tensor, ink: int) -> torch.Tensor:
    """Tight box ``[x0, y0, x1, y1]`` (x1, y1 exclusive) of the pixels of ``img (H, W)`` above ``ink``."""
    ys, xs = torch.nonzero(img > ink, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def _overlap(box: torch.Tensor, x: int, y: int, size: int) -> int:
    """Pixels of the ``size`` x ``size`` square at (x, y) inside ``box``."""
    w = min(int(box[2]), x + size) - max(int(box[0]), x)
    h = min(int(box[3]), y + size) - max(int(box[1]), y)
    return max(0, w) * max(0, h)


def cluttered_mnist(digits: InMemoryImages, n: int, seed: int = 0, spec: ClutterSpec = ClutterSpec(),
                    return_parts: bool = False):
    """``n`` canvases from ``digits`` (an MNIST split, e.g. ``data.load_mnist(root)[0]``): ``(images, boxes)``,
    an :class:`InMemoryImages` of uint8 ``(n, 1, 64, 64)`` with the digits' labels, and ``boxes (n, 4)`` as
    ``[x0, y0, x1, y1]`` in pixels (x1, y1 exclusive). ``return_parts`` adds the digit-only canvases and each
    canvas's fragment positions ``(n, fragments, 2)`` (for tests)."""
    check_number("n", n, low=1, integer=True)
    if not isinstance(digits, InMemoryImages) or digits.images.shape[1] != 1:
        raise TypeError("digits must be a one-channel InMemoryImages split, such as data.load_mnist(root)[0].")
    _check_spec(spec, digits)
    g = torch.Generator().manual_seed(seed)
    C = spec.canvas
    canvases = torch.zeros(n, 1, C, C, dtype=torch.uint8)
    digit_only = torch.zeros_like(canvases) if return_parts else None
    boxes, places = torch.zeros(n, 4, dtype=torch.long), torch.zeros(n, spec.fragments, 2, dtype=torch.long)
    picks = torch.randint(len(digits), (n,), generator=g)
    sides = torch.randint(spec.min_side, spec.max_side + 1, (n,), generator=g)
    corners = (torch.rand(n, 2, generator=g) * (C - sides[:, None] + 1)).long()  # the digit fits the canvas
    scaled = _rescaled(digits.images[picks, 0], sides)
    rng = random.Random(seed)  # the fragments' many small draws: Python's generator is far cheaper per call
    for i in range(n):
        side, (x, y) = int(sides[i]), corners[i].tolist()
        canvases[i, 0, y:y + side, x:x + side] = scaled[i]
        if digit_only is not None:
            digit_only[i, 0, y:y + side, x:x + side] = scaled[i]
        boxes[i] = _ink_box(canvases[i, 0], spec.ink)
        for k in range(spec.fragments):
            xy = _place_fragment(canvases[i, 0], digits, boxes[i], int(picks[i]), spec, rng)
            places[i, k] = torch.tensor(xy)
    labels = digits.labels[picks]
    images = InMemoryImages(canvases, labels, digits.classes, source=f"cluttered MNIST (seed {seed}) from "
                                                                           f"{digits.source}")
    return (images, boxes, digit_only, places) if return_parts else (images, boxes)


def _rescaled(images: torch.Tensor, sides: torch.Tensor) -> list[torch.Tensor]:
    """Each uint8 image ``(28, 28)`` bilinearly resized (antialiased) to its side, batched per side for speed."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(images)
    for side in sides.unique().tolist():
        idx = (sides == side).nonzero()[:, 0]
        resized = F.interpolate(images[idx].float()[:, None], size=(side, side), mode="bilinear",
                                align_corners=False, antialias=True)[:, 0].round().clamp(0, 255).to(torch.uint8)
        for j, i in enumerate(idx.tolist()):
            out[i] = resized[j]
    return out


_ATTEMPTS = 10_000  # random draws for one fragment; each succeeds with odds far above 1 / 100 for sane specs


def _check_spec(spec: ClutterSpec, digits: InMemoryImages) -> None:
    """Parameters that no canvas can satisfy, refused arithmetically before any is drawn (each draw below is then
    bounded too)."""
    if not isinstance(spec, ClutterSpec):
        raise TypeError(f"spec must be a ClutterSpec, got {type(spec).__name__}.")
    side = digits.images.shape[-1]
    for name in ("canvas", "min_side", "max_side", "fragment"):
        check_number(f"spec.{name}", getattr(spec, name), low=1, integer=True)
    check_number("spec.fragments", spec.fragments, low=0, integer=True)
    check_number("spec.ink", spec.ink, low=0, high=254, integer=True, hint="Ink is a pixel value of 0..255.")
    check_number("spec.max_overlap", spec.max_overlap, low=0, high=1,
                 hint="It is the share of a fragment's area allowed inside the digit's box.")
    if spec.min_side > spec.max_side:
        raise ValueError(f"spec.min_side={spec.min_side} is larger than spec.max_side={spec.max_side}.")
    if spec.max_side > spec.canvas:
        raise ValueError(f"spec.max_side={spec.max_side} does not fit spec.canvas={spec.canvas}; use a canvas at least "
                         "as large as the largest digit.")
    if spec.fragment > side:
        raise ValueError(f"spec.fragment={spec.fragment} is larger than the {side}x{side} source digits it is cut from.")
    if spec.fragments and len(digits) < 2:
        raise ValueError(f"the source split has {len(digits)} image(s); clutter is cut from other digits, so it needs "
                         "at least 2 (or spec.fragments=0).")
    if spec.fragments and spec.max_overlap < 1 and spec.canvas - spec.max_side < spec.fragment:
        # the digit's box can cover the canvas so that no fragment position leaves it by the required share
        free = spec.canvas - spec.max_side
        raise ValueError(f"spec.canvas={spec.canvas} leaves {free} px beside a {spec.max_side}-px digit, fewer than "
                         f"a {spec.fragment}-px fragment needs to stay out of its box (max_overlap="
                         f"{spec.max_overlap}); use a larger canvas, smaller digits or fragments, or max_overlap=1.")


def _place_fragment(canvas: torch.Tensor, digits: InMemoryImages, box: torch.Tensor, own: int, spec: ClutterSpec,
                    rng: random.Random) -> tuple[int, int]:
    """Paste one 8x8 piece of another digit (with some ink) where it overlaps ``box`` by at most the allowed share;
    returns its (x, y)."""
    fs, C = spec.fragment, spec.canvas
    for _ in range(_ATTEMPTS):
        other = rng.randrange(len(digits))
        if other == own:
            continue
        ox, oy = rng.randrange(28 - fs + 1), rng.randrange(28 - fs + 1)
        piece = digits.images[other, 0, oy:oy + fs, ox:ox + fs]
        if (piece > spec.ink).sum() < fs:  # an empty corner is no clutter
            continue
        x, y = rng.randrange(C - fs + 1), rng.randrange(C - fs + 1)
        if _overlap(box, x, y, fs) <= spec.max_overlap * fs * fs:
            region = canvas[y:y + fs, x:x + fs]
            canvas[y:y + fs, x:x + fs] = torch.maximum(region, piece)  # ink over ink: both stay visible
            return x, y
    raise ValueError(f"no clutter fragment found after {_ATTEMPTS} random draws: the source digits have too little "
                     f"ink above spec.ink={spec.ink} in {fs}x{fs} pieces, or the box leaves no room; lower spec.ink or "
                     "spec.fragment, or raise spec.max_overlap.")


def _check_maps(maps: torch.Tensor) -> None:
    """(B, h, w) maps, each with a finite value in every cell (a NaN would hide the real peak)."""
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        raise ValueError(f"maps must be (B, h, w), got {tuple(maps.shape) if isinstance(maps, torch.Tensor) else maps}.")
    bad = (~torch.isfinite(maps.float())).flatten(1).any(dim=1).nonzero()[:, 0].tolist()
    if bad:
        raise ValueError(f"maps {bad[:10]}{'...' if len(bad) > 10 else ''} hold NaN or infinite values; a map with no "
                         "finite peak points nowhere. Check the explainer's output for those images (e.g. a zero "
                         "gradient normalised by zero).")


def _check_maps_boxes(maps: torch.Tensor, boxes: torch.Tensor, image_size: int) -> None:
    _check_maps(maps)
    check_number("image_size", image_size, low=1, integer=True)
    if not isinstance(boxes, torch.Tensor) or boxes.shape != (len(maps), 4):
        raise ValueError(f"boxes must be ({len(maps)}, 4) as [x0, y0, x1, y1], one per map.")
    b = boxes.long()
    bad = ((b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > image_size) | (b[:, 3] > image_size)
           | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).nonzero()[:, 0].tolist()
    if bad:
        raise ValueError(f"boxes {bad[:10]} are empty, inverted or outside the {image_size}x{image_size} image (e.g. "
                         f"{boxes[bad[0]].tolist()}); a box is [x0, y0, x1, y1] with 0 <= x0 < x1 <= {image_size}.")


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, image_size: int,
                  offset: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Per map, whether the centre of its highest cell (at the map's own grid; ties go to the first cell in
    row-major order) lies inside the true box (x1, y1 exclusive). ``(B,)`` bool. ``offset``: (rows, columns) in
    pixels to move that point by, e.g. to where a convolutional stem centres the cell's token."""
    _check_maps_boxes(maps, boxes, image_size)
    B, h, w = maps.shape
    flat = maps.reshape(B, -1).float()
    top = (flat == flat.amax(dim=1, keepdim=True)).float().argmax(dim=1)  # the first of the highest cells
    r, c = top // w, top % w
    cx = (c.float() + 0.5) * image_size / w + offset[1]
    cy = (r.float() + 0.5) * image_size / h + offset[0]
    b = boxes.float()
    return (b[:, 0] <= cx) & (cx < b[:, 2]) & (b[:, 1] <= cy) & (cy < b[:, 3])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boxes ``(B, 4)`` ``[x0, y0, x1, y1]`` (x1, y1 exclusive), pairwise by row."""
    a, b = a.float(), b.float()
    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def box_from_map(maps: torch.Tensor, image_size: int, fraction: float) -> torch.Tensor:
    """Per map, the box of the largest 8-connected region of the map, bilinearly upsampled to the image and scaled to
    [0, 1] from its minimum to its maximum (as the plots show it), at or above ``fraction``: ``(B, 4)``
    ``[x0, y0, x1, y1]``."""
    check_number("fraction", fraction, low=0, high=1, high_open=True)
    check_number("image_size", image_size, low=1, integer=True)
    _check_maps(maps)
    up = F.interpolate(maps.float()[:, None], size=(image_size, image_size), mode="bilinear",
                       align_corners=False)[:, 0]
    lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    mask = up >= lo + fraction * (hi - lo)  # at least the maximum itself: never empty
    return _largest_region_boxes(mask.numpy())


def _largest_region_boxes(masks: np.ndarray) -> torch.Tensor:
    """Per boolean mask ``(H, W)``, the tight box of its largest 8-connected region (ties: the first in row-major
    order), labelled by ``scipy.ndimage.label``."""
    from scipy import ndimage

    eight = np.ones((3, 3), dtype=bool)
    out = torch.zeros(len(masks), 4, dtype=torch.long)
    for i, mask in enumerate(masks):
        labels, _ = ndimage.label(mask, structure=eight)
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0  # background
        out[i] = _ink_box(torch.from_numpy(labels == sizes.argmax()), 0)
    return out


def box_accuracy(maps: torch.Tensor, boxes: torch.Tensor, image_size: int, fraction: float) -> torch.Tensor:
    """Per map, whether :func:`box_from_map` has IoU >= 0.5 with the true box. ``(B,)`` bool."""
    _check_maps_boxes(maps, boxes, image_size)
    return box_iou(box_from_map(maps, image_size, fraction), boxes) >= 0.5
