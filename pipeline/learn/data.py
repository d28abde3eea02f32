"""Training data: manifest rows -> a uint8 cache at the working scale -> crops -> augmentation.

    cache = build_cache(rows, root, plan, cache_dir, split="train")   # resized once, memory-mapped
    crops = draw_crops(cache, plan, n, rng)            # which image, where (class-aware)
    images, masks = extract(cache, crops, window)      # uint8 windows around the crop centres
    x, y = apply_augment(images, masks, aug, draws, patch)   # on the training device

The cache holds every image of a split resized to the plan's working scale (bilinear for
images, nearest for masks, so every mask value stays a class index or 255), flat in one
memory-mapped file per array, plus a sample of each class's pixel positions per image (what
class-aware crops are centred on). It lives in `cache_dir/<split>-<key>/`; `key` hashes the
manifest rows used (they carry the content hashes) and the resize rule, so it is rebuilt only
when one of them changes; a stale cache of the same split is removed.

Augmentations run on whole batches on the device and keep masks exact: a random zoom
(nearest for masks; zooming out pads with ignore), flips, 90-degree rotations, brightness,
contrast, saturation, hue and blur (images only). Every random number comes from generators
seeded with (seed, step), so a run is reproducible and a resumed run replays its crops.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.core.hashing import content_hash
from pipeline.core.manifest import ManifestRow
from pipeline.core.records import IGNORE
from pipeline.errors import InputError
from pipeline.learn.inference import SampleError, read_pair, to_float
from pipeline.learn.plan import Plan
from pipeline.storage.files import atomic_path

CACHE_VERSION = "2"
#: Pixel positions kept per class and image for class-aware crops.
LOCATIONS_PER_CLASS = 256


@dataclass(frozen=True)
class Augment:
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    scale_min: float = 1.0
    scale_max: float = 1.0
    jitter: float = 0.0  # brightness/contrast/saturation factors drawn in [1-j, 1+j]
    hue: float = 0.0  # hue shift drawn in [-hue, hue] turns
    blur: float = 0.0  # share of crops blurred


@dataclass(frozen=True)
class Cache:
    """A split at the working scale: image i is rows offsets[i] .. + h*w of the flat arrays."""

    ids: tuple[str, ...]
    shapes: np.ndarray  # (N, 2) int64: height, width
    offsets: np.ndarray  # (N,) int64
    images: np.ndarray  # (pixels, 3) uint8, memory-mapped
    masks: np.ndarray  # (pixels,) uint8, memory-mapped
    locations: np.ndarray  # (L, 4) int64: class, image, y, x of sampled class pixels
    path: Path

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> np.ndarray:
        h, w = (int(v) for v in self.shapes[i])
        return self.images[self.offsets[i]:self.offsets[i] + h * w].reshape(h, w, 3)

    def mask(self, i: int) -> np.ndarray:
        h, w = (int(v) for v in self.shapes[i])
        return self.masks[self.offsets[i]:self.offsets[i] + h * w].reshape(h, w)


@dataclass(frozen=True)
class Crops:
    """Where the crops of one step are centred (working-scale pixels)."""

    image: np.ndarray  # (n,) int64
    y: np.ndarray
    x: np.ndarray


# ---------------------------------------------------------------- cache


def cache_key(rows: Sequence[ManifestRow], plan: Plan) -> str:
    rule = f"{plan.scale_mode}:{plan.scale if plan.scale_mode == 'absolute' else plan.long_side}"
    text = "\n".join([f"v{CACHE_VERSION} {rule}", *(f"{r.id}\x1f{r.fingerprint}" for r in rows)])
    return content_hash(text.encode())


def build_cache(rows: Sequence[ManifestRow], root: Path, plan: Plan, cache_dir: str | Path, *,
                split: str = "train", n_classes: int | None = None, threads: int = 1) -> Cache:
    """Resize every sample once into `cache_dir/<split>-<key>/`; reuse it when it exists.
    `root`: the manifest's folder (row paths are relative to it).

    Raises InputError listing every unreadable sample (and every mask value that is neither a
    class index below `n_classes` nor 255) after trying all of them.
    """
    if not rows:
        raise InputError(f"split {split!r} has no samples")
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{split}-{cache_key(rows, plan)}"
    if not (path / "ids.json").is_file():
        _write_cache(rows, root, plan, path, n_classes, threads)
        for stale in cache_dir.glob(f"{split}-*"):
            if stale != path and stale.is_dir():
                shutil.rmtree(stale)
    return open_cache(path)


def _resized(row: ManifestRow, root: Path, size: tuple[int, int]
             ) -> tuple[np.ndarray, np.ndarray] | str:
    """The sample at the working size (h, w), or why it cannot be used."""
    try:
        rgb, mask = read_pair(root / row.image, root / row.mask, row.id)
    except SampleError as exc:
        return str(exc)
    h, w = size
    if (h, w) != mask.shape:
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
    return rgb, mask


def _write_cache(rows: Sequence[ManifestRow], root: Path, plan: Plan, path: Path,
                 n_classes: int | None, threads: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    shapes = np.array([plan.working_size(r.height, r.width) for r in rows], dtype=np.int64)
    sizes = shapes[:, 0] * shapes[:, 1]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    problems: list[str] = []
    locations: list[np.ndarray] = []
    with atomic_path(path / "images.npy") as tmp_images, \
            atomic_path(path / "masks.npy") as tmp_masks:
        images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8,
                                           shape=(int(sizes.sum()), 3))
        masks = np.lib.format.open_memmap(tmp_masks, mode="w+", dtype=np.uint8,
                                          shape=(int(sizes.sum()),))
        with ThreadPoolExecutor(max(1, threads)) as pool:
            results = pool.map(lambda i: _resized(rows[i], root, tuple(shapes[i])),
                               range(len(rows)))
            for i, (row, loaded) in enumerate(zip(rows, results, strict=True)):
                if isinstance(loaded, str):
                    problems.append(loaded)
                    continue
                image, mask = loaded
                if n_classes is not None:
                    bad = sorted(set(np.unique(mask).tolist()) - {*range(n_classes), IGNORE})
                    if bad:
                        problems.append(f"{row.id}: mask values {bad} must be class indices "
                                        f"below {n_classes} or {IGNORE}")
                images[offsets[i]:offsets[i] + sizes[i]] = image.reshape(-1, 3)
                masks[offsets[i]:offsets[i] + sizes[i]] = mask.reshape(-1)
                locations.append(class_locations(mask, i, row.id))
        images.flush()
        masks.flush()
        del images, masks
        if problems:
            raise InputError(f"{len(problems)} of {len(rows)} samples cannot be used:\n  "
                             + "\n  ".join(problems))
    table = np.concatenate(locations) if locations else np.zeros((0, 4), np.int64)
    np.save(path / "shapes.npy", shapes)
    np.save(path / "locations.npy", table)
    # ids.json last: its presence marks a complete cache
    with atomic_path(path / "ids.json") as tmp:
        tmp.write_text(json.dumps([r.id for r in rows]), encoding="utf-8")


def class_locations(mask: np.ndarray, index: int, sample_id: str) -> np.ndarray:
    """Up to LOCATIONS_PER_CLASS pixel positions of every foreground class in `mask`, drawn
    with a generator seeded by the sample id: (class, image index, y, x) rows."""
    rng = np.random.default_rng(int(content_hash(sample_id.encode())[:12], 16))
    rows = []
    for value in np.unique(mask).tolist():
        if value in (0, IGNORE):
            continue
        ys, xs = np.nonzero(mask == value)
        pick = np.sort(rng.choice(len(ys), size=min(len(ys), LOCATIONS_PER_CLASS),
                                  replace=False))
        rows.append(np.stack([np.full(len(pick), value), np.full(len(pick), index),
                              ys[pick], xs[pick]], axis=1))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 4), np.int64)


def open_cache(path: str | Path) -> Cache:
    path = Path(path)
    ids = tuple(json.loads((path / "ids.json").read_text(encoding="utf-8")))
    shapes = np.load(path / "shapes.npy")
    sizes = shapes[:, 0] * shapes[:, 1]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return Cache(ids=ids, shapes=shapes, offsets=offsets,
                 images=np.load(path / "images.npy", mmap_mode="r"),
                 masks=np.load(path / "masks.npy", mmap_mode="r"),
                 locations=np.load(path / "locations.npy"), path=path)


# ---------------------------------------------------------------- crops


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of one optimiser step: a resumed run draws exactly what an uninterrupted
    run draws at that step."""
    return np.random.default_rng([int(seed), int(step)])


