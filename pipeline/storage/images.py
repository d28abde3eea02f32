"""Images: decoding that never crashes or hangs on a hostile file, and PNG encoding."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: Image file suffixes the readers look for (compared case-insensitively), in preference order.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
#: EXIF orientations whose display swaps width and height (90/270 degree turns).
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
EXIF_ORIENTATION = 0x0112
#: What PIL raises for a file it cannot decode (truncation and unknown formats are OSError;
#: a decompression bomb is neither): catch these, never a bare `except Exception`.
PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
              zlib.error, Image.DecompressionBombError, Image.DecompressionBombWarning)


class ImageError(ValueError):
    """An image that cannot be used: unreadable, corrupt, truncated or too large."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check  # "image_corrupt" or "image_too_large"


def read_photo(path: str | Path) -> np.ndarray:
    """A user's image as H x W x 3 uint8, turned upright by its EXIF orientation (as a viewer
    shows it). Raises one of PIL_ERRORS for a file PIL cannot decode."""
    with Image.open(path) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
        return np.asarray(upright.convert("RGB"), dtype=np.uint8).copy()


def rgb_png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an H x W x 3 uint8 picture (an overlay) as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a prepared image as HxWx3 uint8. No EXIF rotation: prepared images are in the
    annotation frame already."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


@contextmanager
def open_image(data: bytes) -> Iterator[Image.Image]:
    """Open image bytes; a decompression bomb (even Pillow's warning level) is an ImageError."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError("image_too_large", f"image is too large to decode safely "
                             f"(Pillow's decompression-bomb limit): {exc}") from None
        except Image.UnidentifiedImageError:
            raise ImageError("image_corrupt", "not a readable image: unknown or unsupported "
                             "format (must be JPEG, PNG, BMP, GIF, TIFF or WebP)") from None
        except PIL_ERRORS as exc:
            raise ImageError("image_corrupt", f"not a readable image: {error_text(exc)}") from None
        with image:
            yield image


def error_text(exc: BaseException) -> str:
    """A PIL exception as a short message (first 200 characters)."""
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."
