"""Exact metric values on hand-made arrays, and a cross-check against torchmetrics."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from pipeline.learn.metrics import SegMetrics, confusion_matrix, mean_iou, segmentation_metrics

CLASSES = ("background", "cat", "dog", "bird")


def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    # two ignore pixels (255) whose predictions (2 and 0) must not count; bird is absent
    # from both the ground truth and the prediction.
    gt = torch.tensor([[0, 0, 0, 1], [1, 2, 255, 255]], dtype=torch.uint8)
    pred = torch.tensor([[0, 0, 1, 1], [1, 1, 2, 0]], dtype=torch.int64)
    return gt, pred


def test_confusion_matrix_counts_pixels_and_skips_ignore() -> None:
    gt, pred = _tiny()
    cm = confusion_matrix(gt, pred, 4)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [
        [2, 1, 0, 0],
        [0, 2, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 0],
    ]


def test_metrics_exact_values_with_absent_class_nan() -> None:
    gt, pred = _tiny()
    m = segmentation_metrics(confusion_matrix(gt, pred, 4), CLASSES)
    assert m.support == (3, 2, 1, 0)
    assert m.n_pixels == 6
    assert m.iou[:3] == pytest.approx((2 / 3, 1 / 2, 0.0))
    assert math.isnan(m.iou[3])
    assert m.dice[:3] == pytest.approx((4 / 5, 2 / 3, 0.0))
    assert math.isnan(m.dice[3])
    # dog is never predicted: precision undefined; bird: both undefined
    assert m.precision[:2] == pytest.approx((1.0, 0.5))
    assert math.isnan(m.precision[2]) and math.isnan(m.precision[3])
    assert m.recall[:3] == pytest.approx((2 / 3, 1.0, 0.0))
    assert math.isnan(m.recall[3])
    assert m.aacc == pytest.approx(4 / 6)
    assert m.miou == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)  # bird left out of the mean
    assert m.miou_fg == pytest.approx((1 / 2 + 0) / 2)  # background and bird left out
    assert m.confusion[0] == (2, 1, 0, 0)
    assert m.per_class()[1] == {"class": "cat", "iou": 0.5, "dice": pytest.approx(2 / 3),
                                "precision": 0.5, "recall": 1.0, "support": 2}


def test_predicted_but_absent_class_counts_as_zero() -> None:
    gt = torch.tensor([0, 0])
    pred = torch.tensor([0, 1])
    m = segmentation_metrics(confusion_matrix(gt, pred, 3), ("background", "a", "b"))
    assert m.iou[:2] == (0.5, 0.0)
    assert math.isnan(m.iou[2])
    assert m.miou == 0.25
    assert m.miou_fg == 0.0
    assert mean_iou(confusion_matrix(gt, pred, 3)) == 0.25


def test_all_ignore_gives_nan_not_an_error() -> None:
    gt = torch.full((3, 3), 255, dtype=torch.uint8)
    pred = torch.zeros((3, 3), dtype=torch.int64)
    m = segmentation_metrics(confusion_matrix(gt, pred, 2), ("background", "a"))
    assert m.support == (0, 0)
    assert math.isnan(m.aacc) and math.isnan(m.miou) and math.isnan(m.miou_fg)


def test_accumulating_batches_equals_one_pass() -> None:
    gen = torch.Generator().manual_seed(1)
    gt = torch.randint(0, 5, (4, 9, 7), generator=gen)
    pred = torch.randint(0, 5, (4, 9, 7), generator=gen)
    total = torch.zeros(5, 5, dtype=torch.int64)
    for i in range(4):
        total += confusion_matrix(gt[i], pred[i], 5)
    assert torch.equal(total, confusion_matrix(gt, pred, 5))


def test_bad_values_and_shapes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"must be in \[0, 4\) or 255 \(ignore\), got \[7\]"):
        confusion_matrix(torch.tensor([0, 7, 255]), torch.tensor([0, 1, 9]), 4)
    with pytest.raises(ValueError, match=r"got \[9\]"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 9]), 4)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="integer tensors"):
        confusion_matrix(torch.zeros(2), torch.zeros(2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="must be 4 x 4"):
        segmentation_metrics(torch.zeros(3, 3, dtype=torch.long), CLASSES)


def test_result_is_frozen() -> None:
    m = segmentation_metrics(torch.eye(2, dtype=torch.long), ("background", "a"))
    assert isinstance(m, SegMetrics)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.miou = 0.0  # type: ignore[misc]


def test_matches_torchmetrics_jaccard_on_random_data() -> None:
    n = 6
    gen = torch.Generator().manual_seed(0)
    per_class = MulticlassJaccardIndex(num_classes=n, average=None, ignore_index=255)
    macro = MulticlassJaccardIndex(num_classes=n, average="macro", ignore_index=255)
    total = torch.zeros(n, n, dtype=torch.int64)
    for _ in range(3):
        # class 5 never occurs in either tensor; about 10 % of the pixels are ignored
        gt = torch.randint(0, n - 1, (2, 16, 16), generator=gen)
        pred = torch.randint(0, n - 1, (2, 16, 16), generator=gen)
        # make the prediction better than chance so IoUs differ per class
        agree = torch.rand(gt.shape, generator=gen) < 0.5
        pred = torch.where(agree, gt, pred)
        gt[torch.rand(gt.shape, generator=gen) < 0.1] = 255
        per_class.update(pred, gt)
        macro.update(pred, gt)
        total += confusion_matrix(gt, pred, n)
    m = segmentation_metrics(total, [f"c{i}" for i in range(n)])
    expected = per_class.compute().tolist()
    # torchmetrics reports an absent class as 0 (zero_division); we report NaN
    assert expected[5] == 0.0 and math.isnan(m.iou[5])
    assert m.iou[:5] == pytest.approx(expected[:5], abs=1e-6)
    # its macro average drops classes absent from both, as our nanmean does
    assert m.miou == pytest.approx(float(macro.compute()), abs=1e-6)
    assert m.miou_fg == pytest.approx(sum(expected[1:5]) / 4, abs=1e-6)
