"""Rasterisation: pixel for pixel what Labelme's own converter (labelme2voc) makes.

The golden tests read Labelme's example annotations with the project's reader, check them
with `validate.check_record` and draw them with `raster.rasterize`, exactly as convert does,
and compare with the masks labelme2voc wrote into the Labelme repository.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.convert.formats import read_annotation
from pipeline.convert.raster import covers_pixels, decode_mask_png, mask_size, pixel_box, rasterize
from pipeline.convert.validate import check_record
from pipeline.core.records import Shape, is_error
from pipeline.params import ConvertParams, Labels

EXAMPLES = Path("labelme-examples/examples")

# Golden masks made by labelme2voc with an older Pillow. Today's Pillow fills one pixel
# differently where two polygons of 2011_000006 meet; every other pixel must match.
KNOWN_OLD_PILLOW_PIXELS = {
    "2011_000006": {(290, 104): (15, 18)},  # (row, col): (ours = person, golden = sofa)
}


def shape(kind: str, *points: tuple[float, float], label: str = "a", index: int = 0,
          mask_png: bytes | None = None) -> Shape:
    return Shape(label, kind, tuple(points), index, mask_png=mask_png)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def draw_one(s: Shape, width: int = 9, height: int = 9, **kwargs: int) -> np.ndarray:
    return rasterize([(s, 1)], width, height, **kwargs)


def grid(*rows: str) -> np.ndarray:
    """A mask written as text rows: '.' = 0, a digit = that value."""
    return np.array([[0 if c == "." else int(c) for c in row] for row in rows], dtype=np.uint8)


# ---------------------------------------------------------------- golden: labelme2voc masks


def golden_sets(realdata: Path) -> list[tuple[Path, Path, Path]]:
    """(annotation dir, golden PNG dir, class_names.txt) for every set that has masks."""
    sets = []
    for name, png_dir in [("semantic_segmentation", "SegmentationClass"),
                          ("instance_segmentation", "SegmentationClass"),
                          ("video_annotation", "SegmentationClassPNG")]:
        root = realdata / EXAMPLES / name
        sets.append((root / "data_annotated", root / "data_dataset_voc" / png_dir,
                     root / "data_dataset_voc" / "class_names.txt"))
    return sets


def convert_like_the_stage(annotation: Path, raw_dir: Path, labels: Labels,
                           width: int, height: int) -> np.ndarray:
    record, read_issues = read_annotation(annotation, raw_dir)
    assert record is not None, read_issues
    pairs, issues = check_record(record, width, height, labels, ConvertParams())
    assert not is_error(issues), issues
    return rasterize(pairs, width, height)


def test_masks_match_labelme2voc_pixel_for_pixel(realdata: Path) -> None:
    compared = {}
    for raw_dir, png_dir, names_file in golden_sets(realdata):
        # labelme2voc: line 0 of labels.txt is __ignore__ (-1, saved as 255 in the uint8 PNG),
        # then _background_ = 0; class_names.txt is that list without __ignore__.
        classes = tuple(names_file.read_text(encoding="utf-8").splitlines())
        assert classes[0] == "_background_"
        labels = Labels(classes=classes, ignore_labels=("__ignore__",))
        for golden_png in sorted(png_dir.glob("*.png")):
            golden = np.array(Image.open(golden_png))
            height, width = golden.shape
            ours = convert_like_the_stage(raw_dir / f"{golden_png.stem}.json", raw_dir, labels,
                                          width, height)
            rows, cols = np.nonzero(ours != golden)
            diff = {(int(r), int(c)): (int(ours[r, c]), int(golden[r, c]))
                    for r, c in zip(rows, cols, strict=True)}
            assert diff == KNOWN_OLD_PILLOW_PIXELS.get(golden_png.stem, {}), golden_png
            compared[f"{raw_dir.parent.name}/{golden_png.stem}"] = len(diff)
    assert len(compared) == 11  # 3 semantic + 3 instance + 5 video frames
    assert sum(compared.values()) == 2  # the named pixel, in the semantic and instance sets


def test_ignore_label_is_255_in_the_golden_masks_and_ours(realdata: Path) -> None:
    root = realdata / EXAMPLES / "semantic_segmentation"
    golden = np.array(Image.open(root / "data_dataset_voc/SegmentationClass/2011_000003.png"))
    classes = tuple((root / "data_dataset_voc/class_names.txt").read_text().splitlines())
    ours = convert_like_the_stage(root / "data_annotated/2011_000003.json",
                                  root / "data_annotated",
                                  Labels(classes=classes), *golden.shape[::-1])
    assert (golden == 255).sum() == (ours == 255).sum() > 0
    assert sorted(np.unique(ours).tolist()) == [0, 5, 15, 255]  # bottle, person, __ignore__


def test_tutorial_label_png_differs_only_by_one_old_pillow_scanline(realdata: Path) -> None:
    # labelme_json_to_dataset output (label values in label_names.txt order). The older Pillow
    # that made it left 8 pixels of one row at the meeting edge of two polygons to shape 0.
    root = realdata / EXAMPLES / "tutorial"
    classes = tuple((root / "apc2016_obj3/label_names.txt").read_text().split())
    golden = np.array(Image.open(root / "apc2016_obj3/label.png"))
    ours = convert_like_the_stage(root / "apc2016_obj3.json", root, Labels(classes=classes),
                                  *golden.shape[::-1])
    rows, cols = np.nonzero(ours != golden)
    assert rows.tolist() == [711] * 8
    assert cols.tolist() == list(range(523, 531))
    assert set(ours[711, 523:531].tolist()) == {1}  # highland_..., drawn after the shelf
    assert set(golden[711, 523:531].tolist()) == {4}  # shelf


# ------------------------------------ one canvas vs Labelme's one-mask-per-shape algorithm


def labelme_reference(shapes: list[Shape], values: list[int], width: int, height: int,
                      ) -> np.ndarray:
    """Labelme's shapes_to_label: a full-size bool mask per shape, then label[mask] = value."""
    label = np.zeros((height, width), dtype=np.int32)
    for s, value in zip(shapes, values, strict=True):
        if s.kind == "mask":
            mask = np.zeros((height, width), dtype=bool)
            (x1, y1), (x2, y2) = np.asarray(s.points).astype(int)
            mask[y1:y2 + 1, x1:x2 + 1] = np.array(Image.open(io.BytesIO(s.mask_png))) != 0
        else:
            canvas = Image.new("L", (width, height), 0)
            draw = ImageDraw.Draw(canvas)
            xy = list(s.points)
            if s.kind == "circle":
                (cx, cy), (px, py) = xy
                d = np.sqrt((cx - px) ** 2 + (cy - py) ** 2)
                draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
            elif s.kind == "rectangle":
                draw.rectangle(xy, outline=1, fill=1)
            elif s.kind in ("line", "linestrip"):
                draw.line(xy=xy, fill=1, width=10)
            elif s.kind == "point":
                (cx, cy), = xy
                draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], outline=1, fill=1)
            else:
                draw.polygon(xy=xy, outline=1, fill=1)
            mask = np.array(canvas, dtype=bool)
        label[mask] = value
    return label.astype(np.uint8)


