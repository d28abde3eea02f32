"""Labelme JSON (versions 3.x to 7.x) -> Record.

What is accepted, as Labelme itself writes it over the years, and as X-AnyLabeling and
AnyLabeling write it (the same format with more keys):
- shapes of any `shape_type` (polygon, rectangle, circle, line, linestrip, point, mask, and
  unknown ones such as "points", passed through for validation to report: an error, never
  background); files older than 3.4 have no `shape_type`: every shape is a polygon;
- X-AnyLabeling's 4-point `rectangle` (4 corners of an axis-aligned box = that box, 4 other
  points = the quadrilateral), its `rotation` and Labelme 7's `oriented_rectangle` (4 corners,
  drawn as their polygon); `difficult: true` sets Shape.difficult (convert.difficult decides);
  every other extra key (score, description, attributes, kie_linking, direction, visible,
  text, tags) is ignored: `visible: false` is a display setting and never drops a shape;
- `mask` shapes: two bbox corners (fractional corners kept) + a base64 PNG -> Shape.mask_png;
- `flags` as a list or a dict, `group_id` present, null or missing;
- `imageData` embedded (base64 -> Record.image_data; convert uses it first, like Labelme) or
  null; `imagePath` relative to the JSON, with Windows `\\` separators, or wrong/absolute from
  another machine (then the embedded data or a same-stem image beside the JSON, with a warning);
  an imagePath that resolves outside the raw dir is never read;
- UTF-8 files, else GB18030/GBK (with a warning); NaN/Infinity coordinates pass through as
  floats (validation reports them).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.convert.formats import (
    find_image_by_stem,
    is_foreign_absolute,
    is_image_name,
    is_inside,
    normalized,
    read_text,
    reader_result,
    rel_posix,
    unusable_size,
)
from pipeline.core.records import Issue, Point, Record, Shape, is_error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_COCO_KEYS = {"images", "annotations", "categories"}


def read_labelme(path: Path, raw_dir: Path) -> tuple[Record | None, list[Issue]]:
    """Read a Labelme JSON file; the record is None exactly when an issue is an error."""
    file = rel_posix(path, raw_dir)
    text, issues = read_text(path, file)
    if text is None:
        return None, issues
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        issues.append(
            Issue(file, None, "invalid_json", "error", f"{file} must be valid JSON, got {exc}")
        )
        return None, issues
    problem = _not_labelme(data)
    if problem:
        issues.append(
            Issue(
                file,
                None,
                "not_labelme",
                "error",
                f"{file} must be a Labelme annotation (an object with a 'shapes' list), "
                f"got {problem}",
            )
        )
        return None, issues

    shapes: list[Shape] = []
    for index, raw_shape in enumerate(data["shapes"]):
        shape, shape_issues = _read_shape(raw_shape, index, file)
        issues.extend(shape_issues)
        if shape is not None:
            shapes.append(shape)

    image_data, data_issues = _image_data(data.get("imageData"), file)
    issues.extend(data_issues)
    image_path, image_issues = _resolve_image(
        data.get("imagePath"), path, raw_dir, file, embedded=image_data is not None
    )
    issues.extend(image_issues)
    width, height, size_issues = _declared_size(data, file)
    issues.extend(size_issues)

    version = data.get("version")
    return reader_result(path, raw_dir, "labelme", issues, image_path=image_path,
                         image_data=image_data, width=width, height=height, shapes=shapes,
                         version=None if version is None else str(version))


def _not_labelme(data: Any) -> str:
    """Why `data` is not a Labelme annotation, or "" when it is one."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}"
    if data.keys() >= _COCO_KEYS:
        return "a COCO annotations file (keys images/annotations/categories)"
    if "shapes" not in data:
        keys = ", ".join(sorted(map(str, data))[:6]) or "none"
        return f"an object without 'shapes' (keys: {keys})"
    if not isinstance(data["shapes"], list):
        return f"'shapes' of type {type(data['shapes']).__name__}"
    return ""


