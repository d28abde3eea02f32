"""Frozen records passed between readers, checks and the rasteriser.

This module imports nothing else of ours: it is the vocabulary of the whole pipeline.
Coordinates are pixel coordinates (x, y) in the frame the annotator saw, in Labelme's
convention (continuous, 0-based). Readers convert other conventions (VOC's 1-based inclusive
boxes, YOLO's normalised centre/size) into it, so the rasteriser knows one convention only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Point = tuple[float, float]
Severity = Literal["error", "warning"]

#: Mask value for "ignore" pixels: drawn for ignore labels, skipped by the loss and the metrics.
IGNORE = 255

#: Shape kinds the rasteriser draws. A reader passes any other kind through unchanged
#: (e.g. Labelme's "points"): validation makes it an error (or, with convert.undrawable:
#: ignore, marks its bounding box as ignore), never background.
DRAWABLE_KINDS = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask")


@dataclass(frozen=True)
class Shape:
    """One annotated shape, exactly as the annotator drew it."""

    label: str  # raw label text, not yet resolved to a class
    kind: str  # one of DRAWABLE_KINDS, or the raw unknown type
    points: tuple[Point, ...]
    index: int  # position in its source file, for reports
    group_id: int | None = None
    mask_png: bytes | None = None  # kind "mask": the decoded PNG of the bbox-sized mask
    source: str | None = None  # annotation file it came from, set when records are merged
    difficult: bool = False  # flagged difficult (VOC <difficult>1, X-AnyLabeling "difficult")
    #: the file's own name for the shape when the reader drew it as another kind (an
    #: X-AnyLabeling 4-point "rectangle" or "rotation" read as a "polygon"), for messages
    tool_kind: str | None = None


@dataclass(frozen=True)
class Issue:
    """A problem found in one file (and optionally one shape of it)."""

    file: str  # annotation path relative to the raw dir, posix separators
    shape: int | None  # Shape.index, or None when the issue is about the whole file
    check: str  # short stable name, e.g. "unknown_label"
    severity: Severity
    message: str  # says what was found and what was expected: "must be X, got Y"


@dataclass(frozen=True)
class Record:
    """One annotation file, read but not yet validated or drawn."""

    id: str  # annotation path relative to the raw dir without extension, posix ("batch3/img_001")
    annotation: str  # annotation path relative to the raw dir, posix
    format: str  # "labelme" | "voc" | "yolo" | "labelme_xml" | "masks"
    image_path: str | None  # image relative to the raw dir (posix), None when only embedded
    image_data: bytes | None  # embedded image bytes (Labelme imageData), else None
    width: int | None  # declared image size; None when the file declares none
    height: int | None
    shapes: tuple[Shape, ...]
    version: str | None = None  # tool version when the file declares one (Labelme "version")


def is_error(issues: Iterable[Issue]) -> bool:
    """True when any issue is an error (the file is left out)."""
    return any(i.severity == "error" for i in issues)
