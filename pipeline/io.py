"""The only place that reads and writes images, masks and tables. Every write is atomic."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import secrets
import stat
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import pandas as pd

IGNORE = 255  # mask value for "ignore" pixels


def content_hash(data: bytes) -> str:
    """Hex digest used for every content hash in the pipeline (blake2b, 128 bits)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, else remove it.

    A run killed midway leaves at most a stray `.<name>.<random>.tmp` file (see
    `remove_temp_files`), never a half-written output. The caller creates the temp file, so
    it gets the usual permissions (umask), not mkstemp's owner-only 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    replace_bytes(path, data)


def replace_bytes(path: str | Path, data: bytes) -> None:
    """`write_bytes` for a path whose directory exists (one mkdir per directory, not per file:
    see `make_dirs`). Same atomicity: a temp file beside `path`, renamed over it when whole.

    Raw `os` calls rather than `open()`: no buffer object, a few syscalls per file.
    """
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never reuse a name; mode 0o666 & umask, as open() would create it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def make_dirs(paths: Iterable[str | Path]) -> None:
    """Create the parent directory of every path (each distinct directory once)."""
    for directory in sorted({os.path.dirname(os.fspath(p)) for p in paths}):
        os.makedirs(directory or ".", exist_ok=True)


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


# --------------------------------------------------------------------------------------------
# Images: probe without a full decode, keep original bytes, rotate only when asked.

#: EXIF orientations whose display swaps width and height (90/270 degree turns).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112
#: PIL format name -> file extension for prepared images.
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif", "TIFF": "tif",
               "WEBP": "webp", "MPO": "jpg"}
#: What PIL raises on a corrupt, truncated or hostile file (no bare `except Exception`).
#: what PIL raises for a file it cannot decode (truncation and unknown formats are OSError)
PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
               zlib.error, Image.DecompressionBombError, Image.DecompressionBombWarning)


class ImageError(ValueError):
    """An image that cannot be used: unreadable, corrupt, truncated or too large."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check  # "image_corrupt" or "image_too_large"


@dataclass(frozen=True)
class ImageInfo:
    """What convert needs to know about an image, read without a full-size decode."""

    format: str  # PIL format name, e.g. "JPEG"
    width: int  # size as stored (raw pixel rows), before any EXIF rotation
    height: int
    orientation: int = 1  # EXIF orientation 1..8; 1 when absent or invalid

    @property
    def rotated_size(self) -> tuple[int, int]:
        """Size as a viewer shows it (after EXIF rotation)."""
        if self.orientation in _SWAPPING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height

    @property
    def extension(self) -> str:
        return _EXTENSIONS.get(self.format, self.format.lower())


@contextmanager
def _open_image(data: bytes) -> Iterator[Image.Image]:
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
            raise ImageError("image_corrupt", f"not a readable image: {_reason(exc)}") from None
        with image:
            yield image


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def probe_image(data: bytes) -> ImageInfo:
    """Size, format and EXIF orientation of image bytes, and proof that they decode.

    JPEGs decode in draft mode (1/8 scale: the whole entropy-coded stream is still read,
    so truncated or corrupt files fail, at a fraction of the cost); other formats decode
    fully. Raises ImageError for anything unusable; never hangs on a huge header.
    """
    with _open_image(data) as image:
        info = ImageInfo(image.format or "unknown", image.width, image.height)
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except PIL_ERRORS:
            orientation = 1  # unreadable EXIF: the pixels are what they are
        if not isinstance(orientation, int) or not 1 <= orientation <= 8:
            orientation = 1
        info = ImageInfo(info.format, info.width, info.height, orientation)
        try:
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
        except PIL_ERRORS as exc:
            raise ImageError("image_corrupt", f"image does not decode: {_reason(exc)}") from None
    return info


def prepared_image(data: bytes, info: ImageInfo, rotate: bool) -> tuple[bytes, str]:
    """Bytes and extension of the image as it should be stored: in the annotation frame,
    with no EXIF rotation left for a viewer to apply.

    No EXIF orientation: the original bytes. Orientation but annotated in the raw frame:
    the original JPEG bytes with the orientation tag set to 1 (lossless), other formats
    re-encoded as PNG. Annotated in the rotated frame: rotated pixels, saved as PNG
    (lossless, no EXIF).
    """
    if info.orientation == 1:
        return data, info.extension
    if not rotate and info.format == "JPEG":
        patched = _jpeg_without_orientation(data)
        if patched is not None:
            return patched, info.extension
    with _open_image(data) as image:
        if rotate:
            image = ImageOps.exif_transpose(image)
        else:
            image.load()
        out = io.BytesIO()
        image.save(out, format="PNG")  # no exif= argument: the orientation is gone
    return out.getvalue(), "png"


def _jpeg_without_orientation(data: bytes) -> bytes | None:
    """The JPEG with its EXIF orientation tag set to 1, or None if the tag cannot be found."""
    located = _jpeg_orientation_offset(data)
    if located is None:
        return None
    offset, order = located
    patched = data[:offset] + (1).to_bytes(2, order) + data[offset + 2:]
    try:
        if probe_image(patched).orientation != 1:
            return None
    except ImageError:
        return None
    return patched


def _jpeg_orientation_offset(data: bytes) -> tuple[int, Literal["little", "big"]] | None:
    """Byte offset and byte order of the orientation SHORT in the first EXIF IFD0."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no more headers
            return None
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos + 4:pos + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            return _tiff_orientation_offset(segment[6:], pos + 4 + 6)
        pos += 2 + length
    return None


