"""The dataset fingerprint: what the training plan is derived from (nnU-Net's lesson).

Per sample, convert measures each class's objects once, on the full-resolution mask
(`object_stats`: connected components, their area and thickness). `fingerprint` aggregates
them over the dataset: image sizes, and per class the images, pixel share, typical object
area and thickness, and how much object sizes vary in absolute pixels versus relative to
their image. It is written to reports/data.json; learn/plan.py reads it.

Thickness of a component = 2 x (the largest distance from one of its pixels to a pixel
outside it) - 1: its width in pixels where it is widest, 1 for a hairline crack, 3 for a
3 px bar, 21 for a disc of radius 10 (the diameter of its largest inscribed disc).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: 8-connectivity: diagonal neighbours belong to one object (a 1 px diagonal line is one line)
_CONNECTIVITY = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class ObjectStats:
    """One class in one mask: its connected components."""

    objects: int
    median_area: float  # pixels
    median_thickness: float  # pixels (see the module docstring)


@dataclass(frozen=True)
class ClassPrint:
    images: int  # samples that contain the class
    pixel_share: float  # of all labelled pixels
    objects: int
    area: float  # median object area (px), over all objects
    thickness: float  # median object thickness (px)
    relative_area: float  # median object area / its image's area
    area_spread: float  # IQR of log2(per-image median area): how much sizes vary in pixels
    relative_spread: float  # the same for the area relative to the image


@dataclass(frozen=True)
class Fingerprint:
    images: int
    long_side: tuple[float, float, float]  # 10th percentile, median, 90th percentile (px)
    short_side: tuple[float, float, float]
    size_spread: float  # IQR of log2(long side)
    classes: dict[str, ClassPrint]  # foreground classes with at least one object

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> Fingerprint:
        classes = {name: ClassPrint(**values)  # type: ignore[arg-type]
                   for name, values in dict(raw["classes"]).items()}  # type: ignore[call-overload]
        return cls(images=int(raw["images"]),  # type: ignore[call-overload]
                   long_side=tuple(raw["long_side"]),  # type: ignore[arg-type]
                   short_side=tuple(raw["short_side"]),  # type: ignore[arg-type]
                   size_spread=float(raw["size_spread"]),  # type: ignore[arg-type]
                   classes=classes)


def object_stats(mask: np.ndarray, n_classes: int) -> dict[int, ObjectStats]:
    """The objects of every foreground class (1 .. n_classes-1) present in a class-index mask.

    Each component's distance transform is computed in its own bounding box (padded by one
    pixel, so the image border counts as outside): cost follows the objects, not the image."""
    from scipy import ndimage  # imported here: only convert's workers measure masks

    stats = {}
    for value in range(1, n_classes):
        labels, n = ndimage.label(mask == value, structure=_CONNECTIVITY)
        if n == 0:
            continue
        areas, thickness = [], []
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            inside = np.pad(labels[box] == k, 1)
            areas.append(int(inside.sum()))
            thickness.append(2.0 * float(ndimage.distance_transform_edt(inside).max()) - 1.0)
        stats[value] = ObjectStats(n, float(np.median(areas)), round(float(np.median(thickness)),
                                                                     3))
    return stats


def fingerprint(sizes: Sequence[tuple[int, int]], stats: Sequence[Mapping[int, ObjectStats]],
                pixels: Mapping[str, int], classes: Sequence[str]) -> Fingerprint:
    """Aggregate per-sample sizes (width, height) and object stats (one mapping per sample,
    class index -> stats) into the dataset fingerprint. `pixels`: labelled pixels per class."""
    long = np.array([max(w, h) for w, h in sizes], dtype=float)
    short = np.array([min(w, h) for w, h in sizes], dtype=float)
    labelled = sum(pixels.values()) or 1
    prints = {}
    for value, name in enumerate(classes):
        if value == 0:
            continue
        per = [(s[value], w * h) for s, (w, h) in zip(stats, sizes, strict=True) if value in s]
        if not per:
            continue
        weights = np.array([p.objects for p, _ in per], dtype=float)
        areas = np.array([p.median_area for p, _ in per])
        relative = np.array([p.median_area / area for p, area in per])
        prints[name] = ClassPrint(
            images=len(per), pixel_share=round(pixels.get(name, 0) / labelled, 6),
            objects=int(weights.sum()),
            area=round(_weighted_median(areas, weights), 3),
            thickness=round(_weighted_median(np.array([p.median_thickness for p, _ in per]),
                                             weights), 3),
            relative_area=round(_weighted_median(relative, weights), 8),
            area_spread=round(_iqr(np.log2(areas)), 4),
            relative_spread=round(_iqr(np.log2(relative)), 4))
    return Fingerprint(images=len(sizes), long_side=_percentiles(long),
                       short_side=_percentiles(short),
                       size_spread=round(_iqr(np.log2(long)) if len(long) else 0.0, 4),
                       classes=prints)


def _percentiles(values: np.ndarray) -> tuple[float, float, float]:
    if not len(values):
        return (0.0, 0.0, 0.0)
    low, mid, high = np.percentile(values, [10, 50, 90])
    return (float(low), float(mid), float(high))


def _iqr(values: np.ndarray) -> float:
    if len(values) < 2:
        return 0.0
    low, high = np.percentile(values, [25, 75])
    return float(high - low)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value at half the total weight (the lower one at an exact tie)."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    index = int(np.searchsorted(cumulative, cumulative[-1] / 2.0))
    value = float(values[order][min(index, len(values) - 1)])
    return value if math.isfinite(value) else 0.0
