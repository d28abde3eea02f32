"""LabelImg YOLO txt -> Record (boxes as "rectangle" shapes).

- Each line is `class cx cy w h` with centre and size normalised to the image size; class is an
  index into the nearest `classes.txt` (in the txt's dir or an ancestor dir inside the raw dir,
  one class name per line, as LabelImg writes it). Blank lines are skipped.
- The image is the same-stem image beside the txt (or in the sibling `images/` dir of a
  `labels/` dir). Its size is read from the header only (no decoding); when its EXIF orientation
  swaps the axes the rotated size is used, since LabelImg shows (and annotates) the rotated image.
  Record.width/height = that size.
- A box becomes corners at inclusive pixel indices (round(x0), round(y0)),
  (round(x1) - 1, round(y1) - 1), x0 = (cx - w/2) * W etc. (Python's round, like LabelImg).
  A box that covers no pixel (w or h <= 0, or round(x1) <= round(x0)) is an error ("zero_box");
  boxes past the border pass through (validation clips them and warns).
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from pipeline.convert.formats import (
    CLASSES_TXT,
    find_image_by_stem,
    is_inside,
    normalized,
    read_text,
    reader_result,
    rel_posix,
)
from pipeline.core.records import Issue, Record, Shape
from pipeline.storage.images import EXIF_ORIENTATION, PIL_ERRORS, SWAPPING_ORIENTATIONS


def find_classes_txt(path: Path, raw_dir: Path) -> Path | None:
    """The nearest classes.txt in the dir of `path` or an ancestor dir inside `raw_dir`."""
    top = normalized(raw_dir)
    directory = normalized(path.parent)
    while directory.is_relative_to(top):
        candidate = directory / CLASSES_TXT
        if candidate.is_file():
            return Path(raw_dir) / candidate.relative_to(top)
        if directory == top:
            break
        directory = directory.parent
    return None


def parse_classes(text: str) -> list[str]:
    """LabelImg's class list: one name per line, trailing newlines dropped, names stripped."""
    return [line.strip() for line in text.strip("\r\n").splitlines()]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as LabelImg shows the image: from the header, EXIF rotation applied.

    Raises OSError/ValueError etc. (Image.DecompressionBombError for a huge one) when unreadable.
    """
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(EXIF_ORIENTATION)
    if orientation in SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def _find_image(path: Path, raw_dir: Path) -> Path | None:
    dirs = [path.parent]
    if path.parent.name == "labels":
        dirs.append(path.parent.parent / "images")
    for directory in dirs:
        found = find_image_by_stem(directory, path.stem)
        if found is not None and is_inside(found, raw_dir):
            return found
    return None


def read_yolo(path: Path, raw_dir: Path) -> tuple[Record | None, list[Issue]]:
    """Read a LabelImg YOLO txt file; the record is None exactly when an issue is an error."""
    file = rel_posix(path, raw_dir)
    classes_path = find_classes_txt(path, raw_dir)
    if classes_path is None:
        return None, [
            Issue(
                file,
                None,
                "no_classes",
                "error",
                f"{file}: a YOLO label must have a {CLASSES_TXT} in its dir or an ancestor "
                "dir inside the raw dir, got none",
            )
        ]
    classes_file = rel_posix(classes_path, raw_dir)
    classes_text, issues = read_text(classes_path, classes_file)
    text, text_issues = read_text(path, file)
    issues.extend(text_issues)
    if classes_text is None or text is None:
        return None, issues
    classes = parse_classes(classes_text)
    if not classes:
        issues.append(
            Issue(
                file,
                None,
                "no_classes",
                "error",
                f"{file}: {classes_file} must list at least one class name, got none",
            )
        )
        return None, issues

    image = _find_image(path, raw_dir)
    if image is None:
        issues.append(
            Issue(
                file,
                None,
                "image_missing",
                "error",
                f"{file}: the image must exist beside the label as {path.stem}.<jpg|png|...>, "
                "got none",
            )
        )
        return None, issues
    image_file = rel_posix(image, raw_dir)
    try:
        width, height = image_size(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        issues.append(
            Issue(
                file,
                None,
                "image_too_large",
                "error",
                f"{file}: image {image_file} must be within Pillow's pixel limit, got {exc}",
            )
        )
        return None, issues
    except PIL_ERRORS as exc:
        issues.append(
            Issue(
                file,
                None,
                "image_corrupt",
                "error",
                f"{file}: image {image_file} must be a readable image, got {exc}",
            )
        )
        return None, issues

    shapes: list[Shape] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        index = line_no - 1
        shape, problem = _read_line(line, index, classes, width, height)
        if problem:
            check, message = problem
            issues.append(
                Issue(
                    file,
                    index,
                    check,
                    "error",
                    f"{file} line {line_no}: {message} (classes from {classes_file})",
                )
            )
        elif shape is not None:
            shapes.append(shape)
    return reader_result(path, raw_dir, "yolo", issues, image_path=image_file, image_data=None,
                         width=width, height=height, shapes=shapes)


def _read_line(
    line: str, index: int, classes: list[str], width: int, height: int
) -> tuple[Shape | None, tuple[str, str] | None]:
    """One `cls cx cy w h` line -> rectangle Shape, or (check, message) for an error."""
    fields = line.split()
    if len(fields) != 5:
        return None, ("bad_line", f"must be 'class cx cy w h' (5 fields), got {line.strip()!r}")
    try:
        cls = int(fields[0])
    except ValueError:
        return None, ("bad_line", f"class must be an integer index, got {fields[0]!r}")
    try:
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        return None, ("bad_line", f"cx cy w h must be numbers, got {' '.join(fields[1:])!r}")
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        return None, ("bad_line", f"cx cy w h must be finite, got {' '.join(fields[1:])!r}")
    if not 0 <= cls < len(classes):
        return None, (
            "bad_class",
            f"class index must be in 0..{len(classes) - 1}, got {cls}",
        )
    x0, x1 = round((cx - w / 2) * width), round((cx + w / 2) * width)
    y0, y1 = round((cy - h / 2) * height), round((cy + h / 2) * height)
    if w <= 0 or h <= 0 or x1 <= x0 or y1 <= y0:
        return None, (
            "zero_box",
            f"box must cover at least one pixel, got w={w:g} h={h:g} on a {width}x{height} "
            f"image ({classes[cls]})",
        )
    points = ((float(x0), float(y0)), (float(x1 - 1), float(y1 - 1)))
    return Shape(classes[cls], "rectangle", points, index), None
