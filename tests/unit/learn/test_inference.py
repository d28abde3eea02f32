"""learn/inference.py: fitting images to the model's size and back, the sample loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.records import IGNORE
from pipeline.learn.inference import Box, fit_box, fit_image, fit_mask, unfit_logits


def test_letterbox_keeps_aspect_and_fills_the_border_with_ignore() -> None:
    assert fit_box(28, 40, 20) == Box(top=3, left=0, height=14, width=20)
    assert fit_box(40, 28, 20) == Box(top=0, left=3, height=20, width=14)
    assert fit_box(28, 40, 20, "stretch") == Box(0, 0, 20, 20)
    mask = np.zeros((28, 40), np.uint8)
    mask[:, 20:] = 2
    fitted = fit_mask(mask, 20)
    assert fitted.shape == (20, 20) and fitted.dtype == np.uint8
    assert (fitted[:3] == IGNORE).all() and (fitted[17:] == IGNORE).all()
    assert (fitted[3:17, :10] == 0).all() and (fitted[3:17, 10:] == 2).all()
    image = np.full((28, 40, 3), 200, np.uint8)
    fitted_image = fit_image(image, 20)
    assert (fitted_image[:3] == 0).all() and (fitted_image[3:17] == 200).all()
    assert fit_image(image, 20, "stretch").min() == 200
    with pytest.raises(ValueError, match="resize must be one of"):
        fit_box(28, 40, 20, "crop")


def test_nearest_resize_keeps_mask_values_exact() -> None:
    rng = np.random.default_rng(1)
    mask = rng.choice(np.array([0, 1, 2, IGNORE], np.uint8), size=(37, 53))
    for size in (16, 24, 64):
        # nearest neighbour: output pixel i takes source pixel floor((i + 0.5) * src / size)
        rows = np.minimum(((np.arange(size) + 0.5) * 37 / size).astype(int), 36)
        cols = np.minimum(((np.arange(size) + 0.5) * 53 / size).astype(int), 52)
        np.testing.assert_array_equal(fit_mask(mask, size, "stretch"), mask[rows][:, cols])


def test_unfit_logits_maps_back_to_the_original_frame() -> None:
    logits = torch.zeros(1, 2, 20, 20)
    logits[:, 1, 3:17, 10:] = 5.0  # right half of the letterboxed 40x28 image
    back = unfit_logits(logits, 28, 40)
    assert back.shape == (1, 2, 28, 40)
    pred = back.argmax(1)[0]
    assert (pred[:, :19] == 0).all() and (pred[:, 21:] == 1).all()
