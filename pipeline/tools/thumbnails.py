"""Small pictures of the files with validation problems, the offending shapes outlined.

For the HTML report: each annotation file named in reports/validation.json is read again
with the project's readers (convert/formats), its image decoded at reduced size, and every
shape drawn thin, the shapes an issue names thick in the issue's colour (red = error, orange =
warning); an issue about the whole file frames the picture. Files the readers cannot read, or
whose image is missing, get no picture but the reason. Cheap by construction: only files with
problems, at most `cap` of them (errors first), thumbnails of at most `size` px, JPEG decoded
at reduced scale (Pillow's draft mode).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from pipeline.convert.formats import is_inside, read_annotation
from pipeline.core.records import Record, Shape
from pipeline.storage.images import EXIF_ORIENTATION, PIL_ERRORS, ImageError, open_image

COLOURS = {"error": (230, 0, 0), "warning": (255, 150, 0)}
_OTHER = (255, 255, 255)  # shapes without an issue: thin, white
_MAX_COORD = 1e6  # coordinates beyond this (or NaN) are not drawn: PIL works in C ints
#: EXIF orientation -> the transpose that shows the image upright, as a viewer does
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class Problem:
    """One entry of validation.json."""

    file: str
    shape: int | None
    check: str
    severity: str
    message: str


@dataclass(frozen=True)
class Thumbnail:
    jpeg: bytes | None  # None: no picture, `note` says why
    note: str = ""


def files_to_draw(problems: Sequence[Problem], cap: int) -> list[str]:
    """The files with problems, errors first, then by name; at most `cap`."""
    worst: dict[str, int] = {}
    for p in problems:
        worst[p.file] = min(worst.get(p.file, 1), 0 if p.severity == "error" else 1)
    return sorted(worst, key=lambda f: (worst[f], f))[:cap]


def draw_thumbnails(problems: Sequence[Problem], raw_dir: Path, *, size: int = 200,
                    cap: int = 40) -> dict[str, Thumbnail]:
    """file -> Thumbnail for the first `cap` files with problems."""
    grouped = by_file(problems)
    return {file: thumbnail(raw_dir, file, grouped[file], size)
            for file in files_to_draw(problems, cap)}


def by_file(problems: Sequence[Problem]) -> dict[str, list[Problem]]:
    """file -> its problems, in their order."""
    grouped: dict[str, list[Problem]] = {}
    for p in problems:
        grouped.setdefault(p.file, []).append(p)
    return grouped


def thumbnail(raw_dir: Path, file: str, problems: Sequence[Problem], size: int) -> Thumbnail:
    """One file's picture with its problems drawn, or the reason there is none."""
    path = raw_dir / file
    if not is_inside(path, raw_dir) or not path.is_file():
        return Thumbnail(None, "no picture: the file is not in the raw folder any more")
    record, _ = read_annotation(path, raw_dir)
    if record is None:
        return Thumbnail(None, "no picture: the file cannot be read as an annotation")
    try:
        data = record.image_data
        if data is None and record.image_path is not None:
            data = (raw_dir / record.image_path).read_bytes()
        if data is None:
            return Thumbnail(None, "no picture: the annotation names no image")
        picture, frame = _picture(data, record, size)
    except (ImageError, OSError, *PIL_ERRORS):
        return Thumbnail(None, "no picture: the image cannot be read")
    _draw(picture, frame, record.shapes, problems)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    return Thumbnail(buffer.getvalue())


def _picture(data: bytes, record: Record, size: int) -> tuple[Image.Image, tuple[int, int]]:
    """The image at most `size` px, in the frame the annotation declares; and that frame
    (the declared size, else the upright image's size)."""
    with open_image(data) as image:
        stored = image.size
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        image.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale, much cheaper
        picture = image.convert("RGB")
    declared = (record.width, record.height) if record.width and record.height else None
    # the annotator saw the EXIF-upright image unless the declared size is the stored one
    if orientation in _UPRIGHT and declared != stored:
        picture = picture.transpose(_UPRIGHT[orientation])
        stored = (stored[1], stored[0]) if orientation >= 5 else stored
    frame = declared or stored
    scale = size / max(frame)
    thumb = (max(1, round(frame[0] * scale)), max(1, round(frame[1] * scale)))
    return picture.resize(thumb, Image.Resampling.BILINEAR), frame


def _draw(picture: Image.Image, frame: tuple[int, int], shapes: Sequence[Shape],
          problems: Sequence[Problem]) -> None:
    """Every shape thin and white, the shapes with a problem thick in its colour; problems
    about the whole file frame the picture."""
    sx, sy = picture.width / frame[0], picture.height / frame[1]
    colour_of: dict[int, tuple[int, int, int]] = {}
    whole_file = None
    for p in sorted(problems, key=lambda p: p.severity == "error"):  # errors win
        if p.shape is None:
            whole_file = COLOURS.get(p.severity, _OTHER)
        else:
            colour_of[p.shape] = COLOURS.get(p.severity, _OTHER)
    draw = ImageDraw.Draw(picture)
    marked = [s for s in shapes if s.index in colour_of]
    for shape in [*(s for s in shapes if s.index not in colour_of), *marked]:  # marked on top
        colour = colour_of.get(shape.index, _OTHER)
        _outline(draw, shape, sx, sy, colour, 3 if shape.index in colour_of else 1)
    if whole_file is not None:
        draw.rectangle((0, 0, picture.width - 1, picture.height - 1), outline=whole_file,
                       width=3)


def _outline(draw: ImageDraw.ImageDraw, shape: Shape, sx: float, sy: float,
             colour: tuple[int, int, int], width: int) -> None:
    """One shape as Labelme draws it, outlined (coordinates scaled to the thumbnail)."""
    points = [(x * sx, y * sy) for x, y in shape.points
              if math.isfinite(x) and math.isfinite(y)
              and abs(x) < _MAX_COORD and abs(y) < _MAX_COORD]
    if not points:
        return
    if shape.kind in ("rectangle", "mask") and len(points) >= 2:
        (x0, y0), (x1, y1) = points[0], points[1]
        draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=colour,
                       width=width)
    elif shape.kind == "circle" and len(points) >= 2:
        (cx, cy), (rx, ry) = points[0], points[1]
        r = math.hypot(rx - cx, ry - cy)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=width)
    elif len(points) == 1 or shape.kind == "point":
        x, y = points[0]
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), outline=colour, width=width)
    elif shape.kind in ("line", "linestrip"):
        draw.line(points, fill=colour, width=width)
    else:  # polygon, or a kind the rasteriser does not know: its points, closed
        draw.line([*points, points[0]], fill=colour, width=width, joint="curve")


def problems_from(entries: Sequence[Mapping[str, object]]) -> list[Problem]:
    """validation.json entries as Problems (an entry missing a field is skipped: the report
    shows what it can)."""
    out = []
    for e in entries:
        shape = e.get("shape")
        if isinstance(e.get("file"), str) and isinstance(e.get("message"), str):
            out.append(Problem(str(e["file"]), shape if isinstance(shape, int) else None,
                               str(e.get("check", "")), str(e.get("severity", "")),
                               str(e["message"])))
    return out
