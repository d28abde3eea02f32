"""How the model sees an image, shared by training's cache, evaluate and predict.

    rgb, mask = read_pair(image_path, mask_path)                       # the one sample loader
    fitted = fit_image(rgb, info.image_size, info.resize)              # as in training
    for batch in prefetch_batches(items, load, batch_size, workers):   # decoded in threads
        preds = predict_batch(model, info, fitted_images, sizes, device)  # one H x W per image

Fitting images to the square training size: **letterbox** by default. The image is scaled
(bilinear, antialiased) so its longer side equals `size`, keeping its aspect ratio, and centred;
the border is filled with 0 in the image and 255 ("ignore") in the mask, so the loss and the
metrics never see it. `resize="stretch"` scales both sides to `size` instead. Masks are always
resized with nearest neighbour, so every value stays a class index or 255. The model's logits
are mapped back to the original frame and upsampled bilinearly (`unfit_logits`) before the
argmax, so predictions have each image's original size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.core.manifest import ManifestRow
from pipeline.core.records import IGNORE
from pipeline.learn.model import ModelInfo, UNet
from pipeline.params import RESIZE_MODES
from pipeline.storage.images import PIL_ERRORS, read_photo, read_rgb
from pipeline.storage.masks import read_mask

T = TypeVar("T")
R = TypeVar("R")


class SampleError(ValueError):
    """A prepared sample that cannot be used (unreadable, or mask and image sizes differ)."""


@dataclass(frozen=True)
class Box:
    """Where the resized image sits inside the square: rows top:top+height, cols left:left+width."""

    top: int
    left: int
    height: int
    width: int


def read_pair(image: Path, mask: Path, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A prepared sample: (H x W x 3 uint8 image, H x W uint8 mask). Raises SampleError
    naming the sample when a file cannot be read or the sizes differ."""
    try:
        rgb = read_rgb(image)
        labels = read_mask(mask)
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise SampleError(f"{sample_id}: {exc}") from None
    if rgb.shape[:2] != labels.shape:
        raise SampleError(f"{sample_id}: mask size {labels.shape[::-1]} must equal image size "
                          f"{rgb.shape[1::-1]}")
    return rgb, labels


def load_labelled(row: ManifestRow, root: Path, info: ModelInfo
                  ) -> tuple[np.ndarray, np.ndarray] | str:
    """(image fitted for the model, full-size mask) of a prepared sample, or why it cannot
    be used."""
    try:
        rgb, mask = read_pair(root / row.image, root / row.mask, row.id)
    except SampleError as exc:
        return str(exc)
    return fit_image(rgb, info.image_size, info.resize), mask


def load_photo(path: Path, info: ModelInfo) -> tuple[np.ndarray, np.ndarray] | str:
    """(the upright image, the image fitted for the model) of a user's photo, or why it
    cannot be read."""
    try:
        rgb = read_photo(path)
    except PIL_ERRORS as exc:
        return f"{path}: cannot read image: {exc}"
    return rgb, fit_image(rgb, info.image_size, info.resize)


# ---------------------------------------------------------------- fitting to the model's size


def fit_box(height: int, width: int, size: int, resize: str = "letterbox") -> Box:
    """Where an image of height x width lands in the size x size square."""
    if resize == "stretch":
        return Box(0, 0, size, size)
    if resize != "letterbox":
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    scale = size / max(height, width)
    h = min(size, max(1, round(height * scale)))
    w = min(size, max(1, round(width * scale)))
    return Box((size - h) // 2, (size - w) // 2, h, w)


def fit_image(rgb: np.ndarray, size: int, resize: str = "letterbox") -> np.ndarray:
    """H x W x 3 uint8 -> size x size x 3 uint8 (bilinear, antialiased; border 0)."""
    box = fit_box(rgb.shape[0], rgb.shape[1], size, resize)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    scaled = Image.fromarray(rgb).resize((box.width, box.height), Image.Resampling.BILINEAR)
    out[box.top:box.top + box.height, box.left:box.left + box.width] = np.asarray(scaled)
    return out


def fit_mask(mask: np.ndarray, size: int, resize: str = "letterbox") -> np.ndarray:
    """H x W uint8 class indices -> size x size uint8 (nearest neighbour; border 255)."""
    box = fit_box(mask.shape[0], mask.shape[1], size, resize)
    out = np.full((size, size), IGNORE, dtype=np.uint8)
    scaled = Image.fromarray(mask, mode="L").resize((box.width, box.height),
                                                    Image.Resampling.NEAREST)
    out[box.top:box.top + box.height, box.left:box.left + box.width] = np.asarray(scaled)
    return out


def unfit_logits(logits: torch.Tensor, height: int, width: int,
                 resize: str = "letterbox") -> torch.Tensor:
    """N x C x S x S logits of fitted images -> N x C x height x width in the original frame."""
    box = fit_box(height, width, logits.shape[-1], resize)
    crop = logits[..., box.top:box.top + box.height, box.left:box.left + box.width]
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> float in [0, 1] (what the model takes)."""
    return images.float().div_(255.0)


# ---------------------------------------------------------------- batched prediction


@torch.inference_mode()
def predict_batch(model: UNet, info: ModelInfo, fitted: np.ndarray,
                  sizes: Sequence[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
    """Class-index predictions (int64 H x W tensors on `device`) at each image's original size.

    `fitted` is N x S x S x 3 uint8 (each image fitted with `fit_image` to the model's
    training size); `sizes` the original (height, width) of each image.
    """
    x = torch.from_numpy(np.ascontiguousarray(fitted)).to(device).permute(0, 3, 1, 2)
    logits = model(to_float(x)).float()
    return [unfit_logits(logits[i:i + 1], h, w, info.resize)[0].argmax(0)
            for i, (h, w) in enumerate(sizes)]


def prefetch_batches(items: Sequence[T], load: Callable[[T], R], batch_size: int,
                     workers: int) -> Iterator[list[tuple[T, R]]]:
    """Batches of (item, load(item)); the next batch is decoded in threads while the caller
    works on this one, so at most two batches are in memory."""
    batches = [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        upcoming = [pool.submit(load, item) for item in batches[0]] if batches else []
        for index, batch in enumerate(batches):
            current = upcoming
            if index + 1 < len(batches):
                upcoming = [pool.submit(load, item) for item in batches[index + 1]]
            yield [(item, future.result()) for item, future in zip(batch, current, strict=True)]


def default_workers() -> int:
    """Threads decoding images when the params say 0: up to 8, one per core."""
    return min(8, os.cpu_count() or 1)