@pytest.mark.parametrize("relative", [
    "labelme-examples/examples/primitives/primitives.json",
    "tony607-nuts-labelme/images/11.json",
])
def test_one_canvas_equals_labelme_per_shape_masks(realdata: Path, relative: str) -> None:
    path = realdata / relative
    record, _ = read_annotation(path, path.parent)
    assert record is not None and record.width and record.height
    kinds = {s.kind for s in record.shapes}
    values = [i % 7 + 1 for i in range(len(record.shapes))]  # overlapping shapes get new values
    ours = rasterize(list(zip(record.shapes, values, strict=True)), record.width, record.height)
    expected = labelme_reference(list(record.shapes), values, record.width, record.height)
    assert np.array_equal(ours, expected)
    if "primitives" in relative:  # every kind Labelme draws, incl. a mask with fractional bbox
        assert kinds == {"rectangle", "circle", "polygon", "line", "point", "linestrip", "mask"}


def test_primitives_mask_shape_is_pasted_at_its_truncated_bbox(realdata: Path) -> None:
    path = realdata / EXAMPLES / "primitives/primitives.json"
    record, _ = read_annotation(path, path.parent)
    assert record is not None
    octagon = next(s for s in record.shapes if s.kind == "mask")
    assert octagon.points == ((417.39759036144574, 305.0), (516.3975903614457, 404.0))
    assert mask_size(octagon) == (100, 100)  # int(417.39)=417 .. int(516.39)=516, inclusive
    inside = decode_mask_png(octagon.mask_png, (100, 100))
    ours = rasterize([(octagon, 7)], 560, 450)
    expected = np.zeros((450, 560), dtype=np.uint8)
    expected[305:405, 417:517][inside] = 7
    assert np.array_equal(ours, expected)
    assert 0 < inside.sum() < 100 * 100  # an octagon, not its box


