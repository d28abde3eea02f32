"""YOLO txt (LabelImg, Darknet, Ultralytics detect/segment/OBB) -> Record.

- The class names come from the nearest class list in the txt's dir or an ancestor dir inside
  the raw dir: LabelImg's `classes.txt` or Darknet's `obj.names` (`*.names`), one name per
  line; or an Ultralytics dataset YAML (`data.yaml`, or any `*.yaml` with `names:`), `names`
  as a list or as a dict {id: name} (ids may be sparse), `nc:` checked against it when given.
  In one dir the order is classes.txt, obj.names, other *.names, data.yaml, other YAMLs.
- Each line is a box `class cx cy w h` (centre and size normalised to the image size), or a
  YOLO-seg / OBB polygon `class x1 y1 x2 y2 x3 y3 ...` (3 or more normalised points). A YAML
  with `kpt_shape:` (Ultralytics pose) has keypoints after the box: the box is read, the
  keypoints are not. Blank lines are skipped.
- The image is the same-stem image beside the txt or, Ultralytics' layout, in the folder with
  the txt's last `labels` folder replaced by `images` (`labels/train/x.txt` ->
  `images/train/x.jpg`, `labels/x.txt` -> `images/x.jpg`). Its size is read from the header
  only (no decoding); when its EXIF orientation swaps the axes the rotated size is used, since
  LabelImg shows (and annotates) the rotated image. Record.width/height = that size.
- A box becomes corners at inclusive pixel indices (round(x0), round(y0)),
  (round(x1) - 1, round(y1) - 1), x0 = (cx - w/2) * W etc. (Python's round, like LabelImg).
  A box that covers no pixel (w or h <= 0, or round(x1) <= round(x0)) is an error ("zero_box");
  boxes past the border pass through (validation clips them and warns). A polygon becomes
  its points (x * W, y * H) in Labelme's continuous frame, drawn as a Labelme polygon.
- Which txt files are labels at all (README.txt, Darknet's train.txt image lists, MOT rows,
  labels without an image) is decided when the files are found (see formats/__init__.py).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from pipeline.convert.formats import (
    CLASSES_TXT,
    find_image_by_stem,
    is_inside,
    normalized,
    read_problem,
    read_text,
    reader_result,
    rel_posix,
)
from pipeline.core.records import Issue, Point, Record, Shape
from pipeline.params import BoundedLoader
from pipeline.storage.files import file_stamp
from pipeline.storage.images import EXIF_ORIENTATION, PIL_ERRORS, SWAPPING_ORIENTATIONS

#: Class list files by name, in the order they are preferred within one dir.
CLASS_LIST_NAMES = (CLASSES_TXT, "obj.names")
YAML_SUFFIXES = (".yaml", ".yml")
#: Largest dataset YAML read for `names:` (a class list is a few KB).
MAX_YAML_BYTES = 1 << 20
CLASS_LIST_HINT = f"{CLASSES_TXT}, obj.names or a data.yaml with names:"


@dataclass(frozen=True)
class ClassList:
    """A YOLO class list: class id -> name, and whether lines carry pose keypoints."""

    names: dict[int, str]
    keypoints: bool = False

    def describe_ids(self) -> str:
        ids = sorted(self.names)
        if ids == list(range(len(ids))):
            return f"in 0..{len(ids) - 1}"
        return f"one of the {len(ids)} ids listed ({ids[0]}..{ids[-1]}, with gaps)"


# --------------------------------------------------------------------------- class lists


def class_list_name(directory: str, filenames: list[str] | set[str]) -> str | None:
    """The class list among `filenames` of `directory` (os.walk's spelling), by preference:
    classes.txt, obj.names, other *.names, data.yaml, other YAMLs that have `names:`."""
    names = set(filenames)
    for name in CLASS_LIST_NAMES:
        if name in names:
            return name
    visible = sorted(n for n in names if not n.startswith("."))
    for name in visible:
        if name.lower().endswith(".names"):
            return name
    yamls = [n for n in visible if n.lower().endswith(YAML_SUFFIXES)]
    yamls.sort(key=lambda n: (n.lower().rsplit(".", 1)[0] != "data", n))
    for name in yamls:
        if _yaml_has_names(os.path.join(directory, name)):
            return name
    return None


def find_class_list(path: Path, raw_dir: Path) -> Path | None:
    """The nearest class list in the dir of `path` or an ancestor dir inside `raw_dir`."""
    top = normalized(raw_dir)
    directory = normalized(path.parent)
    while directory.is_relative_to(top):
        try:
            found = class_list_name(str(directory), os.listdir(directory))
        except OSError:
            found = None
        if found is not None:
            return Path(raw_dir) / (directory / found).relative_to(top)
        if directory == top:
            break
        directory = directory.parent
    return None


#: Keep the old name: the nearest class list (any kind, not only classes.txt).
find_classes_txt = find_class_list


def parse_classes(text: str) -> list[str]:
    """LabelImg's class list: one name per line, trailing newlines dropped, names stripped."""
    return [line.strip() for line in text.strip("\r\n").splitlines()]


def read_class_list(path: Path, raw_dir: Path) -> tuple[ClassList | None, list[Issue]]:
    """Read a class list file (text or YAML); issues name the class list file."""
    file = rel_posix(path, raw_dir)
    text, issues = read_text(path, file)
    if text is None:
        return None, issues
    if not path.name.lower().endswith(YAML_SUFFIXES):
        names = parse_classes(text)
        if not names:
            return None, [*issues, Issue(file, None, "no_classes", "error",
                                         f"{file} must list at least one class name, got none")]
        return ClassList(dict(enumerate(names))), issues
    data, problem = _load_yaml(text)
    if problem is None:
        classes, problem = _yaml_classes(data)
        if classes is not None:
            return classes, issues
    return None, [*issues, Issue(file, None, "no_classes", "error",
                                 f"{file} must be a YOLO dataset YAML whose names: is a list or "
                                 f"an {{id: name}} mapping, got {problem}")]


def _yaml_classes(data: Any) -> tuple[ClassList | None, str]:
    """The class list of a parsed dataset YAML, or (None, what is wrong)."""
    if not isinstance(data, dict) or "names" not in data:
        return None, "no names: key"
    names = data["names"]
    if isinstance(names, list) and names and all(isinstance(n, str | int) for n in names):
        found = {i: str(n) for i, n in enumerate(names)}
    elif isinstance(names, dict) and names and all(
            _as_id(k) is not None and isinstance(v, str | int) for k, v in names.items()):
        found = {_as_id(k): str(v) for k, v in names.items()}  # type: ignore[misc]
    else:
        return None, f"names: {_short(names)}"
    nc = data.get("nc")
    if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool)
                           or len(found) > nc or max(found) >= nc
                           or (isinstance(names, list) and len(found) != nc)):
        return None, f"nc: {nc!r} with {len(found)} names (nc must be the number of classes)"
    return ClassList(found, keypoints="kpt_shape" in data), ""


