"""How the model sees an image, shared by training's validation, evaluate, predict and review.

    rgb, mask = read_pair(image_path, mask_path, sample_id)     # the one prepared-sample loader
    pred = predict_mask(model, info, rgb, device)                # H x W class indices
    for row, logits in logit_bands(model, work, patch, device):  # working-scale logits, in bands

Each image is resized to the plan's working scale (learn/plan.py), covered by overlapping
tiles of the training patch size (`OVERLAP`), each tile's logits weighted by a Gaussian that
falls off towards its border (tile borders see the least context; nnU-Net's blending), summed
and normalised. An image no larger than one patch is one tile: whole-image inference. The
logits come out in horizontal bands, finished as soon as no later tile touches them, and are
upsampled to the image's original size band by band (bilinear, as one F.interpolate would),
so memory follows the patch and the image width, not the image area: 12 MP and 100 MP photos
are predicted in a few hundred MB.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.core.manifest import ManifestRow
from pipeline.learn.model import ModelInfo
from pipeline.storage.images import PIL_ERRORS, read_photo, read_rgb
from pipeline.storage.masks import read_mask

T = TypeVar("T")
R = TypeVar("R")

#: Share of a tile that its neighbour overlaps (nnU-Net: half a tile).
OVERLAP = 0.5
#: Output rows upsampled at once (bounds memory for wide images with many classes).
UPSAMPLE_ROWS = 64


class SampleError(ValueError):
    """A prepared sample that cannot be used (unreadable, or mask and image sizes differ)."""


@dataclass(frozen=True)
class Precision:
    """How the model computes: bf16 autocast or not, channels_last or not."""

    amp: bool = False
    channels_last: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device) -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp)


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


def load_labelled(row: ManifestRow, root: Path) -> tuple[np.ndarray, np.ndarray] | str:
    """(image, mask) of a prepared sample, or why it cannot be used."""
    try:
        return read_pair(root / row.image, root / row.mask, row.id)
    except SampleError as exc:
        return str(exc)


def load_photo(path: Path) -> np.ndarray | str:
    """A user's photo, upright by its EXIF orientation, or why it cannot be read."""
    try:
        return read_photo(path)
    except PIL_ERRORS as exc:
        return f"{path}: cannot read image: {exc}"


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> float in [0, 1] (what the model takes)."""
    return images.float().div_(255.0)


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H x W x 3 uint8 to (height, width), bilinear (antialiased when shrinking)."""
    if rgb.shape[:2] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]),
                                                  Image.Resampling.BILINEAR))


# ---------------------------------------------------------------- sliding window


def tile_starts(length: int, patch: int, overlap: float = OVERLAP) -> list[int]:
    """Where tiles start along one axis: every stride, and one flush with the far end."""
    if length <= patch:
        return [0]
    stride = max(1, int(patch * (1.0 - overlap)))
    starts = list(range(0, length - patch, stride))
    return [*starts, length - patch]


def tile_weight(patch: int, device: torch.device) -> torch.Tensor:
    """patch x patch Gaussian (sigma = patch / 8) with its peak 1; never below 1e-3, so every
    pixel has weight (nnU-Net's importance map)."""
    axis = torch.arange(patch, device=device, dtype=torch.float32) - (patch - 1) / 2.0
    g = torch.exp(-0.5 * (axis / (patch / 8.0)) ** 2)
    weight = g.view(-1, 1) * g.view(1, -1)
    return (weight / weight.max()).clamp_(min=1e-3)


@torch.inference_mode()
def logit_bands(model: torch.nn.Module, image: np.ndarray, patch: int, device: torch.device,
                precision: Precision = Precision(), batch_size: int = 8,
                overlap: float = OVERLAP) -> Iterator[tuple[int, torch.Tensor]]:
    """Blended logits of an H x W x 3 uint8 image, as (first row, C x rows x W float32 on
    `device`) bands from top to bottom. Tiles past the image are zero-padded, as training
    crops are."""
    h, w = image.shape[:2]
    padded = np.zeros((max(h, patch), max(w, patch), 3), np.uint8)
    padded[:h, :w] = image
    x_full = torch.from_numpy(padded).to(device).permute(2, 0, 1)
    weight = tile_weight(patch, device)
    ys, xs = tile_starts(padded.shape[0], patch, overlap), tile_starts(padded.shape[1], patch,
                                                                        overlap)
    acc: torch.Tensor | None = None  # rows [base, base + patch) of the running sum
    norm = torch.zeros(patch, padded.shape[1], device=device)
    base = 0
    for y in ys:
        if acc is not None and y > base:  # rows above y are final: no later tile covers them
            done = y - base
            yield from _finished(acc, norm, base, done, h, w)
            acc = torch.cat([acc[:, done:], torch.zeros_like(acc[:, :done])], dim=1)
            norm = torch.cat([norm[done:], torch.zeros_like(norm[:done])], dim=0)
            base = y
        for start in range(0, len(xs), batch_size):
            chunk = xs[start:start + batch_size]
            tiles = torch.stack([x_full[:, y:y + patch, x:x + patch] for x in chunk])
            tiles = to_float(tiles).contiguous(memory_format=precision.memory_format)
            with precision.autocast(device):
                logits = model(tiles).float()
            if acc is None:
                acc = torch.zeros(logits.shape[1], patch, padded.shape[1], device=device)
            for k, x in enumerate(chunk):
                acc[:, :, x:x + patch] += logits[k] * weight
                norm[:, x:x + patch] += weight
    assert acc is not None
    yield from _finished(acc, norm, base, patch, h, w)