def _tiff_orientation_offset(tiff: bytes, base: int) -> tuple[int, Literal["little", "big"]] | None:
    order: Literal["little", "big"]
    if tiff[:2] == b"II":
        order = "little"
    elif tiff[:2] == b"MM":
        order = "big"
    else:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    for i in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            return None
        tag = int.from_bytes(tiff[entry:entry + 2], order)
        kind = int.from_bytes(tiff[entry + 2:entry + 4], order)
        count = int.from_bytes(tiff[entry + 4:entry + 8], order)
        if tag == _EXIF_ORIENTATION:
            return (base + entry + 8, order) if kind == 3 and count == 1 else None
    return None


# --------------------------------------------------------------------------------------------
# Masks as files: what the schema checks look at.

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


# --------------------------------------------------------------------------------------------
# Files: hashing, tables, clean-up of interrupted runs.

class FileStamp(NamedTuple):
    """What `os.stat` says about a file: when all of it is unchanged, so are its bytes
    (the hash memo of convert relies on it; any write changes ctime, a replace the inode).
    An immutable tuple: cheap to build and compare once per input file and run."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    def settled(self, now_ns: int, margin_s: float = 1.0, fine_margin_s: float = 0.1) -> bool:
        """True when the file last changed long enough before `now_ns` (time.time_ns when the
        stamp was taken) that a later write must give a different stamp: one more write
        within the same tick of the file system's clock would keep mtime and ctime, so a
        stamp of a file that changed just now must not be trusted for a memo.

        How long is long enough depends on the clock: `margin_s` when the timestamps are
        whole seconds (a file system that stores seconds only), `fine_margin_s` when they
        have a sub-second part (Linux stamps files from a clock that ticks every few ms)."""
        coarse = self.mtime_ns % 1_000_000_000 == 0 and self.ctime_ns % 1_000_000_000 == 0
        margin = margin_s if coarse else fine_margin_s
        return max(self.mtime_ns, self.ctime_ns) < now_ns - int(margin * 1e9)


def file_stamp(path: str | Path) -> FileStamp | None:
    """The stamp of a file, or None when it does not exist (or is not a regular file)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return FileStamp.of(st) if stat.S_ISREG(st.st_mode) else None


def read_stamped(path: str | Path) -> tuple[bytes, FileStamp]:
    """A file's bytes and the stamp of what was read (fstat of the open file, before the
    read). Raises OSError as `Path.read_bytes` does."""
    with open(path, "rb", buffering=0) as f:
        stamp = FileStamp.of(os.fstat(f.fileno()))
        return f.read(), stamp


def file_hash(path: str | Path) -> str | None:
    """content_hash of a file's bytes, or None when the file does not exist."""
    try:
        return content_hash(Path(path).read_bytes())
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a table as CSV with '\\n' line ends and no index (byte-stable)."""
    write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def remove_temp_files(root: str | Path) -> int:
    """Remove the `.<name>.*.tmp` files an interrupted atomic write left under `root`."""
    removed = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed


def prune_files(root: str | Path, keep: set[str]) -> list[str]:
    """Delete every file under `root` whose posix path relative to `root` is not in `keep`,
    then the directories left empty. Returns the removed paths (sorted)."""
    root = Path(root)
    removed = []
    for dirpath, _, names in os.walk(root, topdown=False):
        prefix = Path(dirpath).relative_to(root).as_posix() + "/"
        prefix = "" if prefix == "./" else prefix
        for name in names:
            if prefix + name not in keep:
                Path(dirpath, name).unlink(missing_ok=True)
                removed.append(prefix + name)
        if prefix and not os.listdir(dirpath):
            os.rmdir(dirpath)
    return sorted(removed)
