"""Predicted masks -> Labelme polygons an annotator can correct (pre-annotation).

Each connected component of each class is traced along its pixel edges (the union of its
row runs, exact), moved half a pixel inwards so the vertices sit on the centres of its
boundary pixels — which is where Labelme's converter (Pillow: fill + outline) puts the border
back, so converting the file gives the same mask again — and simplified by `tolerance` px
(under 0.5 px only the pixel staircase is thinned: the file still converts to the exact mask).
Holes are kept as polygons of the background class drawn after their object (Labelme has no
holes; a later shape wins). Larger components come first, so an object lying in another's
hole is drawn after that hole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from pipeline.core.records import IGNORE

LABELME_VERSION = "5.4.1"


def component_polygons(mask: np.ndarray, tolerance: float = 0.4
                       ) -> list[tuple[Polygon, list[Polygon]]]:
    """(object, its holes) polygons of a boolean mask in Labelme's frame (pixel (x, y) is
    centred at x, y), vertices on the centres of the boundary pixels of the object and of
    each hole."""
    from scipy import ndimage  # imported here: only pre-annotation traces masks

    traced = []
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    for k, where in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[where] == k
        top, left = where[0].start, where[1].start
        runs = []
        for y, row in enumerate(inside):
            padded = np.concatenate([[False], row, [False]])
            edges = np.flatnonzero(padded[1:] != padded[:-1])
            runs += [box(left + a - 0.5, top + y - 0.5, left + b - 0.5, top + y + 0.5)
                     for a, b in zip(edges[::2], edges[1::2], strict=True)]
        edge = shapely.unary_union(runs)  # pixel edges: exact
        for part in (edge.geoms if isinstance(edge, MultiPolygon) else [edge]):
            outer = _inward(Polygon(part.exterior), tolerance)
            holes = [_inward(Polygon(ring), tolerance) for ring in part.interiors]
            if outer is not None:
                traced.append((outer, [h for h in holes if h is not None]))
    return traced


def _inward(polygon: Polygon, tolerance: float) -> Polygon | None:
    """The pixel-edge polygon moved 0.49 px inwards, next to its boundary pixels' centres (not
    0.5: a 1 px wide part keeps a sliver, whose outline Labelme draws as that line of
    pixels; the vertices are rounded onto the centres when written), then simplified."""
    moved = polygon.buffer(-0.49, join_style="mitre")
    if tolerance > 0 and not moved.is_empty:
        moved = moved.simplify(tolerance, preserve_topology=True)
    if isinstance(moved, MultiPolygon):  # a part joined by one pixel's corner: the largest
        moved = max(moved.geoms, key=lambda g: g.area)
    return moved if isinstance(moved, Polygon) and not moved.is_empty else None


def labelme_shapes(pred: np.ndarray, classes: Sequence[str], tolerance: float = 0.4
                   ) -> list[dict[str, object]]:
    """Labelme shapes (dicts) for every predicted class but the background (index 0)."""
    traced: list[tuple[float, str, Polygon, list[Polygon]]] = []
    for value in np.unique(pred).tolist():
        if value == 0 or value == IGNORE or value >= len(classes):
            continue
        traced += [(outer.area, classes[value], outer, holes)
                    for outer, holes in component_polygons(pred == value, tolerance)]
    shapes = []
    for _, label, outer, holes in sorted(traced, key=lambda t: -t[0]):
        shapes.append(_shape(label, outer.exterior.coords))
        shapes += [_shape(classes[0], hole.exterior.coords) for hole in holes]
    return shapes


def _shape(label: str, coords: Sequence[tuple[float, float]]) -> dict[str, object]:
    # whole pixels: the centres of boundary pixels (Pillow draws a fractional vertex at its
    # floor, which would grow the object by a pixel on two sides)
    points = [[round(float(x)), round(float(y))] for x, y in list(coords)[:-1]]
    return {"label": label, "points": points, "group_id": None, "description": "predicted",
            "shape_type": "polygon", "flags": {}}


def labelme_document(pred: np.ndarray, classes: Sequence[str], image_path: str,
                     tolerance: float = 0.4, source: str = "segpipe") -> dict[str, object]:
    """A Labelme JSON document of a prediction: polygons, imagePath relative to the JSON, no
    embedded image; marked as predicted in the image-level flags and every shape's
    description, so an annotator knows what to check."""
    return {"version": LABELME_VERSION, "flags": {"predicted": True},
            "shapes": labelme_shapes(pred, classes, tolerance), "imagePath": image_path,
            "imageData": None, "imageHeight": int(pred.shape[0]),
            "imageWidth": int(pred.shape[1]), "description": f"predicted by {source}"}
