"""The only place that reads and writes images, masks and tables. Every write is atomic."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IGNORE = 255  # mask value for "ignore" pixels


def content_hash(data: bytes) -> str:
    """Hex digest used for every content hash in the pipeline (blake2b, 128 bits)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, else remove it.

    A run killed midway leaves at most a stray `.tmp` file, never a half-written output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON with sorted-free stable layout; NaN/inf become null (valid JSON)."""
    write_text(path, json.dumps(_finite(obj), indent=2, ensure_ascii=False) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (as Labelme/imgviz write it): 256 RGB triples, flattened."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """Encode a uint8 class-index mask as a palette PNG (VOC colours; 255 is cream-white)."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    image = Image.fromarray(mask, mode="P")
    image.putpalette(voc_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    write_bytes(path, mask_png_bytes(mask))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a class-index mask PNG as a 2-D uint8 array (palette indices, not colours)."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: mask must be a palette or grayscale PNG, got mode {image.mode}")
        return np.asarray(image, dtype=np.uint8).copy()


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a prepared image as HxWx3 uint8. No EXIF rotation: prepared images are in the
    annotation frame already."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
