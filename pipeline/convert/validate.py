"""Pure checks on one read annotation: labels resolved to pixel values, shapes checked.

`check_record` is the single entry point used by convert. It returns the (shape, value) pairs
to draw, in file order, and every problem found as an Issue. Any error means convert leaves
the file out; warnings are reported and the file is converted.

Never background: a shape that cannot be drawn (unsupported_shape, point_count, mask_png,
invalid_polygon) is an error, so its file is left out; with `convert.undrawable: ignore` the
error becomes a warning and the shape's bounding box (its finite points, clipped to the image)
is drawn as ignore (255) in its place. An object flagged difficult is drawn as its class, or
as ignore with `convert.difficult: ignore`.

Checks (name, severity), per shape unless said otherwise:
- unsupported_shape (error): a kind no reader could turn into something drawable (Labelme's
  "points", a LabelMe XML <segm> mask, a "rotation" without 4 corners).
- unknown_label (error): not a class, ignore label or alias; names the closest class names.
- label_alias (warning): matched through `aliases`.
- label_case (warning): matched a class, ignore label or alias only when case and spacing
  are ignored ("Car " -> "car").
- non_finite (error): a NaN or infinite coordinate.
- point_count (error): polygon under 3 points; circle, rectangle, mask not 2; point not 1;
  line, linestrip under 2.
- zero_box (error): a rectangle with zero width or height. Not applied to records read from
  YOLO, where equal corners are a legitimate 1-pixel box (the YOLO and VOC readers report
  their own zero boxes).
- outside_image (error): every pixel the shape could set lies outside the image.
- coordinate_range (error): the shape reaches more than twice the image size past the image
  (x outside -2W..3W or y outside -2H..3H): a corrupt coordinate, and a guard for Pillow,
  which hangs on circles of radius ~1e6.
- clipped (warning): the annotated geometry (points; a circle with its radius; not the stroke
  of lines and points) reaches past the image, [0, W] x [0, H] in Labelme's continuous frame
  (points on the far edge x = W are common in real files and fine); for a mask shape, its
  bbox pixels past 0..W-1, 0..H-1. The part outside is dropped.
- invalid_polygon (error): a self-intersecting polygon that encloses no area, whose repair
  changes it by more than `convert.max_repair_change` of its area (see `polygon_repair`), or
  too tangled to check at a bounded cost (more than MAX_CROSSINGS crossings, more than
  MAX_REPAIR_POINTS points, or more than MAX_PAIRS candidate edge pairs).
- polygon_repaired (warning): a self-intersecting polygon whose repair changes it by at most
  that share. It is still drawn exactly as Labelme draws it (Pillow, even-odd), so masks keep
  matching labelme2voc; the warning says the annotation needs a look.
- mask_png (error): a mask shape whose PNG is missing, undecodable, not one channel, or not
  the size of its bbox.
- empty_shape (warning): a shape that sets no pixel inside the image (e.g. a zero-radius circle,
  an all-zero mask, a sliver past the border).
- no_shapes (warning, whole file): the file has no shape to draw; its mask is all background.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import shapely
from shapely.errors import GEOSException
from shapely.geometry import Polygon

from pipeline.convert.raster import (
    EXACT_POINTS,
    MIN_POINTS,
    covers_pixels,
    decode_mask_png,
    mask_size,
    pixel_box,
)
from pipeline.core.records import (
    DRAWABLE_KINDS,
    IGNORE,
    Issue,
    Record,
    Severity,
    Shape,
    is_error,
)
from pipeline.params import ConvertParams, Labels

MakeIssue = Callable[[str, Severity, str], Issue]

#: Shape kinds of other tools that are drawn as their 4 corners (a polygon) by the readers;
#: one left with another point count cannot be drawn.
CORNER_KINDS = ("rotation", "oriented_rectangle")
#: Errors that mean "this shape cannot be drawn" (convert.undrawable decides what happens).
UNDRAWABLE_CHECKS = ("unsupported_shape", "point_count", "mask_png", "invalid_polygon")
#: Bounds on the repair check of one self-intersecting polygon (`polygon_repair`). Its cost
#: grows with the crossings: a 2,000-point scribble crosses itself ~450,000 times, and noding
#: it took 5 GB and a segfault. A real self-intersection is a handful of crossings (a bow-tie,
#: a loop, a spike); past these bounds the polygon is an invalid_polygon error.
MAX_CROSSINGS = 1000  # pairs of non-adjacent edges that cross or touch
MAX_REPAIR_POINTS = 100_000  # points of a self-intersecting polygon
MAX_PAIRS = 10_000_000  # candidate pairs (edge-edge, then ray-edge) a check may examine
CHUNK_PAIRS = 200_000  # candidate pairs held in memory at once
NOT_CHECKED = "not checked"  # RepairCheck.reason of a polygon too complex to test at all


@dataclass(frozen=True)
class LabelMatch:
    """How a raw label resolved: the pixel value and the name it resolved to."""

    value: int | None  # class index, 255 for an ignore label, None when unknown
    name: str | None  # the class or ignore label it resolved to
    how: str  # "exact", "alias", "case" or "unknown"
    via: str | None = None  # the alias key or the differently-cased name that matched
    closest: tuple[str, ...] = ()  # unknown labels: the closest class names, best first


@dataclass(frozen=True)
class RepairCheck:
    """The outcome of `polygon_repair` for one polygon ring."""

    valid: bool  # shapely finds the polygon valid (nothing to repair)
    area: float  # even-odd filled area of the ring (what Pillow fills); NaN when not checked
    change: float  # area of (repaired XOR even-odd region) / area; 0.0 when valid
    reason: str  # shapely's is_valid_reason, "Valid Geometry" when valid
    too_complex: str = ""  # why the check was not done (a bound above); "" when it was


def resolve_label(label: str, labels: Labels) -> LabelMatch:
    """Resolve a raw label to its pixel value: class index, 255 (ignore) or unknown.

    Order: exact class, exact ignore label, exact alias; then the same ignoring case and
    spacing (an alias matched that way counts as an alias). A folded label matching two
    different targets is unknown.
    """
    targets = _targets(labels)
    if label in targets:
        return _match(label, targets[label], how="exact")
    if label in labels.aliases:
        target = labels.aliases[label]
        return _match(target, targets.get(target), how="alias", via=label)
    folded = _fold(label)
    hits: dict[str, LabelMatch] = {}
    for name, value in targets.items():
        if _fold(name) == folded:
            hits[name] = _match(name, value, how="case", via=name)
    for key, target in labels.aliases.items():
        if _fold(key) == folded:
            hits.setdefault(target, _match(target, targets.get(target), how="alias",
                                           via=key))
    if len(hits) == 1:
        return next(iter(hits.values()))
    if len(hits) > 1:
        return LabelMatch(None, None, "unknown", closest=tuple(sorted(hits)))
    return LabelMatch(None, None, "unknown", closest=closest_names(label, labels))


def closest_names(label: str, labels: Labels, n: int = 3) -> tuple[str, ...]:
    """The class and ignore-label names closest to `label` (difflib, case-insensitive)."""
    names = [*labels.classes, *labels.ignore_labels]
    by_fold: dict[str, str] = {}
    for name in names:
        by_fold.setdefault(_fold(name), name)
    found = difflib.get_close_matches(_fold(label), list(by_fold), n=n, cutoff=0.6)
    return tuple(by_fold[f] for f in found)


def polygon_repair(points: Sequence[tuple[float, float]]) -> RepairCheck:
    """Compare a polygon ring with its repair by shapely `make_valid(method="structure")`.

    The reference is the ring's even-odd filled region, which is what Pillow (and so Labelme)
    draws: a bow-tie is its two lobes, a pentagram its five tips without the centre. The ring
    is noded and cut into faces; a face is in the region when a ray from a point inside it
    crosses the ring an odd number of times, and in the repair when the repair contains that
    point (the repair is a union of the same faces). `change` is the area of the faces where
    the two disagree, as a share of the region's area: 0 for a bow-tie (the repair keeps both
    lobes) or a spike, about 0.45 for a pentagram (the repair fills the centre).

    The cost is bounded: the crossings are counted first (stopping past MAX_CROSSINGS), and
    a polygon past a bound is returned unchecked, with `too_complex` saying which.
    """
    ring = np.asarray(points, dtype=float)
    # GEOS's own validity test costs about as many steps as edges with overlapping boxes:
    # bounded first (only needed when n^2 could exceed the bound)
    bounds = _box_bounds(ring) if len(ring) ** 2 > MAX_PAIRS else None
    if bounds is not None and int(bounds.sum()) > MAX_PAIRS:
        return RepairCheck(False, math.nan, math.inf, NOT_CHECKED,
                           f"its edges' boxes overlap in up to {int(bounds.sum())} pairs, more "
                           f"than the {MAX_PAIRS} checked")
    polygon = Polygon(ring)
    if polygon.is_valid:
        return RepairCheck(True, polygon.area, 0.0, "Valid Geometry")
    reason = shapely.is_valid_reason(polygon)
    too_complex = _too_complex(ring, _box_bounds(ring) if bounds is None else bounds)
    if too_complex:
        return RepairCheck(False, math.nan, math.inf, reason, too_complex)
    faces, inside = _faces(ring)
    area = shapely.area(faces)
    odd = _odd_crossings(ring, inside)
    if odd is None:
        return RepairCheck(False, math.nan, math.inf, reason,
                           f"its faces and edges make more than {MAX_PAIRS} candidate pairs")
    region = float(area[odd].sum())
    if region <= 0.0:
        return RepairCheck(False, 0.0, math.inf, reason)
    repaired = shapely.make_valid(polygon, method="structure", keep_collapsed=False)
    shapely.prepare(repaired)
    in_repair = shapely.contains_xy(repaired, shapely.get_x(inside), shapely.get_y(inside))
    change = float(area[odd != in_repair].sum()) / region
    return RepairCheck(False, region, change, reason)


def _too_complex(ring: np.ndarray, bounds: np.ndarray) -> str:
    """Why the repair of this self-intersecting ring is not checked, or "" when it is."""
    if len(ring) > MAX_REPAIR_POINTS:
        return f"it has {len(ring)} points, more than the {MAX_REPAIR_POINTS} checked"
    crossings = _count_crossings(ring, bounds, MAX_CROSSINGS)
    if crossings > MAX_CROSSINGS:
        return f"its edges cross or touch more than {MAX_CROSSINGS} times"
    return ""


def _box_bounds(ring: np.ndarray) -> np.ndarray:
    """For each edge, a bound on the edges whose boxes overlap its box (itself included):
    those overlap it in x and in y, so either count bounds them. No pairs are formed."""
    x0, y0, x1, y1 = _edges(ring)
    lo_x, hi_x, lo_y, hi_y = (np.minimum(x0, x1), np.maximum(x0, x1), np.minimum(y0, y1),
                              np.maximum(y0, y1))
    return np.minimum(_overlap_counts(lo_x, hi_x, lo_x, hi_x),
                      _overlap_counts(lo_y, hi_y, lo_y, hi_y))


def _edges(ring: np.ndarray) -> tuple[np.ndarray, ...]:
    """x0, y0, x1, y1 of the ring's edges (the last one closes the ring)."""
    x0, y0 = ring[:, 0], ring[:, 1]
    return x0, y0, np.roll(x0, -1), np.roll(y0, -1)


