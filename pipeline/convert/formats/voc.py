"""Pascal VOC XML (LabelImg, CVAT, ...) and MIT LabelMe XML (CVAT's "LabelMe 3.0") -> Record.

Both have the root <annotation>; each <object> is read by what it holds: a <bndbox> is a VOC
box ("rectangle"), a <polygon> of <pt><x>..</x><y>..</y></pt> points is a LabelMe polygon
(drawn as a Labelme polygon, coordinates as written; with <type>bounding_box</type> it is the
box of its points), a <segm> (a LabelMe mask in a separate PNG) is passed on as kind "segm",
which validation reports as undrawable (never background). <deleted>1</deleted> objects are
skipped. A file with LabelMe objects, or an <imagesize> instead of a <size>, is format
"labelme_xml". `<difficult>1</difficult>` sets Shape.difficult (convert.difficult decides).

- Parsed with defusedxml: DTDs, entities and external references are refused (error issue),
  so an entity bomb neither crashes nor hangs the stage.
- VOC coordinates are 1-based inclusive pixel indices (LabelImg truncates floats: int(float(v))).
  A box becomes corners (xmin-1, ymin-1), (xmax-1, ymax-1) in Labelme's 0-based frame, so PIL's
  inclusive rectangle fill covers exactly the box. xmax <= xmin or ymax <= ymin is an error
  ("zero_box"); boxes past the border pass through (validation clips them and warns).
- A missing or zero `<size>` gives width/height None.
- The image: an absolute `<path>` from another machine is ignored (used only when it lies inside
  the raw dir); the image is looked up by `<filename>` (with or without extension), then by the
  XML's own stem, in the XML's dir, then in the sibling dir named by `<folder>` (LabelImg's
  image dir name, e.g. annotations/ + images/), then in sibling `JPEGImages/`, `images/` and
  `Images/`; for LabelMe also in `<folder>` below the XML's dir (Datumaro's layout) and in the
  mirror of an `Annotations/...` dir under `Images/...` (the MIT LabelMe collection layout).
- A LabelMe <imagesize> gives the size as <nrows> (height) and <ncols> (width).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from xml.etree.ElementTree import Element

import defusedxml
import defusedxml.ElementTree as DET

from pipeline.convert.formats import (
    find_image_by_stem,
    is_image_name,
    is_inside,
    reader_result,
    rel_posix,
    unusable_size,
)
from pipeline.core.records import Issue, Record, Shape

_SIBLING_IMAGE_DIRS = ("JPEGImages", "images", "Images")
_CVAT_HINT = ("a CVAT for images XML (root <annotations>) is not read: export the task as "
              "'LabelMe 3.0' or 'PASCAL VOC' from CVAT")


def read_voc(path: Path, raw_dir: Path) -> tuple[Record | None, list[Issue]]:
    """Read a LabelImg VOC XML file; the record is None exactly when an issue is an error."""
    file = rel_posix(path, raw_dir)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [Issue(file, None, "read_error", "error", f"cannot read {file}: {exc}")]
    try:
        root = DET.fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        return None, [
            Issue(
                file,
                None,
                "unsafe_xml",
                "error",
                f"{file} must be plain XML without DTD or entities, got {exc!r}",
            )
        ]
    except (ET.ParseError, ValueError) as exc:
        return None, [
            Issue(file, None, "invalid_xml", "error", f"{file} must be valid XML, got {exc}")
        ]
    if root.tag != "annotation":
        hint = _CVAT_HINT if root.tag == "annotations" else f"got root <{root.tag}>"
        return None, [
            Issue(
                file,
                None,
                "not_voc",
                "error",
                f"{file} must be a Pascal VOC or LabelMe XML annotation (root <annotation>): "
                f"{hint}",
            )
        ]

    labelme = _is_labelme(root)
    issues: list[Issue] = []
    shapes: list[Shape] = []
    for index, obj in enumerate(root.findall("object")):
        shape, problem = _read_any_object(obj, index, file)
        issues.extend(problem)
        if shape is not None:
            shapes.append(shape)
    width, height, size_issues = _declared_size(root, file)
    issues.extend(size_issues)
    image, image_issues = _find_image(root, path, raw_dir, file)
    issues.extend(image_issues)
    return reader_result(path, raw_dir, "labelme_xml" if labelme else "voc", issues,
                         image_path=image, image_data=None, width=width, height=height,
                         shapes=shapes)


def _is_labelme(root: Element) -> bool:
    """A LabelMe XML file: objects with <polygon>/<segm> and none with a <bndbox>, or an
    <imagesize> and no VOC <size>."""
    objects = root.findall("object")
    if any(o.find("bndbox") is not None for o in objects):
        return False
    if any(o.find("polygon") is not None or o.find("segm") is not None for o in objects):
        return True
    return root.find("imagesize") is not None and root.find("size") is None


def _read_any_object(obj: Element, index: int, file: str
                     ) -> tuple[Shape | None, list[Issue]]:
    """One <object>: a VOC box, a LabelMe polygon or mask, or an error naming both formats."""
    if (_text(obj, "deleted") or "0") not in ("0", "false", "no"):
        return None, []  # LabelMe: the annotator deleted it
    if obj.find("bndbox") is not None:
        return _read_object(obj, index, file)
    if obj.find("polygon") is not None or obj.find("segm") is not None:
        return _read_labelme_object(obj, index, file)
    name = _text(obj, "name")
    label = f" ({name})" if name else ""
    return None, [Issue(file, index, "bad_box", "error",
                        f"{file} object {index}{label}: must have a <bndbox> (Pascal VOC) or a "
                        f"<polygon> (LabelMe XML), got neither")]


def _read_labelme_object(obj: Element, index: int, file: str
                         ) -> tuple[Shape | None, list[Issue]]:
    """A LabelMe XML <object>: <polygon> points (or its box), or a <segm> passed on."""
    label = _text(obj, "name")
    where = f"{file} object {index} (LabelMe XML)"
    if not label:
        return None, [Issue(file, index, "bad_label", "error",
                            f"{where}: <name> must be a non-empty label, got {label!r}")]
    polygon = obj.find("polygon")
    if polygon is None:  # <segm>: a mask PNG of its own; its <box> is where it lies
        segm = obj.find("segm")
        box = None if segm is None else segm.find("box")
        corners = [_number(_text(box, k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        points = () if None in corners else ((corners[0], corners[1]), (corners[2], corners[3]))
        return Shape(label, "segm", points, index), []  # type: ignore[arg-type]
    points = []
    for i, pt in enumerate(polygon.findall("pt")):
        x, y = _number(_text(pt, "x")), _number(_text(pt, "y"))
        if x is None or y is None:
            return None, [Issue(file, index, "bad_points", "error",
                                f"{file} object {index} ({label}, LabelMe XML): <pt> {i} must "
                                f"have numbers <x> and <y>, "
                                f"got x={_text(pt, 'x')!r} y={_text(pt, 'y')!r}")]
        points.append((x, y))
    if _text(obj, "type") == "bounding_box" and points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return Shape(label, "rectangle", ((min(xs), min(ys)), (max(xs), max(ys))), index,
                     tool_kind="bounding_box"), []
    return Shape(label, "polygon", tuple(points), index), []


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def _text(element: Element | None, tag: str) -> str | None:
    """Stripped text of child `tag`, or None when missing or empty."""
    if element is None:
        return None
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return None
    return child.text.strip()


def _labelimg_int(text: str | None) -> int | None:
    """LabelImg's int(float(v)) truncation; None when missing or not a finite number."""
    if text is None:
        return None
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        return None