def _as_id(key: Any) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key if key >= 0 else None
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return None


def _yaml_has_names(path: str) -> bool:
    """True when the YAML file at `path` is a mapping with a `names:` key (memoised by stamp:
    a dataset has a few YAMLs, read once however many labels lie below them)."""
    try:
        stamp = file_stamp(path)  # None for a FIFO (it would block the read) or a missing file
    except OSError:
        return False
    return stamp is not None and _yaml_has_names_at(path, stamp.mtime_ns, stamp.size)


@functools.lru_cache(maxsize=4096)
def _yaml_has_names_at(path: str, mtime_ns: int, size: int) -> bool:
    """`_yaml_has_names` for one version of the file (mtime and size are the memo's key)."""
    del mtime_ns  # only part of the key: a changed file is read again
    if size > MAX_YAML_BYTES:
        return False
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return False
    data, problem = _load_yaml(raw.decode("utf-8-sig", errors="replace"))
    return problem is None and isinstance(data, dict) and "names" in data


def _load_yaml(text: str) -> tuple[Any, str | None]:
    if len(text) > MAX_YAML_BYTES:
        return None, "a YAML file over 1 MB"
    try:
        return yaml.load(text, Loader=BoundedLoader), None  # safe, bounded (params.py)
    except yaml.YAMLError as exc:
        return None, f"invalid YAML ({_short(str(exc))})"
    except RecursionError:  # the composer recurses per nesting level
        return None, "invalid YAML (nested too deep)"


