"""Segmentation losses; all of them skip pixels whose target is 255 ("ignore").

    loss_fn = make_loss("ce_dice", n_classes, class_weights)
    loss = loss_fn(logits, target)      # logits N x C x H x W, target N x H x W int64
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from pipeline.core.records import IGNORE
from pipeline.params import LOSSES

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored pixels (weighted mean with class weights).

    Same value as `F.cross_entropy(..., ignore_index=255)`, but 0 (not NaN) for a batch whose
    pixels are all ignored.
    """
    per_pixel = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE,
                                reduction="none")
    valid = target != IGNORE
    per_weight = valid.float() if weight is None else weight[torch.where(valid, target, 0)] * valid
    denom = per_weight.sum()
    return per_pixel.sum() / denom.clamp_min(1e-12)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice averaged over the classes.

    Soft Dice per class over all non-ignored pixels of the batch:
    (2 * sum(p * t) + eps) / (sum(p) + sum(t) + eps), with p the softmax probability and t the
    one-hot target; ignored pixels count for neither. The smoothing `eps` makes a class that is
    absent from both target and prediction score ~1 instead of 0/0.
    """
    n_classes = logits.shape[1]
    valid = target != IGNORE
    probs = logits.float().softmax(dim=1) * valid.unsqueeze(1)
    onehot = F.one_hot(torch.where(valid, target, 0), n_classes).permute(0, 3, 1, 2)
    onehot = onehot * valid.unsqueeze(1)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * inter + eps) / (total + eps)
    return 1.0 - dice.mean()


def make_loss(name: str, n_classes: int,
              class_weights: Sequence[float] | None = None,
              device: torch.device | str = "cpu") -> LossFn:
    """"ce", "dice" or "ce_dice" (their sum, as in the seed U-Nets)."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    weight = None
    if class_weights is not None:
        if len(class_weights) != n_classes:
            raise ValueError(f"class_weights must have one weight per class ({n_classes}), "
                             f"got {len(class_weights)}")
        weight = torch.tensor(list(class_weights), dtype=torch.float32, device=device)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if name == "ce":
            return cross_entropy(logits, target, weight)
        if name == "dice":
            return dice_loss(logits, target)
        return cross_entropy(logits, target, weight) + dice_loss(logits, target)

    return loss