def _read_object(obj: Element, index: int, file: str) -> tuple[Shape | None, list[Issue]]:
    where = f"{file} object {index}"
    issues: list[Issue] = []
    name = obj.find("name")
    label = None if name is None or name.text is None else name.text.strip()
    if not label:
        issues.append(
            Issue(
                file,
                index,
                "bad_label",
                "error",
                f"{where}: <name> must be a non-empty label, got {label!r}",
            )
        )
    box = obj.find("bndbox")
    if box is None:  # _read_any_object dispatches only objects that have one
        return None, issues
    keys = ("xmin", "ymin", "xmax", "ymax")
    texts = [_text(box, key) for key in keys]
    values = [_labelimg_int(t) for t in texts]
    bad = [f"{k}={t!r}" for k, t, v in zip(keys, texts, values, strict=True) if v is None]
    if bad:
        issues.append(
            Issue(
                file,
                index,
                "bad_box",
                "error",
                f"{where}: <bndbox> xmin/ymin/xmax/ymax must be numbers, got {', '.join(bad)}",
            )
        )
        return None, issues
    xmin, ymin, xmax, ymax = (v for v in values if v is not None)
    if xmax <= xmin or ymax <= ymin:
        issues.append(
            Issue(
                file,
                index,
                "zero_box",
                "error",
                f"{where} ({label}): box must have xmax > xmin and ymax > ymin, got "
                f"xmin={xmin} ymin={ymin} xmax={xmax} ymax={ymax}",
            )
        )
    if issues:
        return None, issues
    points = ((float(xmin - 1), float(ymin - 1)), (float(xmax - 1), float(ymax - 1)))
    difficult = (_text(obj, "difficult") or "0").lower() in ("1", "true")
    return Shape(str(label), "rectangle", points, index, difficult=difficult), []


