"""LabelImg Pascal VOC XML -> Record (boxes as "rectangle" shapes).

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
  image dir name, e.g. annotations/ + images/), then in sibling `JPEGImages/` and `images/`.
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
)
from pipeline.core.records import Issue, Record, Shape

_SIBLING_IMAGE_DIRS = ("JPEGImages", "images")


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
        return None, [
            Issue(
                file,
                None,
                "not_voc",
                "error",
                f"{file} must be a Pascal VOC annotation (root <annotation>), "
                f"got root <{root.tag}>",
            )
        ]

    issues: list[Issue] = []
    shapes: list[Shape] = []
    for index, obj in enumerate(root.findall("object")):
        shape, problem = _read_object(obj, index, file)
        issues.extend(problem)
        if shape is not None:
            shapes.append(shape)
    width, height, size_issues = _declared_size(root, file)
    issues.extend(size_issues)
    image, image_issues = _find_image(root, path, raw_dir, file)
    issues.extend(image_issues)
    return reader_result(path, raw_dir, "voc", issues, image_path=image, image_data=None,
                         width=width, height=height, shapes=shapes)


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
    if box is None:
        issues.append(
            Issue(file, index, "bad_box", "error", f"{where}: must have a <bndbox>, got none")
        )
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
    return Shape(str(label), "rectangle", points, index), []


def _declared_size(root: Element, file: str) -> tuple[int | None, int | None, list[Issue]]:
    size = root.find("size")
    if size is None:
        return None, None, []
    wt, ht = _text(size, "width"), _text(size, "height")
    width, height = _labelimg_int(wt), _labelimg_int(ht)
    if (wt is not None and width is None) or (ht is not None and height is None):
        return (
            None,
            None,
            [
                Issue(
                    file,
                    None,
                    "bad_size",
                    "warning",
                    f"{file}: <size> width/height must be integers, got {wt!r} x {ht!r}; "
                    "ignored them",
                )
            ],
        )
    if width is None or height is None or width <= 0 or height <= 0:
        return None, None, []  # missing or zero size (LabelImg writes 0 when it did not know)
    return width, height, []


def _search_dirs(root: Element, xml_dir: Path, raw_dir: Path) -> list[Path]:
    """Dirs that may hold the image, nearest first, all inside the raw dir."""
    dirs = [xml_dir]
    folder = _text(root, "folder")
    names = [
        *([PurePosixPath(folder.replace("\\", "/")).name] if folder else []),
        *_SIBLING_IMAGE_DIRS,
    ]
    for name in names:
        candidate = xml_dir.parent / name
        if name and candidate not in dirs and candidate.is_dir() and is_inside(candidate, raw_dir):
            dirs.append(candidate)
    return dirs


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