def draw_crops(cache: Cache, plan: Plan, n: int, rng: np.random.Generator) -> Crops:
    """n crop centres: a share `plan.fg_share` on a sampled pixel of a foreground class (the
    class drawn by `plan.class_weights` among the classes the cache has), the rest at a
    uniform position of a uniform image."""
    weights = np.zeros(len(plan.class_weights))
    present = np.unique(cache.locations[:, 0]) if len(cache.locations) else np.zeros(0, int)
    for value in present:
        weights[value] = plan.class_weights[value]
    on_class = rng.random(n) < plan.fg_share if weights.sum() > 0 else np.zeros(n, bool)
    image = rng.integers(0, len(cache), n)
    u = rng.random((n, 2))
    y = (u[:, 0] * cache.shapes[image, 0]).astype(np.int64)
    x = (u[:, 1] * cache.shapes[image, 1]).astype(np.int64)
    if on_class.any():
        classes = rng.choice(len(weights), size=int(on_class.sum()), p=weights / weights.sum())
        picks = rng.random(len(classes))
        rows = []
        for value, p in zip(classes, picks, strict=True):
            candidates = np.flatnonzero(cache.locations[:, 0] == value)
            rows.append(cache.locations[candidates[int(p * len(candidates))]])
        chosen = np.array(rows)
        image[on_class], y[on_class], x[on_class] = chosen[:, 1], chosen[:, 2], chosen[:, 3]
    return Crops(image, y, x)