# ---------------------------------------------------------- each kind on a tiny canvas


def test_polygon_is_filled_with_its_outline() -> None:
    triangle = shape("polygon", (1, 1), (7, 1), (1, 7))
    assert np.array_equal(draw_one(triangle), grid(
        ".........",
        ".1111111.",
        ".111111..",
        ".11111...",
        ".1111....",
        ".111.....",
        ".11......",
        ".1.......",
        ".........",
    ))


def test_voc_box_converted_per_contract_covers_exactly_the_box() -> None:
    # VOC xmin=2 ymin=3 xmax=4 ymax=5 (1-based, inclusive) -> corners (1, 2), (3, 4)
    xmin, ymin, xmax, ymax = 2, 3, 4, 5
    box = shape("rectangle", (xmin - 1, ymin - 1), (xmax - 1, ymax - 1))
    expected = np.zeros((7, 6), dtype=np.uint8)
    expected[ymin - 1:ymax, xmin - 1:xmax] = 1  # 0-based rows 2..4, cols 1..3
    assert np.array_equal(draw_one(box, 6, 7), expected)


@pytest.mark.parametrize("corners", [
    ((1, 2), (3, 4)), ((3, 4), (1, 2)), ((3, 2), (1, 4)), ((1, 4), (3, 2)),
])
def test_rectangle_corners_in_any_order_draw_the_same_box(corners) -> None:
    expected = np.zeros((6, 5), dtype=np.uint8)
    expected[2:5, 1:4] = 1
    assert np.array_equal(draw_one(shape("rectangle", *corners), 5, 6), expected)


def test_fractional_rectangle_corners_are_truncated_like_pillow_does_for_labelme() -> None:
    box = shape("rectangle", (3.2, 4.9), (1.6, 2.4))
    expected = np.zeros((6, 5), dtype=np.uint8)
    expected[2:5, 1:4] = 1
    assert np.array_equal(draw_one(box, 5, 6), expected)


def test_circle_is_a_disc_through_its_rim_point() -> None:
    disc = grid(
        ".........",
        ".........",
        "...111...",
        "..11111..",
        "..11111..",
        "..11111..",
        "...111...",
        ".........",
        ".........",
    )
    assert np.array_equal(draw_one(shape("circle", (4, 4), (4, 6))), disc)
    assert np.array_equal(draw_one(shape("circle", (4, 4), (2, 4))), disc)


def test_point_is_a_disc_of_point_radius() -> None:
    assert np.array_equal(draw_one(shape("point", (4, 4)), point_radius=2),
                          draw_one(shape("circle", (4, 4), (4, 6))))
    assert int(draw_one(shape("point", (20, 20)), 41, 41).sum()) == int(
        draw_one(shape("circle", (20, 20), (25, 20)), 41, 41).sum())  # default radius 5


def test_line_and_linestrip_have_line_width() -> None:
    thick = draw_one(shape("line", (1, 2), (7, 2)), line_width=3)
    expected = np.zeros((9, 9), dtype=np.uint8)
    expected[1:4, 1:8] = 1
    assert np.array_equal(thick, expected)
    assert np.array_equal(draw_one(shape("linestrip", (1, 1), (6, 1), (6, 6)), line_width=1), grid(
        ".........",
        ".111111..",
        "......1..",
        "......1..",
        "......1..",
        "......1..",
        "......1..",
        ".........",
        ".........",
    ))
    assert int(draw_one(shape("line", (5, 20), (35, 20)), 41, 41).sum()) == 31 * 10  # default


def test_mask_shape_pastes_its_png_at_the_int_corners() -> None:
    inside = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=np.uint8) * 255
    mask = shape("mask", (1.7, 2.2), (4.9, 3.9), mask_png=png(inside))
    assert mask_size(mask) == (4, 2)
    assert np.array_equal(draw_one(mask, 7, 6), grid(
        ".......",
        ".......",
        ".1.11..",
        "..11...",
        ".......",
        ".......",
    ))