def _read_shape(raw: Any, index: int, file: str) -> tuple[Shape | None, list[Issue]]:
    """One Labelme shape -> Shape, or None plus error issues naming the shape."""
    where = f"{file} shape {index}"
    if not isinstance(raw, dict):
        return None, [Issue(file, index, "bad_shape", "error",
                            f"{where} must be an object, got {type(raw).__name__}")]
    issues: list[Issue] = []
    label = raw.get("label")
    if not isinstance(label, str):
        issues.append(Issue(file, index, "bad_label", "error",
                            f"{where}: label must be a string, got {label!r}"))
    kind = raw.get("shape_type")
    if kind is None:  # Labelme < 3.4 has no shape_type: every shape is a polygon
        kind = "polygon"
    if not isinstance(kind, str):
        issues.append(Issue(file, index, "bad_shape", "error",
                            f"{where}: shape_type must be a string, got {kind!r}"))
    points, problem = _points(raw.get("points"))
    if problem:
        issues.append(Issue(file, index, "bad_points", "error",
                            f"{where}: points must be {problem}"))
    mask_png = None
    if kind == "mask":
        mask_png, problem = _mask_png(raw.get("mask"))
        if problem:
            issues.append(Issue(file, index, "bad_mask", "error",
                                f"{where}: mask must be {problem}"))
    group_id, problem = _group_id(raw.get("group_id"))
    if problem:
        issues.append(Issue(file, index, "bad_group_id", "warning",
                            f"{where}: group_id must be an integer or null, got {problem}; "
                            "ignored it"))
    if is_error(issues):
        return None, issues
    kind, points, tool_kind = _tool_shape(str(kind), points)
    return Shape(str(label), kind, points, index, group_id, mask_png,
                 difficult=raw.get("difficult") in (True, 1), tool_kind=tool_kind), issues


def _tool_shape(kind: str, points: tuple[Point, ...]
                ) -> tuple[str, tuple[Point, ...], str | None]:
    """X-AnyLabeling's and Labelme 7's 4-point kinds as something Labelme's converter draws:
    (kind, points, the file's own kind when it differs).

    - a `rectangle` of 4 points that are the corners of an axis-aligned box is that box (its
      two corners, drawn exactly as a Labelme rectangle); 4 other points are the
      quadrilateral (a polygon);
    - `rotation` (X-AnyLabeling) and `oriented_rectangle` (Labelme 7) of 4 points are their
      polygon. With another point count they stay as they are: validation reports them.
    """
    if len(points) != 4 or kind not in ("rectangle", "rotation", "oriented_rectangle"):
        return kind, points, None
    if kind == "rectangle":
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        corners = {(x, y) for x in (min(xs), max(xs)) for y in (min(ys), max(ys))}
        if set(points) == corners:
            return "rectangle", ((min(xs), min(ys)), (max(xs), max(ys))), None
    return "polygon", points, kind


def _points(raw: Any) -> tuple[tuple[Point, ...], str]:
    """Parse [[x, y], ...] into float pairs (NaN/inf kept); problem text "" when fine."""
    if not isinstance(raw, list):
        return (), f"a list of [x, y] pairs, got {_short(raw)}"
    points: list[Point] = []
    for i, point in enumerate(raw):
        if (
            not isinstance(point, list | tuple)
            or len(point) != 2
            or not all(_is_number(v) for v in point)
        ):
            return (), f"a list of [x, y] number pairs, got {_short(point)} at point {i}"
        try:
            points.append((float(point[0]), float(point[1])))
        except OverflowError:
            return (), f"numbers a float can hold, got {_short(point)} at point {i}"
    return tuple(points), ""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _mask_png(raw: Any) -> tuple[bytes | None, str]:
    """Decode a mask shape's base64 PNG; problem text "" when fine."""
    if not isinstance(raw, str) or not raw:
        return None, f"a base64 PNG string, got {_short(raw)}"
    try:
        png = base64.b64decode(raw)
    except (binascii.Error, ValueError) as exc:
        return None, f"valid base64, got an undecodable string ({exc})"
    if not png.startswith(PNG_SIGNATURE):
        return None, f"a PNG image, got bytes starting {png[:8]!r}"
    return png, ""


def _group_id(raw: Any) -> tuple[int | None, str]:
    if raw is None:
        return None, ""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw, ""
    if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        return int(raw), ""
    return None, repr(raw)