# --------------------------------------------------------------------------- images


def image_dirs(rel_dir: str) -> list[str]:
    """Raw-relative dirs (posix, "" = the raw dir) that may hold the image of a label in
    `rel_dir`: the same dir, then the dir with its last `labels` folder named `images`."""
    parts = [] if rel_dir in ("", ".") else rel_dir.split("/")
    dirs = ["/".join(parts)]
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "labels":
            dirs.append("/".join([*parts[:i], "images", *parts[i + 1:]]))
            break
    return dirs


def find_label_image(path: Path, raw_dir: Path) -> Path | None:
    """The image of a label file (see `image_dirs`), inside the raw dir; else None."""
    rel_dir = rel_posix(path.parent, raw_dir)
    for directory in image_dirs(rel_dir):
        found = find_image_by_stem(Path(raw_dir) / directory if directory else Path(raw_dir),
                                   path.stem)
        if found is not None and is_inside(found, raw_dir):
            return found
    return None


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


# --------------------------------------------------------------------------- the reader


def read_yolo(path: Path, raw_dir: Path) -> tuple[Record | None, list[Issue]]:
    """Read a YOLO txt file; the record is None exactly when an issue is an error."""
    file = rel_posix(path, raw_dir)
    classes, classes_file, issues = _classes_for(path, raw_dir, file)
    text, text_issues = read_text(path, file)
    issues += text_issues
    if classes is None or text is None:
        return None, issues
    image, size, image_issues = _image_for(path, raw_dir, file)
    issues += image_issues
    if image is None or size is None:
        return None, issues
    shapes, line_issues = _read_lines(text, classes, size, file, classes_file)
    issues += line_issues
    return reader_result(path, raw_dir, "yolo", issues, image_path=image, image_data=None,
                         width=size[0], height=size[1], shapes=shapes)


def _classes_for(path: Path, raw_dir: Path, file: str
                 ) -> tuple[ClassList | None, str, list[Issue]]:
    """Step 1: the label's class list (and its raw-relative path), or an error issue."""
    classes_path = find_class_list(path, raw_dir)
    if classes_path is None:
        return None, "", [Issue(file, None, "no_classes", "error",
                                f"{file}: a YOLO label must have a class list ({CLASS_LIST_HINT})"
                                " in its dir or an ancestor dir inside the raw dir, got none")]
    classes_file = rel_posix(classes_path, raw_dir)
    classes, issues = read_class_list(classes_path, raw_dir)
    if classes is None:  # the class list's own problem, told for this label
        issues = [Issue(file, None, i.check, i.severity, f"{file}: {i.message}")
                  if i.severity == "error" else i for i in issues]
    return classes, classes_file, issues


def _image_for(path: Path, raw_dir: Path, file: str
               ) -> tuple[str | None, tuple[int, int] | None, list[Issue]]:
    """Step 2: the label's image and its size as the annotator saw it, or an error issue."""
    image = find_label_image(path, raw_dir)
    if image is None:
        where = " or ".join(repr(d or ".") for d in image_dirs(rel_posix(path.parent, raw_dir)))
        return None, None, [Issue(file, None, "image_missing", "error",
                                  f"{file}: the image must exist as {path.stem}.<jpg|png|...> "
                                  f"in {where}, got none")]
    image_file = rel_posix(image, raw_dir)
    problem = read_problem(image, raw_dir)
    if problem is not None:  # a link out of the raw dir: not even its header is read
        return None, None, [Issue(file, None, problem[0], "error",
                                  f"{file}: image {image_file} {problem[1]}")]
    try:
        return image_file, image_size(image), []
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, None, [Issue(file, None, "image_too_large", "error",
                                  f"{file}: image {image_file} must be within Pillow's pixel "
                                  f"limit, got {exc}")]
    except PIL_ERRORS as exc:
        return None, None, [Issue(file, None, "image_corrupt", "error",
                                  f"{file}: image {image_file} must be a readable image, got "
                                  f"{exc}")]