def _overlap_counts(lo: np.ndarray, hi: np.ndarray, at_lo: np.ndarray, at_hi: np.ndarray
                    ) -> np.ndarray:
    """For each interval [at_lo, at_hi], how many of the intervals [lo, hi] overlap it
    (two sorted searches: no pairs are formed)."""
    return (np.searchsorted(np.sort(lo), at_hi, side="right")
            - np.searchsorted(np.sort(hi), at_lo, side="left"))


def _chunks(bounds: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive [start, end) ranges whose `bounds` add up to about CHUNK_PAIRS each."""
    chunk = (np.cumsum(bounds) - 1) // CHUNK_PAIRS  # which chunk each item falls in
    cuts = [0, *(np.flatnonzero(np.diff(chunk)) + 1).tolist(), len(bounds)]
    return list(itertools.pairwise(cuts))


def _count_crossings(ring: np.ndarray, bounds: np.ndarray, stop: int) -> int:
    """Pairs of non-adjacent edges that cross or touch, counted until more than `stop`.
    Candidates come from an STRtree, a chunk of edges at a time (`bounds`: `_box_bounds`),
    so memory stays small; at most bounds.sum() pairs are examined."""
    x0, y0, x1, y1 = _edges(ring)
    n = len(ring)
    edges = shapely.linestrings(np.stack([np.stack([x0, y0], 1), np.stack([x1, y1], 1)], 1))
    tree = shapely.STRtree(edges)
    found = 0
    for start, end in _chunks(bounds):
        a, b = tree.query(edges[start:end])
        a = a + start
        keep = (b > a) & (b != a + 1) & ~((a == 0) & (b == n - 1))  # each pair once, no neighbours
        a, b = a[keep], b[keep]
        found += int(_touch(x0[a], y0[a], x1[a], y1[a], x0[b], y0[b], x1[b], y1[b]).sum())
        if found > stop:
            break
    return found


def _touch(ax0: np.ndarray, ay0: np.ndarray, ax1: np.ndarray, ay1: np.ndarray,
           bx0: np.ndarray, by0: np.ndarray, bx1: np.ndarray, by1: np.ndarray) -> np.ndarray:
    """Do segments a and b cross or touch? (orientation signs; the pairs' boxes overlap)"""
    def side(px: np.ndarray, py: np.ndarray, qx: np.ndarray, qy: np.ndarray,
             rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
        return np.sign((qx - px) * (ry - py) - (qy - py) * (rx - px))

    d1, d2 = side(bx0, by0, bx1, by1, ax0, ay0), side(bx0, by0, bx1, by1, ax1, ay1)
    d3, d4 = side(ax0, ay0, ax1, ay1, bx0, by0), side(ax0, ay0, ax1, ay1, bx1, by1)
    # each pair's endpoints on opposite sides of (or on) the other's line; for collinear
    # pairs (all four zero) the overlapping boxes mean overlapping segments
    return (d1 * d2 <= 0) & (d3 * d4 <= 0)


def _faces(ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The faces the closed ring cuts the plane into, and a point inside each."""
    closed = np.vstack([ring, ring[:1]])
    noded = shapely.node(shapely.linestrings(closed))
    faces = shapely.get_parts(shapely.polygonize(shapely.get_parts(noded)))
    return faces, shapely.point_on_surface(faces)


def _odd_crossings(ring: np.ndarray, points: np.ndarray) -> np.ndarray | None:
    """Even-odd test: does a ray to the right of each point cross the ring an odd number of
    times? (The classic half-open crossing rule; candidate edges found with an STRtree, a
    chunk of rays at a time.) None when the rays have more than MAX_PAIRS candidates."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    px, py = shapely.get_x(points), shapely.get_y(points)
    x0, y0, x1, y1 = _edges(ring)
    # a ray's candidates are the edges whose y-range holds its y
    bounds = _overlap_counts(np.minimum(y0, y1), np.maximum(y0, y1), py, py)
    if int(bounds.sum()) > MAX_PAIRS:
        return None
    edges = shapely.linestrings(np.stack([np.stack([x0, y0], 1), np.stack([x1, y1], 1)], 1))
    tree = shapely.STRtree(edges)
    far = np.full_like(px, x0.max() + 1.0)
    rays = shapely.linestrings(np.stack([np.stack([px, py], 1), np.stack([far, py], 1)], 1))
    counts = np.zeros(len(points), dtype=np.int64)
    for start, end in _chunks(bounds):
        point_i, edge_i = tree.query(rays[start:end])
        point_i = point_i + start
        y = py[point_i]
        spans = (y0[edge_i] > y) != (y1[edge_i] > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0[edge_i] + (y - y0[edge_i]) * (x1[edge_i] - x0[edge_i]) / (
                y1[edge_i] - y0[edge_i])
        crossing = spans & (px[point_i] < x_at)
        counts += np.bincount(point_i[crossing], minlength=len(points))
    return counts % 2 == 1


def check_record(
    record: Record,
    width: int,
    height: int,
    labels: Labels,
    cfg: ConvertParams,
) -> tuple[tuple[tuple[Shape, int], ...], list[Issue]]:
    """Check every shape of `record` against an image of `width` x `height` pixels.

    Returns the drawable (shape, value) pairs in file order (shapes with an error left out)
    and all issues found. Issue.file is the shape's own file (Shape.source, for a merged
    record) or record.annotation; Issue.shape is the Shape.index.
    """
    issues: list[Issue] = []
    drawable: list[tuple[Shape, int]] = []
    matches: dict[str, LabelMatch] = {}
    for shape in record.shapes:
        file = shape.source or record.annotation
        # YOLO boxes with equal corners cover one pixel; VOC's reader reports its own zero boxes
        check_zero_box = not file.lower().endswith(".txt")
        where = _where(file, shape)
        if shape.label not in matches:
            matches[shape.label] = resolve_label(shape.label, labels)
        match = matches[shape.label]
        found = _label_issues(file, shape, match, where)
        if shape.kind in DRAWABLE_KINDS:
            geometry = _geometry_issues(file, shape, where, width, height, cfg, check_zero_box)
        else:
            geometry = [_unsupported(file, shape, where)]
        geometry, marked = _undrawable(shape, geometry, width, height, cfg)
        issues += found + geometry
        if match.value is None or is_error(found + geometry):
            continue
        if marked is not None:
            drawable.append((marked, IGNORE))
        else:
            ignored = shape.difficult and cfg.difficult == "ignore"
            drawable.append((shape, IGNORE if ignored else match.value))
    file = record.annotation
    if not record.shapes:
        issues.append(Issue(file, None, "no_shapes", "warning",
                            f"{file}: has no shapes; its mask is all background"))
    elif not drawable and not is_error(issues):
        issues.append(Issue(file, None, "no_shapes", "warning",
                            f"{file}: none of its {len(record.shapes)} shapes can be drawn; "
                            f"its mask is all background"))
    return tuple(drawable), issues


def _where(file: str, shape: Shape) -> str:
    """How messages name a shape: file, index, kind (as the file names it) and label."""
    if shape.tool_kind is not None:
        return (f"{file} shape {shape.index} ({shape.tool_kind} {shape.label!r}, drawn as a "
                f"{shape.kind})")
    return f"{file} shape {shape.index} ({shape.kind} {shape.label!r})"


def _unsupported(file: str, shape: Shape, where: str) -> Issue:
    """The error for a kind that cannot be drawn (the caller may turn it into ignore)."""
    if shape.kind in CORNER_KINDS:
        problem = f"a {shape.kind} must have 4 corner points, got {len(shape.points)}"
    else:
        problem = (f"kind must be one of {', '.join(DRAWABLE_KINDS)} (or rotation, "
                   f"oriented_rectangle), got {shape.kind!r}")
    return Issue(file, shape.index, "unsupported_shape", "error", f"{where}: {problem}")


def _undrawable(shape: Shape, geometry: list[Issue], width: int, height: int,
                cfg: ConvertParams) -> tuple[list[Issue], Shape | None]:
    """Never background: a shape that cannot be drawn stays an error (the file is left out),
    or with convert.undrawable: ignore its bounding box becomes an ignore rectangle.

    Returns the issues (the undrawable errors rewritten) and the ignore rectangle, if any."""
    fatal = [i for i in geometry if i.severity == "error"]
    if not fatal or any(i.check not in UNDRAWABLE_CHECKS for i in fatal):
        return geometry, None
    box = _ignore_box(shape, width, height) if cfg.undrawable == "ignore" else None
    rest = [i for i in geometry if i.severity != "error"]
    if cfg.undrawable == "error":
        tail = ("; the file is left out (convert.undrawable: ignore would mark the shape's "
                "bounding box as ignore and convert the rest)")
        return [*rest, *(replace(i, message=i.message + tail) for i in fatal)], None
    if box is None:
        tail = "; it has no finite points inside the image, so nothing could be marked ignore"
        return [*rest, *(replace(i, message=i.message + tail) for i in fatal)], None
    (x0, y0), (x1, y1) = box
    tail = (f"; marked its bounding box x {x0:g}..{x1:g}, y {y0:g}..{y1:g} as ignore (255) "
            f"and converted the rest (convert.undrawable: ignore)")
    marked = replace(shape, kind="rectangle", points=box, mask_png=None,
                     tool_kind=shape.tool_kind or shape.kind)
    return [*rest, *(replace(i, severity="warning", message=i.message + tail)
                     for i in fatal)], marked


def _ignore_box(shape: Shape, width: int, height: int
                ) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The inclusive pixel box covering the shape's finite points, clipped to the image."""
    points = [p for p in shape.points if all(math.isfinite(v) for v in p)]
    if not points:
        return None
    x0 = max(0, math.floor(min(p[0] for p in points)))
    y0 = max(0, math.floor(min(p[1] for p in points)))
    x1 = min(width - 1, math.ceil(max(p[0] for p in points)))
    y1 = min(height - 1, math.ceil(max(p[1] for p in points)))
    if x1 < x0 or y1 < y0:
        return None
    return (float(x0), float(y0)), (float(x1), float(y1))


def _label_issues(file: str, shape: Shape, match: LabelMatch, where: str) -> list[Issue]:
    if match.how == "exact":
        return []
    if match.how == "unknown":
        if match.closest:
            hint = "closest: " + ", ".join(repr(n) for n in match.closest)
        else:
            hint = "no class name is close; add it to classes or aliases in params.yaml"
        return [Issue(file, shape.index, "unknown_label", "error",
                      f"{where}: label must be a class, an ignore label or an alias, "
                      f"got {shape.label!r} ({hint})")]
    target = "ignore (255)" if match.value == IGNORE else f"class {match.name!r}"
    if match.how == "alias":
        return [Issue(file, shape.index, "label_alias", "warning",
                      f"{where}: label {shape.label!r} matched alias {match.via!r} -> {target}")]
    return [Issue(file, shape.index, "label_case", "warning",
                  f"{where}: label {shape.label!r} matched {target} only when case and "
                  f"spacing are ignored")]


def _geometry_issues(file: str, shape: Shape, where: str, width: int, height: int,
                     cfg: ConvertParams, check_zero_box: bool) -> list[Issue]:
    def issue(check: str, severity: Severity, message: str) -> Issue:
        return Issue(file, shape.index, check, severity, f"{where}: {message}")

    if not all(math.isfinite(v) for point in shape.points for v in point):
        bad = next(p for p in shape.points if not all(math.isfinite(v) for v in p))
        return [issue("non_finite", "error", f"coordinates must be finite numbers, got {bad}")]
    n, exact, least = len(shape.points), EXACT_POINTS.get(shape.kind), MIN_POINTS[shape.kind]
    if (exact is not None and n != exact) or n < least:
        need = f"{exact}" if exact is not None else f"at least {least}"
        need += f" point{'s' if least > 1 else ''}"
        if shape.kind == "rectangle":
            need += " (or 4 corners)"
        return [issue("point_count", "error", f"a {shape.kind} must have {need}, got {n}")]
    issues: list[Issue] = []
    if shape.kind == "rectangle" and check_zero_box:
        (xa, ya), (xb, yb) = shape.points
        if xa == xb or ya == yb:
            issues.append(issue("zero_box", "error",
                                f"a rectangle must have non-zero width and height, got "
                                f"corners ({xa:g}, {ya:g}) and ({xb:g}, {yb:g})"))
    x0, y0, x1, y1 = pixel_box(shape, line_width=cfg.line_width, point_radius=cfg.point_radius)
    if x1 < 0 or y1 < 0 or x0 > width - 1 or y0 > height - 1:
        return [*issues, issue("outside_image", "error",
                               f"must lie at least partly inside the {width}x{height} image, "
                               f"got pixels x {x0}..{x1}, y {y0}..{y1}")]
    ex0, ey0, ex1, ey1 = _extent(shape)
    extent = f"x {ex0:g}..{ex1:g}, y {ey0:g}..{ey1:g}"
    if ex0 < -2 * width or ey0 < -2 * height or ex1 > 3 * width or ey1 > 3 * height:
        return [*issues, issue("coordinate_range", "error",
                               f"must lie within twice the image size of the {width}x{height} "
                               f"image (x {-2 * width}..{3 * width}, y {-2 * height}.."
                               f"{3 * height}), got {extent}")]
    edge = 1 if shape.kind == "mask" else 0  # mask bbox: pixel indices; others: the frame
    if ex0 < 0 or ey0 < 0 or ex1 > width - edge or ey1 > height - edge:
        what = "mask bbox pixels " if shape.kind == "mask" else ""
        issues.append(issue("clipped", "warning",
                            f"must lie inside the {width}x{height} image, got {what}{extent}; "
                            f"the part outside is dropped"))
    if shape.kind == "mask":
        width_px, height_px = mask_size(shape)
        if width_px < 1 or height_px < 1:
            return [*issues, issue("mask_png", "error",
                                   f"a mask bbox must go from its top-left to its bottom-right "
                                   f"corner, got {shape.points[0]} -> {shape.points[1]}")]
        try:
            decode_mask_png(shape.mask_png, (width_px, height_px))
        except ValueError as exc:
            return [*issues, issue("mask_png", "error", str(exc))]
    if shape.kind == "polygon":
        issues += _polygon_issues(shape, cfg.max_repair_change, issue)
    if not is_error(issues) and not covers_pixels(
        shape, width, height, line_width=cfg.line_width, point_radius=cfg.point_radius
    ):
        issues.append(issue("empty_shape", "warning",
                            "sets no pixel inside the image; it adds nothing to the mask"))
    return issues


def _extent(shape: Shape) -> tuple[float, float, float, float]:
    """The annotated extent (x0, y0, x1, y1): the points' box, a circle with its radius.

    The stroke of lines and points (a drawing choice, not the annotation) does not count.
    A mask's extent is its bbox in pixel indices (int() corners, inclusive).
    """
    if shape.kind == "mask":
        x0, y0, x1, y1 = pixel_box(shape)
        return float(x0), float(y0), float(x1), float(y1)
    xs = [p[0] for p in shape.points]
    ys = [p[1] for p in shape.points]
    if shape.kind == "circle":
        (cx, cy), (px, py) = shape.points
        r = math.hypot(cx - px, cy - py)
        xs, ys = [cx - r, cx + r], [cy - r, cy + r]
    return min(xs), min(ys), max(xs), max(ys)


def _polygon_issues(shape: Shape, max_change: float, issue: MakeIssue) -> list[Issue]:
    try:
        check = polygon_repair(shape.points)
    except GEOSException as exc:
        return [issue("invalid_polygon", "error", f"polygon cannot be repaired: {exc}")]
    if check.valid:
        return []
    if check.too_complex:
        what = "polygon" if check.reason == NOT_CHECKED else \
            f"self-intersecting polygon ({check.reason})"
        return [issue("invalid_polygon", "error",
                      f"{what} too complex to check at a bounded cost: {check.too_complex}; "
                      "redraw or simplify it")]
    if check.area <= 0.0:
        return [issue("invalid_polygon", "error",
                      f"a polygon must enclose an area, got none ({check.reason})")]
    share = f"{check.change:.1%} of its area"
    if check.change > max_change:
        return [issue("invalid_polygon", "error",
                      f"self-intersecting polygon ({check.reason}): repairing it must change at "
                      f"most {max_change:.1%} of its area (convert.max_repair_change), "
                      f"got {share}")]
    return [issue("polygon_repaired", "warning",
                  f"self-intersecting polygon ({check.reason}); repairing it changes {share}; "
                  f"drawn as Labelme draws it (even-odd fill)")]


def _targets(labels: Labels) -> dict[str, int]:
    """Class names -> index, ignore labels -> 255 (a class name wins over an ignore label)."""
    targets = {name: IGNORE for name in labels.ignore_labels}
    targets.update({name: i for i, name in enumerate(labels.classes)})
    return targets


def _match(name: str, value: int | None, *, how: str,
           via: str | None = None) -> LabelMatch:
    return LabelMatch(value, name if value is not None else None,
                      how if value is not None else "unknown", via)


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()
