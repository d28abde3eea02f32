"""The image frame: what an image is (probe), which frame its annotation was drawn in
(`decide_frame`: EXIF orientation against the declared size, never rotated blindly), and the
bytes to store for it (`prepared_image`: original bytes where possible).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

from PIL import ImageOps

from pipeline.storage.images import (
    EXIF_ORIENTATION,
    PIL_ERRORS,
    SWAPPING_ORIENTATIONS,
    ImageError,
    error_text,
    open_image,
)

#: Labelme annotates the EXIF-rotated image from this version on (older: the raw pixels).
LABELME_ROTATES_FROM = (3, 11)
#: PIL format name -> file extension for prepared images.
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif", "TIFF": "tif",
              "WEBP": "webp", "MPO": "jpg"}


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
        if self.orientation in SWAPPING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.format, self.format.lower())



def probe_image(data: bytes) -> ImageInfo:
    """Size, format and EXIF orientation of image bytes, and proof that they decode.

    JPEGs decode in draft mode (1/8 scale: the whole entropy-coded stream is still read,
    so truncated or corrupt files fail, at a fraction of the cost); other formats decode
    fully. Raises ImageError for anything unusable; never hangs on a huge header.
    """
    with open_image(data) as image:
        info = ImageInfo(image.format or "unknown", image.width, image.height)
        try:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
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
            raise ImageError("image_corrupt", f"image does not decode: {error_text(exc)}") from None
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
    with open_image(data) as image:
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
        if tag == EXIF_ORIENTATION:
            return (base + entry + 8, order) if kind == 3 and count == 1 else None
    return None


@dataclass(frozen=True)
class ImageFrame:
    """The frame the annotation was drawn in: the mask size, and whether to rotate pixels."""

    width: int
    height: int
    rotate: bool  # True: the annotation is in the EXIF-rotated frame


def tool_rotates(fmt: str, version: str | None) -> bool:
    """Whether the tool showed the annotator the EXIF-rotated image.

    Labelme >= 3.11 does (older versions, or files with no version, do not); LabelImg does
    for VOC and YOLO (from 1.8.4; its files carry no version). A merged sample follows its
    Labelme file.
    """
    if "labelme" not in fmt.split("+"):
        return True
    parts = []
    for text in (version or "").split(".")[:2]:
        digits = "".join(ch for ch in text if ch.isdigit())
        if not digits:
            return False
        parts.append(int(digits))
    return tuple(parts) >= LABELME_ROTATES_FROM


def decide_frame(declared: tuple[int, int] | None, image: ImageInfo, fmt: str,
                 version: str | None) -> tuple[ImageFrame | None, str | None]:
    """Compare the declared size with the raw and the EXIF-rotated size; never rotate blindly.

    Returns (frame, None), or (None, message) when the declared size matches neither.
    - no EXIF orientation: the raw frame; the declared size (if any) must equal the image's.
    - declared equals the raw size only: raw frame; the rotated size only: rotated frame.
    - both (a square image, or a flip/180 degree orientation) or no declared size: the frame
      the tool showed (`tool_rotates`).
    """
    raw = (image.width, image.height)
    rotated = image.rotated_size
    if image.orientation == 1:
        if declared is None or declared == raw:
            return ImageFrame(*raw, rotate=False), None
        return None, (f"declared image size {_size(declared)} must equal the image's real size "
                      f"{_size(raw)}")
    if declared is None or (declared == raw and declared == rotated):
        rotate = tool_rotates(fmt, version)
    elif declared == rotated:
        rotate = True
    elif declared == raw:
        rotate = False
    else:
        return None, (f"declared image size {_size(declared)} must equal the image's real size, "
                      f"got {_size(raw)} as stored and {_size(rotated)} after EXIF rotation "
                      f"(orientation {image.orientation})")
    return (ImageFrame(*rotated, rotate=True) if rotate else ImageFrame(*raw, rotate=False)), None


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