def test_mask_shape_past_the_border_is_cut_not_crashed() -> None:
    inside = np.full((3, 4), 255, dtype=np.uint8)
    mask = shape("mask", (-2, 4), (1, 6), mask_png=png(inside))  # cols -2..1, rows 4..6
    expected = np.zeros((5, 5), dtype=np.uint8)
    expected[4:5, 0:2] = 3
    assert np.array_equal(rasterize([(mask, 3)], 5, 5), expected)


def test_later_shapes_win_and_values_are_written_as_given() -> None:
    left = shape("rectangle", (0, 0), (3, 2))
    right = shape("rectangle", (2, 0), (5, 2))
    assert rasterize([(left, 1), (right, 255)], 6, 3)[0].tolist() == [1, 1, 255, 255, 255, 255]
    assert rasterize([(right, 255), (left, 1)], 6, 3)[0].tolist() == [1, 1, 1, 1, 255, 255]
    # a later shape of value 0 (an explicit background class) erases, like label[mask] = 0
    hole = shape("rectangle", (1, 0), (1, 2))
    assert rasterize([(left, 2), (hole, 0)], 6, 3)[0].tolist() == [2, 0, 2, 2, 0, 0]


def test_nothing_drawn_is_zero_and_the_array_is_height_by_width_uint8() -> None:
    out = rasterize([], 7, 3)
    assert out.shape == (3, 7) and out.dtype == np.uint8 and not out.any()


@pytest.mark.parametrize("bad", [
    shape("points", (1, 1), (2, 2)),
    shape("polygon", (1, 1), (2, 2)),
    shape("circle", (1, 1)),
    shape("mask", (0, 0), (1, 1)),  # no PNG
])
def test_rasterize_refuses_a_shape_validation_would_have_rejected(bad: Shape) -> None:
    with pytest.raises(ValueError, match="shape 0"):
        rasterize([(bad, 1)], 5, 5)


# ------------------------------------------------------------------ helpers for validation


def test_decode_mask_png_says_what_is_wrong() -> None:
    good = png(np.array([[0, 9]], dtype=np.uint8))
    assert decode_mask_png(good, (2, 1)).tolist() == [[False, True]]
    with pytest.raises(ValueError, match=r"mask PNG must be 3x1 \(its bbox\), got 2x1"):
        decode_mask_png(good, (3, 1))
    with pytest.raises(ValueError, match="mask PNG cannot be decoded"):
        decode_mask_png(b"\x89PNG\r\n\x1a\n garbage", (2, 1))
    with pytest.raises(ValueError, match="mask PNG cannot be decoded"):
        decode_mask_png(good[:40], (2, 1))  # truncated: header fine, pixels missing
    with pytest.raises(ValueError, match=r"one channel .* got mode RGB"):
        decode_mask_png(png(np.zeros((1, 2, 3), dtype=np.uint8)), (2, 1))
    with pytest.raises(ValueError, match="no PNG data"):
        decode_mask_png(None)


def test_pixel_box_and_covers_pixels() -> None:
    assert pixel_box(shape("polygon", (1.4, 2.6), (5.5, 2), (3, 7))) == (1, 2, 6, 7)
    assert pixel_box(shape("rectangle", (3.9, 4.9), (1.6, 2.4))) == (1, 2, 3, 4)
    assert pixel_box(shape("circle", (10, 10), (13, 14))) == (5, 5, 15, 15)
    assert pixel_box(shape("point", (10, 10)), point_radius=2) == (8, 8, 12, 12)
    assert pixel_box(shape("line", (2, 3), (8, 3)), line_width=4) == (0, 1, 10, 5)
    assert covers_pixels(shape("polygon", (1, 1), (3, 1), (2, 3)), 5, 5)
    assert not covers_pixels(shape("circle", (2, 2), (2, 2)), 5, 5)  # zero radius draws nothing
    assert not covers_pixels(shape("rectangle", (6, 0), (9, 3)), 5, 5)  # right of the image
    big = shape("polygon", (900, 700), (950, 700), (920, 760))
    assert covers_pixels(big, 1000, 800)
    assert np.array_equal(  # drawn on a shifted local canvas: same pixels as the full canvas
        np.argwhere(draw_one(big, 1000, 800)).min(0), [700, 900])
