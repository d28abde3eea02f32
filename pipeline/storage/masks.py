"""Class-index masks as palette PNGs (VOC colours): encode, decode, and facts for the schemas."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.storage.files import write_bytes


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (as Labelme/imgviz write it): 256 RGB triples, flattened."""
    return list(_voc_palette())


@functools.cache
def _voc_palette() -> tuple[int, ...]:
    palette: list[int] = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return tuple(palette)


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """Encode a uint8 class-index mask as a palette PNG (VOC colours; 255 is cream-white)."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    image = Image.fromarray(mask, mode="P")
    image.putpalette(_voc_palette())
    buffer = io.BytesIO()
    # run-length deflate: masks are long runs of one value (faster and smaller than level 1)
    image.save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    write_bytes(path, mask_png_bytes(mask))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a class-index mask PNG as a 2-D uint8 array (palette indices, not colours)."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(
                f"{path}: mask must be a palette or grayscale PNG, got mode {image.mode}")
        return np.asarray(image, dtype=np.uint8).copy()

@dataclass(frozen=True)
class MaskInfo:
    """Facts about an encoded mask, read back from its bytes."""

    mode: str  # PIL mode, "P" for our palette PNGs
    dtype: str  # numpy dtype of the decoded pixel array
    channels: int
    width: int
    height: int
    counts: tuple[int, ...]  # pixels per value 0..255 (empty unless 2-D uint8)


def inspect_mask(data: bytes, mask: np.ndarray | None = None) -> MaskInfo:
    """Facts about mask PNG bytes: mode, dtype, channels and size from the PNG itself, value
    counts from decoding it, or from `mask` when given (the array these bytes losslessly
    encode, which saves decoding them again).

    With `mask`, an 8-bit palette or grayscale PNG (what `mask_png_bytes` writes) is read
    from its IHDR header alone (no PIL): the same facts, at a fraction of the cost."""
    fast = mask is not None and mask.dtype == np.uint8 and mask.ndim == 2
    header = _png_header(data) if fast else None
    if header is not None and mask is not None:
        mode, width, height = header
        counts = tuple(Image.fromarray(mask, mode="L").histogram())  # 256 counts
        return MaskInfo(mode, "uint8", 1, width, height, counts)
    with Image.open(io.BytesIO(data)) as image:
        dtype = _MODE_DTYPES.get(image.mode, "other")
        counts: tuple[int, ...] = ()
        if image.mode in ("P", "L"):
            source = image if mask is None else Image.fromarray(mask, mode="L")
            counts = tuple(source.histogram())  # 256 counts, one per value
        return MaskInfo(image.mode, dtype, len(image.getbands()), image.width, image.height,
                        counts)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG IHDR (bit depth, colour type) -> PIL mode, for the mask modes read from the header.
_PNG_MASK_MODES = {(8, 3): "P", (8, 0): "L"}


def _png_header(data: bytes) -> tuple[str, int, int] | None:
    """(PIL mode, width, height) from the IHDR of an 8-bit palette or grayscale PNG whose
    header chunk is intact (CRC checked), else None (the caller asks PIL)."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    if int.from_bytes(data[8:12], "big") != 13 or \
            zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None
    width, height, depth, colour, _, filtering, interlace = struct.unpack(">IIBBBBB",
                                                                         data[16:29])
    mode = _PNG_MASK_MODES.get((depth, colour))
    if mode is None or filtering != 0 or interlace not in (0, 1) or not width or not height:
        return None  # PIL refuses an unknown filter method: let it say so
    return mode, width, height


#: numpy dtype of the array PIL gives for a mode (what np.asarray(image) would return).
_MODE_DTYPES = {"1": "bool", "L": "uint8", "P": "uint8", "LA": "uint8", "PA": "uint8",
                "RGB": "uint8", "RGBA": "uint8", "I;16": "uint16", "I": "int32", "F": "float32"}


