"""How much of a change of mIoU could be the eval set's luck: a bootstrap over its images.

IoU is a ratio of sums (intersection / union, each summed over the eval set), so it is not a
mean of per-image scores, and neighbouring frames of one scene are not independent. The
bootstrap therefore resamples whole split groups (with replacement, as many as there are),
sums their per-class counts and recomputes each IoU and the mIoU exactly as evaluate does
(NaN where a class has no union, left out of the mean). When both runs were measured on the
same images the resample is *paired*: the same groups drawn for both, so only the change the
model made varies, not the images. Otherwise each run's groups are drawn on their own.

The percentile interval of the change, at `confidence`, is what the gate reads. Pure: arrays
in, intervals out; the same seed gives the same intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.tools.runs import ImageCounts

_CHUNK = 250  # resamples drawn at once: bounds memory to chunk x groups weights


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Bootstrap:
    """Intervals of the change (new - base) of mIoU, mIoU without background, each class."""

    paired: bool
    groups: int  # split groups resampled (of the new run when unpaired)
    images: int
    resamples: int
    confidence: float
    seed: int
    miou: Interval | None  # None: undefined in every resample
    miou_fg: Interval | None
    iou: Mapping[str, Interval | None]  # the classes both runs have

    def describe(self) -> str:
        kind = "paired" if self.paired else "unpaired (different images)"
        return (f"{100 * self.confidence:g}% interval: {kind} bootstrap over {self.groups} split "
                f"groups ({self.images} images), {self.resamples} resamples, seed {self.seed}")


def group_sums(counts: ImageCounts, groups: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(groups, classes) intersection and union summed over each group's images; `groups`
    gives the group of each image (in counts.ids order)."""
    names, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    inter = np.zeros((len(names), len(counts.classes)), dtype=np.float64)
    union = np.zeros_like(inter)
    np.add.at(inter, index, counts.intersection)
    np.add.at(union, index, counts.union)
    return inter, union


def scores(inter: np.ndarray, union: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row (a resample): IoU per class (NaN where the union is 0), mIoU and mIoU without
    class 0 (NaN when no class is defined), as learn/metrics.py computes them."""
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return iou, _nanmean(iou), _nanmean(iou[:, 1:])


def _nanmean(values: np.ndarray) -> np.ndarray:
    # by hand: np.nanmean warns on an all-NaN row, which here is a legitimate outcome
    valid = ~np.isnan(values)
    total = np.where(valid, values, 0.0).sum(axis=1)
    n = valid.sum(axis=1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _interval(values: np.ndarray, confidence: float) -> Interval | None:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def _weights(rng: np.random.Generator, n_groups: int, size: int) -> np.ndarray:
    """How often each group is drawn in each of `size` resamples of n_groups draws (a
    multinomial count is the same as drawing with replacement, in size x groups memory)."""
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=size).astype(
        np.float64)


def bootstrap_change(base: ImageCounts, new: ImageCounts, *, resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> Bootstrap:
    """Intervals of new - base for mIoU, mIoU fg and each shared class, resampling split
    groups; paired when both count the same images (then the new run's groups are used for
    both)."""
    paired = base.ids == new.ids
    new_inter, new_union = group_sums(new, new.groups)
    base_inter, base_union = group_sums(base, new.groups if paired else base.groups)
    shared = [c for c in new.classes if c in base.classes]
    b_cols = [base.classes.index(c) for c in shared]
    n_cols = [new.classes.index(c) for c in shared]
    rng = np.random.default_rng(seed)
    deltas: list[np.ndarray] = []  # per chunk: (chunk, 2 + shared classes)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        w_new = _weights(rng, len(new_inter), size)
        w_base = w_new if paired else _weights(rng, len(base_inter), size)
        b_iou, b_miou, b_fg = scores(w_base @ base_inter, w_base @ base_union)
        n_iou, n_miou, n_fg = scores(w_new @ new_inter, w_new @ new_union)
        deltas.append(np.column_stack([n_miou - b_miou, n_fg - b_fg,
                                       n_iou[:, n_cols] - b_iou[:, b_cols]]))
    table = np.concatenate(deltas)
    return Bootstrap(paired=paired, groups=len(new_inter), images=len(new.ids),
                     resamples=resamples, confidence=confidence, seed=seed,
                     miou=_interval(table[:, 0], confidence),
                     miou_fg=_interval(table[:, 1], confidence),
                     iou={c: _interval(table[:, 2 + k], confidence)
                          for k, c in enumerate(shared)})