def _declared_size(root: Element, file: str) -> tuple[int | None, int | None, list[Issue]]:
    size = root.find("size")
    if size is not None:
        wt, ht, tags = _text(size, "width"), _text(size, "height"), "<size> width/height"
    elif root.find("imagesize") is not None:
        labelme = root.find("imagesize")
        wt, ht, tags = (_text(labelme, "ncols"), _text(labelme, "nrows"),
                        "<imagesize> ncols/nrows")
    else:
        return None, None, []
    width, height = _labelimg_int(wt), _labelimg_int(ht)
    if (wt is not None and width is None) or (ht is not None and height is None):
        return unusable_size(file, f"{file}: {tags} must be integers, got {wt!r} x {ht!r}; "
                                   "ignored them")
    if width is None or height is None or width <= 0 or height <= 0:
        return None, None, []  # missing or zero size (LabelImg writes 0 when it did not know)
    return width, height, []


def _search_dirs(root: Element, xml_dir: Path, raw_dir: Path) -> list[Path]:
    """Dirs that may hold the image, nearest first, all inside the raw dir."""
    folder = _text(root, "folder")
    folder_name = PurePosixPath(folder.replace("\\", "/")).name if folder else ""
    candidates = [
        xml_dir,
        *([xml_dir / folder_name] if folder_name else []),  # Datumaro: <xml dir>/<folder>/
        *(xml_dir.parent / name for name in (folder_name, *_SIBLING_IMAGE_DIRS) if name),
        *_mirrored(xml_dir, raw_dir),
    ]
    dirs: list[Path] = []
    for candidate in candidates:
        if candidate not in dirs and (candidate == xml_dir or (
                candidate.is_dir() and is_inside(candidate, raw_dir))):
            dirs.append(candidate)
    return dirs


def _mirrored(xml_dir: Path, raw_dir: Path) -> list[Path]:
    """The MIT LabelMe layout: Annotations/<collection>/x.xml -> Images/<collection>/x.jpg."""
    parts = rel_posix(xml_dir, raw_dir).split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("Annotations", "annotations"):
            image_part = "Images" if parts[i] == "Annotations" else "images"
            return [Path(raw_dir, *parts[:i], image_part, *parts[i + 1:])]
    return []


def _find_image(
    root: Element, path: Path, raw_dir: Path, file: str
) -> tuple[str | None, list[Issue]]:
    """The image of this XML, relative to the raw dir, or an error issue."""
    given = _text(root, "path")
    if given and PurePosixPath(given).is_absolute():  # used only when it is inside raw_dir
        candidate = Path(given)
        if is_inside(candidate, raw_dir) and is_image_name(candidate.name) and candidate.is_file():
            return rel_posix(candidate, raw_dir), []
    filename = _text(root, "filename")
    name = PurePosixPath(filename.replace("\\", "/")).name if filename else ""
    dirs = _search_dirs(root, path.parent, raw_dir)
    if name and is_image_name(name):  # the exact name in every folder before any stem search
        for directory in dirs:
            exact = directory / name
            if exact.is_file() and is_inside(exact, raw_dir):
                return rel_posix(exact, raw_dir), []
    if name:
        for directory in dirs:
            stem = PurePosixPath(name).stem if is_image_name(name) else name
            found = find_image_by_stem(directory, stem)
            if found is not None and is_inside(found, raw_dir):
                return rel_posix(found, raw_dir), []
    for directory in dirs:
        found = find_image_by_stem(directory, path.stem)
        if found is not None and is_inside(found, raw_dir):
            issues = []
            if name:
                issues.append(
                    Issue(
                        file,
                        None,
                        "image_path_wrong",
                        "warning",
                        f"{file}: <filename> must name the image, got {filename!r} (not found); "
                        f"using {rel_posix(found, raw_dir)!r}",
                    )
                )
            return rel_posix(found, raw_dir), issues
    where = ", ".join(repr(rel_posix(d, raw_dir)) for d in dirs)
    return None, [
        Issue(
            file,
            None,
            "image_missing",
            "error",
            f"{file}: the image must exist inside the raw dir, got no image named by "
            f"<filename> {filename!r} or {path.stem!r} in {where}",
        )
    ]
