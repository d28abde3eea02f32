"""Training data: manifest rows of a split -> a pre-resized uint8 cache -> a Dataset -> batch
augmentation on the training device.

    rows = manifest.select(read_manifest(...), read_splits(...), "train")
    cache = build_cache(rows, root, size, cache_dir)            # resized once, memory-mapped
    dataset = CachedDataset(cache)                               # uint8 tensors, no decoding
    images, masks = augment_batch(images_u8, masks_u8, aug, gen) # on the training device

Images are fitted to the square training size as learn/inference.py describes (letterbox by
default). The cache lives in `cache_dir/<split>-<key>/` as `images.npy` (N x S x S x 3) and
`masks.npy` (N x S x S), opened memory-mapped. `key` hashes the manifest rows used (they carry
the image and mask content hashes), the size and the resize mode: the cache is rebuilt only
when one of them changes, and a stale cache of the same split is removed.

Augmentations run on whole batches of tensors (vectorised, on the device) and keep masks exact:
flips, 90-degree rotations (square crops), random scale-crop (nearest for masks; zooming out
pads with ignore), colour jitter (images only). Every random number comes from the
`torch.Generator` passed in, so a run is reproducible for a fixed seed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.hashing import content_hash
from pipeline.core.manifest import ManifestRow
from pipeline.core.records import IGNORE
from pipeline.errors import InputError
from pipeline.learn.inference import SampleError, fit_image, fit_mask, read_pair, to_float
from pipeline.params import RESIZE_MODES
from pipeline.storage.files import atomic_path

CACHE_VERSION = "1"


@dataclass(frozen=True)
class Augment:
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    scale_min: float = 1.0
    scale_max: float = 1.0
    jitter: float = 0.0  # brightness/contrast/saturation factors drawn in [1-j, 1+j]


@dataclass(frozen=True)
class Cache:
    ids: tuple[str, ...]
    images: np.ndarray  # N x S x S x 3 uint8 (memory-mapped)
    masks: np.ndarray  # N x S x S uint8 (memory-mapped)
    path: Path


# ---------------------------------------------------------------- cache


def cache_key(rows: Sequence[ManifestRow], size: int, resize: str) -> str:
    text = "\n".join([f"v{CACHE_VERSION} size={size} resize={resize}",
                      *(f"{r.id}\x1f{r.fingerprint}" for r in rows)])
    return content_hash(text.encode())


def _load_pair(row: ManifestRow, root: Path, size: int, resize: str
               ) -> tuple[np.ndarray, np.ndarray, str]:
    """Decode and fit one sample; an unreadable file or a size mismatch is the returned message."""
    try:
        rgb, mask = read_pair(root / row.image, root / row.mask, row.id)
    except SampleError as exc:
        return np.empty(0), np.empty(0), str(exc)
    return fit_image(rgb, size, resize), fit_mask(mask, size, resize), ""


def build_cache(rows: Sequence[ManifestRow], root: Path, size: int, cache_dir: str | Path, *,
                split: str = "train", resize: str = "letterbox", n_classes: int | None = None,
                threads: int = 1) -> Cache:
    """Resize every sample once into `cache_dir/<split>-<key>/`; reuse it when it exists.
    `root`: the manifest's folder (row paths are relative to it).

    Raises InputError listing every unreadable sample (and every mask value that is neither a
    class index below `n_classes` nor 255) after trying all of them.
    """
    if resize not in RESIZE_MODES:
        raise InputError(f"train.resize must be one of {RESIZE_MODES}, got {resize!r}")
    if not rows:
        raise InputError(f"split {split!r} has no samples")
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{split}-{cache_key(rows, size, resize)}"
    if not (path / "ids.json").is_file():
        _write_cache(rows, root, size, resize, path, n_classes, threads)
        for stale in cache_dir.glob(f"{split}-*"):
            if stale != path and stale.is_dir():
                shutil.rmtree(stale)
    return open_cache(path)


def _write_cache(rows: Sequence[ManifestRow], root: Path, size: int, resize: str, path: Path,
                 n_classes: int | None, threads: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    problems: list[str] = []
    with atomic_path(path / "images.npy") as tmp_images, \
            atomic_path(path / "masks.npy") as tmp_masks:
        images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8,
                                           shape=(n, size, size, 3))
        masks = np.lib.format.open_memmap(tmp_masks, mode="w+", dtype=np.uint8,
                                          shape=(n, size, size))
        with ThreadPoolExecutor(max(1, threads)) as pool:
            results = pool.map(lambda r: _load_pair(r, root, size, resize), rows)
            for i, (row, (image, mask, problem)) in enumerate(zip(rows, results, strict=True)):
                if problem:
                    problems.append(problem)
                    continue
                if n_classes is not None:
                    bad = sorted(set(np.unique(mask).tolist()) - {*range(n_classes), IGNORE})
                    if bad:
                        problems.append(f"{row.id}: mask values {bad} must be class indices "
                                        f"below {n_classes} or {IGNORE}")
                images[i] = image
                masks[i] = mask
        images.flush()
        masks.flush()
        del images, masks
        if problems:
            raise InputError(f"{len(problems)} of {n} samples cannot be used:\n  "
                             + "\n  ".join(problems))
    # ids.json last: its presence marks a complete cache
    with atomic_path(path / "ids.json") as tmp:
        tmp.write_text(json.dumps([r.id for r in rows]), encoding="utf-8")


def open_cache(path: str | Path) -> Cache:
    path = Path(path)
    ids = tuple(json.loads((path / "ids.json").read_text(encoding="utf-8")))
    images = np.load(path / "images.npy", mmap_mode="r")
    masks = np.load(path / "masks.npy", mmap_mode="r")
    return Cache(ids=ids, images=images, masks=masks, path=path)


# ---------------------------------------------------------------- dataset


class CachedDataset(torch.utils.data.Dataset):
    """uint8 tensors from the cache: image 3 x S x S, mask S x S. `__getitems__` reads a whole
    batch with one fancy index (use `collate_fn=collate_batch` in the DataLoader)."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache.ids)

    # DataLoader workers get the cache's path and map it again (never a copy of the arrays)
    def __getstate__(self) -> dict[str, str]:
        return {"path": str(self.cache.path)}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.cache = open_cache(state["path"])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self.cache.images[index])).permute(2, 0, 1)
        return image.contiguous(), torch.from_numpy(np.array(self.cache.masks[index]))

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        order = np.asarray(indices, dtype=np.int64)
        images = torch.from_numpy(self.cache.images[order]).permute(0, 3, 1, 2).contiguous()
        return images, torch.from_numpy(self.cache.masks[order])


