"""learn/inference.py: the sliding window, its blending, banded upsampling, predict_mask."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.learn import tiny_plan
from torch import nn

from pipeline.learn.inference import (
    full_logits,
    logit_bands,
    predict_mask,
    tile_starts,
    tile_weight,
    upsample_bands,
)
from pipeline.learn.model import ModelInfo, UNetConfig

CPU = torch.device("cpu")


class Local(nn.Module):
    """A model whose output at a pixel depends on that pixel only (a 1 x 1 convolution)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Neighbourhood(nn.Module):
    """Two 3 x 3 convolutions with zero padding: each output sees a 5 x 5 neighbourhood, so a
    tile's outermost 2 px differ from the whole-image result."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(),
                                 nn.Conv2d(4, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _whole(model: nn.Module, image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return model(x)[0]


def test_tiles_cover_the_axis_with_half_overlap() -> None:
    assert tile_starts(10, 16) == [0]
    assert tile_starts(16, 16) == [0]
    assert tile_starts(40, 16) == [0, 8, 16, 24]
    assert tile_starts(45, 16) == [0, 8, 16, 24, 29]  # the last one flush with the end
    weight = tile_weight(16, CPU)
    assert float(weight.max()) == 1.0 and float(weight.min()) >= 1e-3
    assert torch.equal(weight, weight.flip(0)) and torch.equal(weight, weight.T)


def test_sliding_window_equals_whole_image_for_a_local_model() -> None:
    model, image = Local().eval(), _image(45, 70)
    blended = full_logits(model, image, 16, CPU, batch_size=3)
    torch.testing.assert_close(blended, _whole(model, image), atol=1e-5, rtol=0)
    # bands come out top to bottom, none taller than a patch: memory follows the patch
    bands = list(logit_bands(model, image, 16, CPU))
    assert [row for row, _ in bands] == [0, 8, 16, 24, 29]
    assert max(band.shape[1] for _, band in bands) <= 16
    assert sum(band.shape[1] for _, band in bands) == 45


def test_blending_leaves_no_seam() -> None:
    """Sliding = sum_t w_t f_t / sum_t w_t; whole = f. Only tiles in which a pixel lies
    within 2 px of the tile border (its 5 x 5 neighbourhood cut by the border) differ, so
    |sliding - whole| <= (their share of the weight) x max_t |f_t - f|. With half-tile
    overlap every pixel is within 4 px of some tile's centre (weight >= exp(-2) = 0.135)
    while a pixel within 2 px of a border has weight <= exp(-4.5) = 0.011: the share is
    below 8%, so the blended result may differ from the whole image by at most that share
    of the tiles' own border errors: no seam."""
    model, image = Neighbourhood().eval(), _image(48, 64, seed=1)
    whole = _whole(model, image)
    blended = full_logits(model, image, 16, CPU)
    # the tiles' own error at their borders (what a hard stitch would show as a seam)
    tile = _whole(model, image[8:24, 8:24])
    seam = float((tile - whole[:, 8:24, 8:24]).abs().max())
    assert seam > 0.05  # the model's tiles do differ at their borders
    inner = (blended - whole)[:, 2:-2, 2:-2].abs()  # the image border is zero-padded anyway
    assert float(inner.max()) <= 0.08 * seam
    # and the error is no larger on tile-border lines than it is between them
    border_rows = inner[:, [r - 2 for r in (8, 16, 24, 32, 40) if 2 <= r - 2 < inner.shape[1]]]
    assert float(border_rows.max()) <= 0.08 * seam


@pytest.mark.parametrize(("source", "size"), [((16, 20), (45, 61)), ((30, 40), (30, 40)),
                                               ((40, 50), (17, 23)), ((7, 9), (64, 90))])
def test_banded_upsampling_equals_one_interpolation(source: tuple[int, int],
                                                    size: tuple[int, int]) -> None:
    logits = torch.randn(3, *source, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    cuts = [0, 3, 4, 9, source[0]]
    bands = ((a, logits[:, a:b]) for a, b in itertools.pairwise(cuts) if b > a)
    rows = list(upsample_bands(bands, source, size))
    assert [r for r, _ in rows] == sorted(r for r, _ in rows)
    got = torch.cat([band for _, band in rows], dim=1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_predict_mask_returns_the_original_size() -> None:
    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], 3, *x.shape[2:])
            out[:, 2] = 1.0
            return out

    plan = tiny_plan(scale=0.37, patch=16)
    info = ModelInfo(UNetConfig(n_classes=3, depth=2, base_width=4), ("a", "b", "c"), "fp",
                     plan)
    image = _image(101, 77)
    mask = predict_mask(Constant(), info, image, CPU)
    assert mask.shape == (101, 77) and mask.dtype == np.uint8
    assert (mask == 2).all()
    local = Local().eval()
    relative = ModelInfo(info.config, info.classes, "fp", tiny_plan(scale=1.0, patch=16))
    expected = _whole(local, image).argmax(0).numpy()
    np.testing.assert_array_equal(predict_mask(local, relative, image, CPU), expected)