def window_size(plan: Plan, aug: Augment) -> int:
    """Side of the window extracted around each crop centre: the largest zoomed-out view."""
    return int(math.ceil(plan.patch * max(1.0, aug.scale_max) / 2) * 2)


def extract(cache: Cache, crops: Crops, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 windows (n x 3 x window x window) and masks (n x window x window) centred on the
    crops, moved inside the image where it is larger than the window; outside the image the
    window is 0 and its mask 255 (ignore)."""
    n = len(crops.image)
    images = np.zeros((n, window, window, 3), np.uint8)
    masks = np.full((n, window, window), IGNORE, np.uint8)
    for k in range(n):
        i = int(crops.image[k])
        h, w = (int(v) for v in cache.shapes[i])
        top = _start(int(crops.y[k]), h, window)
        left = _start(int(crops.x[k]), w, window)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + window, h), min(left + window, w)
        images[k, y0 - top:y1 - top, x0 - left:x1 - left] = cache.image(i)[y0:y1, x0:x1]
        masks[k, y0 - top:y1 - top, x0 - left:x1 - left] = cache.mask(i)[y0:y1, x0:x1]
    return torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(masks)


def _start(centre: int, length: int, window: int) -> int:
    """Top (or left) of a window centred on `centre`, kept inside when the image is larger."""
    start = centre - window // 2
    if length >= window:
        return min(max(start, 0), length - window)
    return start


# ---------------------------------------------------------------- augmentation

#: uniform numbers per crop: hflip, vflip, rot90, zoom, shift x, shift y, brightness,
#: contrast, saturation, hue, blur yes/no, blur sigma
AUG_DRAWS = 12


def draw_augment(n: int, generator: torch.Generator) -> torch.Tensor:
    """The random numbers for n crops (N x AUG_DRAWS uniform in [0, 1), drawn on the CPU).

    Drawn for the whole global batch on every process, then sliced per process, so a DDP run
    and a single-process run augment each crop identically.
    """
    return torch.rand((n, AUG_DRAWS), generator=generator)


def apply_augment(images: torch.Tensor, masks: torch.Tensor, aug: Augment, draws: torch.Tensor,
                  patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom to a patch x patch view, flips, 90-degree rotations, then colour changes.

    images: uint8 or float N x 3 x W x W windows; masks: N x W x W; draws: N x AUG_DRAWS
    from `draw_augment`. Returns float images in [0, 1] (N x 3 x patch x patch) and int64
    masks on the images' device.
    """
    u = draws.to(images.device)
    x = to_float(images) if images.dtype == torch.uint8 else images.float()
    y = masks.long()
    zoom = aug.scale_min + (aug.scale_max - aug.scale_min) * u[:, 3]
    x, y = _zoom_crop(x, y, zoom * patch / x.shape[-1], u[:, 4:6], patch)
    if aug.hflip:
        pick = u[:, 0] < 0.5
        x = torch.where(pick.view(-1, 1, 1, 1), x.flip(-1), x)
        y = torch.where(pick.view(-1, 1, 1), y.flip(-1), y)
    if aug.vflip:
        pick = u[:, 1] < 0.5
        x = torch.where(pick.view(-1, 1, 1, 1), x.flip(-2), x)
        y = torch.where(pick.view(-1, 1, 1), y.flip(-2), y)
    if aug.rot90:
        # transpose + the flips above = all 8 symmetries of the square (rotations by k * 90)
        pick = u[:, 2] < 0.5
        x = torch.where(pick.view(-1, 1, 1, 1), x.transpose(-1, -2), x)
        y = torch.where(pick.view(-1, 1, 1), y.transpose(-1, -2), y)
    if aug.jitter > 0:
        x = _colour_jitter(x, 1.0 + aug.jitter * (2.0 * u[:, 6:9] - 1.0))
    if aug.hue > 0:
        x = _hue_shift(x, aug.hue * (2.0 * u[:, 9] - 1.0))
    if aug.blur > 0:
        x = _blur(x, torch.where(u[:, 10] < aug.blur, 0.5 + u[:, 11], torch.zeros_like(u[:, 11])))
    return x, y


def _zoom_crop(x: torch.Tensor, y: torch.Tensor, view: torch.Tensor, shift_u: torch.Tensor,
               patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A patch x patch view of each window: `view` is its side as a share of the window
    (< 1: a zoomed-in sub-window at a random position; > 1 pads with ignore); bilinear for
    images, nearest for masks (values exact)."""
    n = x.shape[0]
    centre = (shift_u * 2.0 - 1.0) * (1.0 - view).clamp(min=0.0).unsqueeze(1)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = view
    theta[:, 1, 1] = view
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta, [n, 3, patch, patch], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # masks: sample value+1 so out-of-window (0) is told apart from class 0, then map it to 255
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


def _hue_shift(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate each sample's colours about the grey axis by `turns` of a full turn (YIQ)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                           [0.211, -0.523, 0.312]], device=x.device)
    angle = turns * 2.0 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotate = torch.zeros(len(turns), 3, 3, device=x.device)
    rotate[:, 0, 0] = 1.0
    rotate[:, 1, 1], rotate[:, 1, 2] = cos, -sin
    rotate[:, 2, 1], rotate[:, 2, 2] = sin, cos
    matrix = torch.linalg.inv(to_yiq) @ rotate @ to_yiq  # N x 3 x 3, in RGB
    return torch.einsum("nij,njhw->nihw", matrix, x).clamp_(0.0, 1.0)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each sample (sigma 0 = unchanged), one 7-tap kernel per sample."""
    if not bool((sigma > 0).any()):
        return x
    taps = torch.arange(-3, 4, device=x.device, dtype=x.dtype)
    safe = sigma.clamp(min=1e-3).view(-1, 1)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / safe) ** 2)
    kernel = torch.where((sigma > 0).view(-1, 1), kernel, (taps == 0).to(x.dtype).view(1, -1))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # N x 7
    n, c, h, w = x.shape
    weight = kernel.repeat_interleave(c, dim=0)  # (N*C) x 7: one separable kernel per channel
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (3, 3, 0, 0), mode="reflect"), weight.view(n * c, 1, 1, 7),
                    groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, 3, 3), mode="reflect"), weight.view(n * c, 1, 7, 1),
                    groups=n * c)
    return flat.view(n, c, h, w)