def _read_lines(text: str, classes: ClassList, size: tuple[int, int], file: str,
                classes_file: str) -> tuple[list[Shape], list[Issue]]:
    """Step 3: every non-blank line as a shape, or an error issue naming the line."""
    shapes: list[Shape] = []
    issues: list[Issue] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        shape, problem = _read_line(line, line_no - 1, classes, *size)
        if problem:
            check, message = problem
            issues.append(Issue(file, line_no - 1, check, "error",
                                f"{file} line {line_no}: {message} (classes from "
                                f"{classes_file})"))
        elif shape is not None:
            shapes.append(shape)
    return shapes, issues


def _read_line(
    line: str, index: int, classes: ClassList, width: int, height: int
) -> tuple[Shape | None, tuple[str, str] | None]:
    """One label line -> rectangle or polygon Shape, or (check, message) for an error."""
    fields = line.split()
    cls = _as_class(fields[0])
    if cls is None:
        return None, ("bad_line", f"class must be an integer index, got {fields[0]!r}")
    try:
        values = [float(v) for v in fields[1:]]
    except ValueError:
        return None, ("bad_line", f"coordinates must be numbers, got {' '.join(fields[1:])!r}")
    if not all(math.isfinite(v) for v in values):
        return None, ("bad_line", f"coordinates must be finite, got {' '.join(fields[1:])!r}")
    n = len(values)
    is_box = n == 4 or (classes.keypoints and n > 4)
    if not is_box and (n < 6 or n % 2):
        return None, ("bad_line", "must be 'class cx cy w h' (a box) or 'class x1 y1 x2 y2 x3 y3"
                      f" ...' (a polygon of 3 or more points), got {n} numbers in "
                      f"{_short(line.strip())}")
    if cls not in classes.names:
        return None, ("bad_class", f"class index must be {classes.describe_ids()}, got {cls}")
    label = classes.names[cls]
    if is_box:
        return _box(label, values[:4], index, width, height)
    # rounded to 1e-9 px: x * W of a normalised x carries float noise (1017.0000000000001),
    # and Pillow's edge filling is sensitive to it; a polygon exported from a Labelme JSON
    # then draws exactly the JSON's pixels
    points: tuple[Point, ...] = tuple((round(values[i] * width, 9),
                                       round(values[i + 1] * height, 9)) for i in range(0, n, 2))
    return Shape(label, "polygon", points, index), None


def _box(label: str, values: list[float], index: int, width: int, height: int
         ) -> tuple[Shape | None, tuple[str, str] | None]:
    cx, cy, w, h = values
    x0, x1 = round((cx - w / 2) * width), round((cx + w / 2) * width)
    y0, y1 = round((cy - h / 2) * height), round((cy + h / 2) * height)
    if w <= 0 or h <= 0 or x1 <= x0 or y1 <= y0:
        return None, (
            "zero_box",
            f"box must cover at least one pixel, got w={w:g} h={h:g} on a {width}x{height} "
            f"image ({label})",
        )
    points = ((float(x0), float(y0)), (float(x1 - 1), float(y1 - 1)))
    return Shape(label, "rectangle", points, index), None


def _as_class(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)  # "0.0": some exporters write the class as a float
    except ValueError:
        return None
    return int(value) if value.is_integer() and value >= 0 else None


def looks_like_labels(text: str) -> bool:
    """True when every non-blank line parses as a YOLO box or polygon line (class index and
    4, or an even number >= 6, of numbers); an empty text is a label of an empty image."""
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if _as_class(fields[0]) is None or not (len(fields) == 5 or (
                len(fields) >= 7 and len(fields) % 2 == 1)):
            return False
        try:
            if not all(math.isfinite(float(v)) for v in fields[1:]):
                return False
        except ValueError:
            return False
    return True


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