def _finished(acc: torch.Tensor, norm: torch.Tensor, base: int, rows: int, h: int, w: int
              ) -> Iterator[tuple[int, torch.Tensor]]:
    rows = min(rows, h - base)
    if rows > 0:
        yield base, acc[:, :rows, :w] / norm[:rows, :w]


def full_logits(model: torch.nn.Module, image: np.ndarray, patch: int, device: torch.device,
                precision: Precision = Precision(), batch_size: int = 8) -> torch.Tensor:
    """All of `logit_bands` at once: C x H x W (for images at the working scale)."""
    return torch.cat([band for _, band in logit_bands(model, image, patch, device, precision,
                                                      batch_size)], dim=1)


def upsample_bands(bands: Iterator[tuple[int, torch.Tensor]], source: tuple[int, int],
                   size: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
    """Bands of logits at `source` (h, w) -> bands at `size` (H, W), bilinear exactly as
    F.interpolate(align_corners=False) computes it, keeping only the rows still needed."""
    (h, _w), (out_h, out_w) = source, size
    scale = h / out_h
    buffer: torch.Tensor | None = None
    start = 0  # source row of buffer[:, 0]
    row = 0  # next output row
    for first, band in bands:
        buffer = band if buffer is None else torch.cat([buffer, band], dim=1)
        available = first + band.shape[1]  # source rows < available are in hand
        while row < out_h:
            src = np.maximum((np.arange(row, min(out_h, row + UPSAMPLE_ROWS)) + 0.5) * scale
                             - 0.5, 0.0)
            top = np.floor(src).astype(np.int64)
            bottom = np.minimum(top + 1, h - 1)
            ready = int(np.searchsorted(bottom, available))  # rows whose sources are here
            if ready == 0:
                break
            top, bottom, src = top[:ready], bottom[:ready], src[:ready]
            lam = torch.from_numpy(src - top).to(buffer.device, torch.float32).view(1, -1, 1)
            upper = buffer[:, torch.from_numpy(top - start).to(buffer.device)]
            lower = buffer[:, torch.from_numpy(bottom - start).to(buffer.device)]
            rows = upper * (1 - lam) + lower * lam
            wide = F.interpolate(rows.permute(1, 0, 2), size=out_w, mode="linear",
                                 align_corners=False)  # ready x C x W
            yield row, wide.permute(1, 0, 2)
            row += ready
            # the first source row still needed (never past what is in hand)
            keep = min(int(np.floor(max((row + 0.5) * scale - 0.5, 0.0))), available)
            if keep > start:
                buffer, start = buffer[:, keep - start:], keep


def predict_mask(model: torch.nn.Module, info: ModelInfo, rgb: np.ndarray,
                 device: torch.device, batch_size: int = 8) -> np.ndarray:
    """H x W uint8 class indices of an H x W x 3 image at its original size: resized to the
    working scale, tiled, blended, upsampled back band by band, argmax."""
    height, width = rgb.shape[:2]
    size = info.plan.working_size(height, width)
    precision = Precision(info.amp, info.channels_last)
    bands = logit_bands(model, resize_image(rgb, size), info.plan.patch, device, precision,
                        batch_size)
    if size != (height, width):
        bands = upsample_bands(bands, size, (height, width))
    out = np.empty((height, width), np.uint8)
    for row, band in bands:
        out[row:row + band.shape[1]] = band.argmax(0).to("cpu", torch.uint8).numpy()
    return out


# ---------------------------------------------------------------- loading


def prefetch(items: Sequence[T], load: Callable[[T], R], workers: int) -> Iterator[tuple[T, R]]:
    """(item, load(item)) in order; the next items are decoded in threads meanwhile, at most
    2 x workers ahead (memory stays bounded)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        ahead = 2 * max(1, workers)
        futures = [pool.submit(load, item) for item in items[:ahead]]
        for index, item in enumerate(items):
            if index + ahead < len(items):
                futures.append(pool.submit(load, items[index + ahead]))
            yield item, futures[index].result()
            futures[index] = None  # type: ignore[call-overload]


def default_workers() -> int:
    """Threads decoding images when the params say 0: up to 8, one per core."""
    return min(8, os.cpu_count() or 1)


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast
    trains 2-3x faster than fp32; elsewhere it is emulated and slower."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))
