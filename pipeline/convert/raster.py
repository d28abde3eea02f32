"""Draw shapes into a class-index mask, exactly as Labelme's own converter does.

Labelme's `labelme2voc` (utils.shape_to_mask + shapes_to_label, versions 4 and 5) draws each
shape into its own full-size boolean mask with Pillow and then sets `label[mask] = value`, in
file order, so a later shape wins. Drawing every shape straight onto one canvas with
`fill=value` (and `outline=value`) sets exactly the same pixels, because Pillow's ImageDraw
writes the ink without blending: the result is identical and needs no per-shape mask.

Per kind (points in Labelme's continuous 0-based (x, y) frame):
- polygon: `ImageDraw.polygon(xy, outline=v, fill=v)` (filled with its outline, even-odd).
- rectangle: `ImageDraw.rectangle` with the two corners in any order (sorted here: today's
  Pillow refuses reversed corners, which the Pillow of Labelme 4's day accepted); Pillow
  truncates fractional corners.
- circle: centre + rim point; `ImageDraw.ellipse` of radius = their distance.
- line, linestrip: `ImageDraw.line(width=line_width)`.
- point: a disc of radius `point_radius`.
- mask: the bbox corners truncated with int() like Labelme, and the decoded PNG (nonzero =
  inside) pasted at the top-left corner; the parts past the image border are dropped.

This module is pure: it takes shapes and returns arrays; it reads and writes no files.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pipeline.core.records import Shape
from pipeline.storage.images import PIL_ERRORS

#: Minimum number of points per kind, and the exact number where the kind fixes it.
MIN_POINTS = {"polygon": 3, "line": 2, "linestrip": 2, "circle": 2, "rectangle": 2,
              "point": 1, "mask": 2}
EXACT_POINTS = {"circle": 2, "rectangle": 2, "point": 1, "mask": 2}


def rasterize(
    shapes: Sequence[tuple[Shape, int]],
    width: int,
    height: int,
    *,
    line_width: int = 10,
    point_radius: int = 5,
) -> np.ndarray:
    """Draw `(shape, value)` pairs in order into a (height, width) uint8 mask, 0 elsewhere.

    Values are class indices or 255 (ignore). Raises ValueError for a shape that cannot be
    drawn (unknown kind, wrong point count, bad mask PNG): `validate.check_record` reports
    those as issues and never passes them here.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for shape, value in shapes:
        _draw(canvas, draw, shape, value, (0, 0), line_width, point_radius)
    return np.array(canvas, dtype=np.uint8)


def pixel_box(shape: Shape, *, line_width: int = 10, point_radius: int = 5,
              ) -> tuple[int, int, int, int]:
    """Inclusive pixel index box (x0, y0, x1, y1) the shape can cover on an unbounded canvas.

    Follows Pillow's rounding closely (vertices to the nearest pixel, rectangle corners
    truncated, mask corners int()) and is used to tell clipped or outside shapes; the exact
    pixels come from drawing (see `covers_pixels`). The shape must have finite points and a
    valid point count.
    """
    _check_points(shape)
    xs = [p[0] for p in shape.points]
    ys = [p[1] for p in shape.points]
    if shape.kind == "mask":
        (x1, y1), (x2, y2) = _mask_corners(shape)
        return x1, y1, x2, y2
    if shape.kind == "rectangle":
        return int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))
    if shape.kind == "circle":
        (cx, cy), (px, py) = shape.points
        pad = math.hypot(cx - px, cy - py)
        xs, ys = [cx], [cy]
    elif shape.kind == "point":
        pad = float(point_radius)
    elif shape.kind in ("line", "linestrip"):
        pad = line_width / 2
    else:
        pad = 0.0
    return (math.floor(min(xs) - pad + 0.5), math.floor(min(ys) - pad + 0.5),
            math.floor(max(xs) + pad + 0.5), math.floor(max(ys) + pad + 0.5))


def covers_pixels(shape: Shape, width: int, height: int, *, line_width: int = 10,
                  point_radius: int = 5) -> bool:
    """True when the shape alone sets at least one pixel inside the image.

    Draws only the shape's own box (plus a 2 px margin) clipped to the image, shifted by a
    whole number of pixels, so a small shape on a large image stays cheap. The shift is
    applied only when the whole shape lies right of / below the margin, so coordinates stay
    non-negative and Pillow rounds vertices the same way; its float edge maths can still
    move a boundary pixel (about 1 random shape in 700 differs by 1-2 pixels), which only
    matters for a shape of one or two pixels. It decides a warning, never the mask.
    """
    x0, y0, x1, y1 = pixel_box(shape, line_width=line_width, point_radius=point_radius)
    left, top = max(0, x0 - 2), max(0, y0 - 2)
    right, bottom = min(width - 1, x1 + 2), min(height - 1, y1 + 2)
    if right < left or bottom < top:
        return False
    if (right - left + 1) * (bottom - top + 1) > Image.MAX_IMAGE_PIXELS:
        # a canvas past Pillow's decompression-bomb limit is never made (only a declared size
        # can be that large: real images past it are rejected): a shape over that many
        # pixels sets some of them (its outline at least)
        return True
    canvas = Image.new("L", (right - left + 1, bottom - top + 1), 0)
    _draw(canvas, ImageDraw.Draw(canvas), shape, 1, (left, top), line_width, point_radius)
    return canvas.getbbox() is not None


