"""Segmentation metrics from one confusion matrix accumulated over the whole eval set.

Pure functions on torch tensors (they run on whatever device the inputs live on):

    cm = torch.zeros(n, n, dtype=torch.int64, device=device)
    for gt, pred in batches:
        cm += confusion_matrix(gt, pred, n)          # rows = ground truth, columns = prediction
    result = segmentation_metrics(cm, classes)        # SegMetrics, plain Python numbers

Conventions (MMSegmentation's): pixels whose ground truth is 255 ("ignore") are left out;
IoU = TP / (TP + FP + FN); a class absent from both the ground truth and the prediction has
IoU NaN and is left out of the mean (mIoU = nanmean). A class that is predicted but absent
from the ground truth has IoU 0 and counts. `miou_fg` is the same mean without class 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipeline.core.records import IGNORE


@dataclass(frozen=True)
class SegMetrics:
    """Everything evaluate reports; per-class tuples follow `classes` order. NaN = undefined."""

    classes: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]  # [gt][pred] pixel counts (ignore pixels excluded)
    iou: tuple[float, ...]
    dice: tuple[float, ...]
    precision: tuple[float, ...]  # TP / (TP + FP): NaN when the class is never predicted
    recall: tuple[float, ...]  # TP / (TP + FN): NaN when the class is absent from the GT
    support: tuple[int, ...]  # ground-truth pixels per class
    aacc: float  # all-pixel accuracy: trace / total
    miou: float
    miou_fg: float  # mIoU without class 0 (the background)

    @property
    def n_pixels(self) -> int:
        return sum(self.support)

    def per_class(self) -> list[dict[str, float | int | str]]:
        """One row per class: class, iou, dice, precision, recall, support."""
        return [
            {"class": name, "iou": self.iou[i], "dice": self.dice[i],
             "precision": self.precision[i], "recall": self.recall[i],
             "support": self.support[i]}
            for i, name in enumerate(self.classes)
        ]


def confusion_matrix(
    gt: torch.Tensor, pred: torch.Tensor, n_classes: int, ignore_index: int = IGNORE
) -> torch.Tensor:
    """(n_classes, n_classes) int64 pixel counts, rows = ground truth, columns = prediction.

    `gt` and `pred` are integer tensors of the same shape (any shape, e.g. N x H x W) on the
    same device; the result lives there too. Ground-truth pixels equal to `ignore_index` are
    skipped. Any other value outside [0, n_classes) in either tensor is a ValueError.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same shape, got {tuple(gt.shape)} "
                         f"and {tuple(pred.shape)}")
    if gt.is_floating_point() or pred.is_floating_point():
        raise ValueError(f"gt and pred must be integer tensors, got {gt.dtype} and {pred.dtype}")
    gt = gt.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = gt != ignore_index
    gt, pred = gt[keep], pred[keep]
    bad_gt = (gt < 0) | (gt >= n_classes)
    bad_pred = (pred < 0) | (pred >= n_classes)
    if bool(bad_gt.any()) or bool(bad_pred.any()):
        values = torch.unique(torch.cat([gt[bad_gt], pred[bad_pred]])).tolist()
        raise ValueError(f"class values must be in [0, {n_classes}) or {ignore_index} (ignore), "
                         f"got {values[:10]}")
    counts = torch.bincount(n_classes * gt + pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def segmentation_metrics(confusion: torch.Tensor, classes: Sequence[str]) -> SegMetrics:
    """Per-class IoU, Dice, precision, recall, support, aAcc, mIoU and mIoU without class 0."""
    n = len(classes)
    if tuple(confusion.shape) != (n, n):
        raise ValueError(f"confusion must be {n} x {n} for {n} classes, "
                         f"got {tuple(confusion.shape)}")
    cm = confusion.detach().to("cpu", torch.float64)
    tp = torch.diagonal(cm)
    gt_total = cm.sum(dim=1)  # TP + FN
    pred_total = cm.sum(dim=0)  # TP + FP
    iou = _divide(tp, gt_total + pred_total - tp)
    dice = _divide(2 * tp, gt_total + pred_total)
    total = cm.sum()
    aacc = float(tp.sum() / total) if total > 0 else math.nan
    return SegMetrics(
        classes=tuple(classes),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion.detach().cpu().tolist()),
        iou=_floats(iou),
        dice=_floats(dice),
        precision=_floats(_divide(tp, pred_total)),
        recall=_floats(_divide(tp, gt_total)),
        support=tuple(int(v) for v in gt_total.tolist()),
        aacc=aacc,
        miou=_nanmean(iou),
        miou_fg=_nanmean(iou[1:]),
    )


def mean_iou(confusion: torch.Tensor) -> float:
    """mIoU alone (same conventions), e.g. of one image's confusion matrix to rank images."""
    cm = confusion.detach().to("cpu", torch.float64)
    tp = torch.diagonal(cm)
    return _nanmean(_divide(tp, cm.sum(dim=1) + cm.sum(dim=0) - tp))


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with NaN where den == 0 (undefined, not zero)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, math.nan))


def _nanmean(values: torch.Tensor) -> float:
    if values.numel() == 0 or bool(torch.isnan(values).all()):
        return math.nan
    return float(torch.nanmean(values))


def _floats(values: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in values.tolist())