def _image_data(raw: Any, file: str) -> tuple[bytes | None, list[Issue]]:
    """Decode embedded imageData; an undecodable one is ignored with a warning."""
    if raw is None or raw == "":
        return None, []
    if isinstance(raw, str):
        try:
            data = base64.b64decode(raw)
        except (binascii.Error, ValueError) as exc:
            problem = f"an undecodable string ({exc})"
        else:
            if data:
                return data, []
            problem = "an empty image"
    else:
        problem = f"a {type(raw).__name__}"
    return None, [
        Issue(
            file,
            None,
            "bad_image_data",
            "warning",
            f"{file}: imageData must be a base64 image or null, got {problem}; ignored it",
        )
    ]


def _resolve_image(
    raw: Any, path: Path, raw_dir: Path, file: str, *, embedded: bool
) -> tuple[str | None, list[Issue]]:
    """Find the image named by imagePath (relative to the JSON) inside the raw dir.

    Returns the image path relative to the raw dir (None when only embedded data is used) and
    the issues: a wrong imagePath falls back to the embedded data, else to a same-stem image
    beside the JSON (warning); no image at all is an error; an imagePath resolving outside the
    raw dir is never read (error without embedded data, warning with it).
    """
    what = f"{file}: imagePath must name an image file inside the raw dir, got {raw!r}"
    if not (isinstance(raw, str) and raw.strip()):
        if embedded:
            return None, []  # no imagePath, the embedded image is the image
        return _fallback_image(what, "no imagePath", path, raw_dir, file, embedded=False)
    found, reason, outside = _named_image(raw, path, raw_dir)
    if found is not None:
        return found, []
    if outside:
        return None, [_outside_issue(what, file, embedded)]
    return _fallback_image(what, reason, path, raw_dir, file, embedded=embedded)


def _named_image(raw: str, path: Path, raw_dir: Path) -> tuple[str | None, str, bool]:
    """The image imagePath names: (raw-relative path, "", False) when it is usable, else
    (None, why not, whether it leads out of the raw dir)."""
    text = raw.replace("\\", "/")
    absolute = is_foreign_absolute(raw)
    # a Windows drive path is foreign here: it never names a file on this machine
    foreign = absolute and not PurePosixPath(text).is_absolute()
    candidate = normalized(Path(text) if absolute else path.parent / text)
    inside = not foreign and is_inside(candidate, raw_dir)
    itself = candidate == normalized(path)
    if inside and not itself and is_image_name(candidate.name) and candidate.is_file():
        return rel_posix(candidate, raw_dir), "", False
    if not inside and not absolute:
        return None, "outside it, never read", True
    reason = "an absolute path from another machine" if absolute else "no such image"
    if itself:
        reason = "the annotation itself"
    elif inside and candidate.is_file():
        reason = "not an image file name"
    return None, reason, False


def _outside_issue(what: str, file: str, embedded: bool) -> Issue:
    if embedded:
        return Issue(file, None, "image_outside_raw", "warning",
                     f"{what} (outside it, never read); using the embedded imageData")
    return Issue(file, None, "image_outside_raw", "error",
                 f"{what} (outside it, never read) and there is no embedded imageData")


def _fallback_image(what: str, reason: str, path: Path, raw_dir: Path, file: str, *,
                    embedded: bool) -> tuple[str | None, list[Issue]]:
    """imagePath is of no use: the embedded data, else a same-stem image beside the JSON."""
    if embedded:
        return None, [Issue(file, None, "image_path_wrong", "warning",
                            f"{what} ({reason}); using the embedded imageData")]
    beside = find_image_by_stem(path.parent, path.stem)
    if beside is not None and is_inside(beside, raw_dir):
        found = rel_posix(beside, raw_dir)
        return found, [Issue(file, None, "image_path_wrong", "warning",
                             f"{what} ({reason}); using {found!r} beside the JSON")]
    return None, [Issue(file, None, "image_missing", "error",
                        f"{what} ({reason}), and there is no embedded imageData nor an image "
                        f"named {path.stem!r} beside the JSON")]


def _declared_size(data: dict[str, Any], file: str) -> tuple[int | None, int | None, list[Issue]]:
    """imageWidth/imageHeight as positive ints; (None, None) when absent or unusable."""
    width, height = data.get("imageWidth"), data.get("imageHeight")
    if width is None and height is None:
        return None, None, []
    values = []
    for value in (width, height):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            return unusable_size(file, f"{file}: imageWidth/imageHeight must be positive "
                                       f"integers, got {width!r} x {height!r}; ignored them")
        values.append(value)
    return values[0], values[1], []


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