def decode_mask_png(data: bytes | None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a Labelme mask-shape PNG into a bool (h, w) array: nonzero = inside.

    `size` is the expected (width, height); it is checked before the pixels are decoded.
    Raises ValueError saying what is wrong (missing, not a PNG, wrong size, not one channel).
    """
    if not data:
        raise ValueError("mask shape has no PNG data")
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
    except PIL_ERRORS as exc:
        raise ValueError(f"mask PNG cannot be decoded: {exc}") from None
    if img.width * img.height > Image.MAX_IMAGE_PIXELS:  # never decoded: a PNG bomb
        img.close()
        raise ValueError(f"mask PNG must be within Pillow's decompression-bomb limit of "
                         f"{Image.MAX_IMAGE_PIXELS} pixels, got {img.width}x{img.height}")
    with img:
        if size is not None and img.size != size:
            raise ValueError(f"mask PNG must be {size[0]}x{size[1]} (its bbox), "
                             f"got {img.size[0]}x{img.size[1]}")
        try:
            arr = np.asarray(img)
        except PIL_ERRORS as exc:
            raise ValueError(f"mask PNG cannot be decoded: {exc}") from None
        if arr.ndim != 2:
            raise ValueError(f"mask PNG must have one channel (mode 1, L, P or I), "
                             f"got mode {img.mode}")
    return arr != 0


def mask_size(shape: Shape) -> tuple[int, int]:
    """The (width, height) the PNG of a mask shape must have: its int() corners, inclusive."""
    (x1, y1), (x2, y2) = _mask_corners(shape)
    return x2 - x1 + 1, y2 - y1 + 1


def _mask_corners(shape: Shape) -> tuple[tuple[int, int], tuple[int, int]]:
    # Labelme: (x1, y1), (x2, y2) = np.asarray(points).astype(int)  (truncation toward 0)
    (x1, y1), (x2, y2) = shape.points
    return (int(x1), int(y1)), (int(x2), int(y2))


def _check_points(shape: Shape) -> None:
    n = len(shape.points)
    if shape.kind not in MIN_POINTS:
        raise ValueError(f"shape {shape.index}: kind {shape.kind!r} cannot be drawn")
    if n < MIN_POINTS[shape.kind] or n != EXACT_POINTS.get(shape.kind, n):
        raise ValueError(f"shape {shape.index}: {shape.kind} has {n} points")


def _draw(canvas: Image.Image, draw: ImageDraw.ImageDraw, shape: Shape, value: int,
          origin: tuple[int, int], line_width: int, point_radius: int) -> None:
    """Draw one shape with ink `value`; `origin` is the canvas's top-left in image pixels."""
    _check_points(shape)
    ox, oy = origin
    xy = [(x - ox, y - oy) for x, y in shape.points]
    kind = shape.kind
    if kind == "polygon":
        draw.polygon(xy, outline=value, fill=value)
    elif kind == "rectangle":
        (xa, ya), (xb, yb) = xy
        draw.rectangle([(min(xa, xb), min(ya, yb)), (max(xa, xb), max(ya, yb))],
                       outline=value, fill=value)
    elif kind == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=value, fill=value)
    elif kind in ("line", "linestrip"):
        draw.line(xy, fill=value, width=line_width)
    elif kind == "point":
        [(cx, cy)] = xy
        r = point_radius
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=value, fill=value)
    else:  # mask
        _paste_mask(canvas, shape, value, origin)


def _paste_mask(canvas: Image.Image, shape: Shape, value: int, origin: tuple[int, int]) -> None:
    (x1, y1), _ = _mask_corners(shape)
    try:
        inside = decode_mask_png(shape.mask_png, mask_size(shape))
    except ValueError as exc:
        raise ValueError(f"shape {shape.index}: {exc}") from None
    x1, y1 = x1 - origin[0], y1 - origin[1]
    # Clip the mask to the canvas; what lies past the border is dropped.
    cw, ch = canvas.size
    left, top = max(0, -x1), max(0, -y1)
    right = min(inside.shape[1], cw - x1)
    bottom = min(inside.shape[0], ch - y1)
    if right <= left or bottom <= top:
        return
    part = inside[top:bottom, left:right]
    stencil = Image.fromarray(part.astype(np.uint8) * 255)
    canvas.paste(value, (x1 + left, y1 + top, x1 + right, y1 + bottom), stencil)