def collate_batch(batch: tuple[torch.Tensor, torch.Tensor] | list) -> tuple[torch.Tensor, ...]:
    """The DataLoader collate for CachedDataset: batches from `__getitems__` pass through."""
    if isinstance(batch, tuple):
        return batch
    images, masks = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(masks)


# ---------------------------------------------------------------- augmentation


AUG_DRAWS = 9  # uniform numbers per sample: hflip, vflip, rot90, scale, shift x2, jitter x3


def draw_augment(n: int, generator: torch.Generator) -> torch.Tensor:
    """The random numbers for n samples (N x AUG_DRAWS uniform in [0, 1), drawn on the CPU).

    Drawn for the whole global batch on every process, then sliced per process, so a DDP run
    and a single-process run augment each sample identically.
    """
    return torch.rand((n, AUG_DRAWS), generator=generator)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, aug: Augment,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`apply_augment` with fresh random numbers from `generator`."""
    return apply_augment(images, masks, aug, draw_augment(images.shape[0], generator))


def apply_augment(images: torch.Tensor, masks: torch.Tensor, aug: Augment,
                  draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, 90-degree rotations, scale-crop and colour jitter, chosen per sample by `draws`.

    images: uint8 or float N x 3 x S x S; masks: N x S x S integer; draws: N x AUG_DRAWS from
    `draw_augment`. Returns float images in [0, 1] and int64 masks on the images' device.
    """
    u = draws.to(images.device)
    x = to_float(images) if images.dtype == torch.uint8 else images.float()
    y = masks.long()
    if aug.hflip:
        pick = u[:, 0] < 0.5
        x = torch.where(pick.view(-1, 1, 1, 1), x.flip(-1), x)
        y = torch.where(pick.view(-1, 1, 1), y.flip(-1), y)
    if aug.vflip:
        pick = u[:, 1] < 0.5
        x = torch.where(pick.view(-1, 1, 1, 1), x.flip(-2), x)
        y = torch.where(pick.view(-1, 1, 1), y.flip(-2), y)
    if aug.rot90 and x.shape[-1] == x.shape[-2]:
        # transpose + the flips above = all 8 symmetries of the square (rotations by k * 90)
        pick = u[:, 2] < 0.5
        x = torch.where(pick.view(-1, 1, 1, 1), x.transpose(-1, -2), x)
        y = torch.where(pick.view(-1, 1, 1), y.transpose(-1, -2), y)
    if aug.scale_min != 1.0 or aug.scale_max != 1.0:
        scale = aug.scale_min + (aug.scale_max - aug.scale_min) * u[:, 3]
        x, y = _scale_crop(x, y, scale, u[:, 4:6])
    if aug.jitter > 0:
        x = _colour_jitter(x, 1.0 + aug.jitter * (2.0 * u[:, 6:9] - 1.0))
    return x, y


def _scale_crop(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor,
                shift_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom each sample by `scale` (> 1 crops a random window, < 1 shrinks and pads with
    ignore) at a random position; bilinear for images, nearest for masks (values exact)."""
    n = x.shape[0]
    inv = 1.0 / scale  # the sampled window's size relative to the image
    # window centre: anywhere that keeps it inside the image (or the image inside it)
    centre = (shift_u * 2.0 - 1.0) * (1.0 - inv).abs().unsqueeze(1)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = inv
    theta[:, 1, 1] = inv
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # masks: sample value+1 so out-of-image (0) is told apart from class 0, then map it to 255
    shifted = (y + 1).unsqueeze(1).float()
    sampled = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros",
                            align_corners=False).squeeze(1).round().long() - 1
    y = torch.where(sampled < 0, torch.full_like(sampled, IGNORE), sampled)
    return x, y


def _colour_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation per sample (factors N x 3), clamped to [0, 1]."""
    b, c, s = (factors[:, i].view(-1, 1, 1, 1) for i in range(3))
    x = x * b
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey) * s + grey
    return x.clamp_(0.0, 1.0)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator for one epoch's shuffling and augmentation: resuming at an epoch boundary
    replays exactly the random numbers an uninterrupted run draws."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) + 1)
