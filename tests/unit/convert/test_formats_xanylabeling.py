"""X-AnyLabeling / AnyLabeling Labelme-format JSON, Labelme 7's oriented rectangles, the
difficult flag and the never-background rule, each with its exact mask; the real
xanylabeling-examples set (compared with X-AnyLabeling's own masks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.files import (
    labelme_doc,
    png_bytes,
    shape,
    voc_xml,
    write_image,
    write_json,
    xany_doc,
    xany_shape,
)
from helpers.files import write_text as write_file
from PIL import Image, ImageDraw
from test_convert_stage import convert, issues, manifest, write_params

from pipeline.convert.formats import find_annotations, read_annotation
from pipeline.convert.raster import rasterize
from pipeline.convert.validate import check_record
from pipeline.core.records import Issue, Record, Shape
from pipeline.params import ConvertParams, Labels
from pipeline.storage.masks import read_mask

CLASSES = ("background", "text", "person", "car")
LABELS = Labels(classes=CLASSES)
DEFAULT = ConvertParams()


def read(path: Path, raw: Path) -> tuple[Record, list[Issue]]:
    record, found = read_annotation(path, raw)
    assert record is not None, found
    return record, found


def mask_of(record: Record, cfg: ConvertParams = DEFAULT, labels: Labels = LABELS
            ) -> tuple[np.ndarray, list[Issue]]:
    """The mask convert draws for `record` (its declared size), and the check's issues."""
    assert record.width and record.height
    pairs, found = check_record(record, record.width, record.height, labels, cfg)
    return rasterize(pairs, record.width, record.height), found


def box(height: int, width: int, x0: int, y0: int, x1: int, y1: int, value: int) -> np.ndarray:
    """A (height, width) mask with the inclusive box x0..x1, y0..y1 set to `value`."""
    out = np.zeros((height, width), np.uint8)
    out[y0:y1 + 1, x0:x1 + 1] = value
    return out


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    write_image(raw / "img.png", width=8, height=6)
    return raw


# --------------------------------------------------------------------------- rectangles


def test_four_point_rectangle_is_the_box_exactly_as_a_two_point_one(raw: Path) -> None:
    # X-AnyLabeling 2.4.0: clockwise corners from the top-left, every extra key present
    four = xany_shape("text", "rectangle", [[1.0, 1.0], [5.0, 1.0], [5.0, 3.0], [1.0, 3.0]],
                      score=0.889, kie_linking=[], visible=False)
    record, found = read(write_json(raw / "img.json", xany_doc([four])), raw)
    assert found == []
    assert [(s.kind, s.points, s.tool_kind) for s in record.shapes] == [
        ("rectangle", ((1.0, 1.0), (5.0, 3.0)), None)]
    mask, found = mask_of(record)
    assert found == []  # visible: false never drops a shape
    assert np.array_equal(mask, box(6, 8, 1, 1, 5, 3, 1))
    # the same box as Labelme's 2 points (the old X-AnyLabeling 0.4.0 writes those): same mask
    two = shape("text", "rectangle", [[5.0, 3.0], [1.0, 1.0]])
    record2, _ = read(write_json(raw / "img.json", labelme_doc([two])), raw)
    assert np.array_equal(mask_of(record2)[0], mask)


def test_four_corners_in_any_order_and_fractional_are_the_box(raw: Path) -> None:
    corners = [[6.5, 4.5], [1.5, 1.2], [6.5, 1.2], [1.5, 4.5]]
    record, _ = read(write_json(raw / "img.json", xany_doc([xany_shape("text", "rectangle",
                                                                        corners)])), raw)
    assert record.shapes[0].points == ((1.5, 1.2), (6.5, 4.5))
    assert np.array_equal(mask_of(record)[0], box(6, 8, 1, 1, 6, 4, 1))  # Pillow truncates


def test_four_other_points_are_the_quadrilateral(raw: Path) -> None:
    quad = [[1.0, 1.0], [6.0, 2.0], [6.0, 5.0], [1.0, 4.0]]
    record, _ = read(write_json(raw / "img.json", xany_doc([xany_shape("text", "rectangle",
                                                                        quad)])), raw)
    shape_ = record.shapes[0]
    assert (shape_.kind, shape_.tool_kind, shape_.points) == (
        "polygon", "rectangle", tuple(map(tuple, quad)))
    mask, found = mask_of(record)
    assert found == []
    expected = Image.new("L", (8, 6), 0)
    ImageDraw.Draw(expected).polygon([tuple(p) for p in quad], outline=1, fill=1)
    assert np.array_equal(mask, np.array(expected))
    assert mask[1, 1] == 1 and mask[0, 6] == 0 and mask[5, 6] == 1 and mask[5, 1] == 0


@pytest.mark.parametrize("kind", ["rotation", "oriented_rectangle"])
def test_rotated_boxes_are_drawn_as_their_polygon(raw: Path, kind: str) -> None:
    # X-AnyLabeling "rotation" (with its direction in radians), Labelme 7 "oriented_rectangle"
    corners = [[3.0, 0.0], [6.0, 3.0], [3.0, 5.0], [0.0, 2.0]]
    extra = {"direction": 0.785} if kind == "rotation" else {}
    doc = xany_doc([xany_shape("person", kind, corners, **extra)])
    record, _ = read(write_json(raw / "img.json", doc), raw)
    assert (record.shapes[0].kind, record.shapes[0].tool_kind) == ("polygon", kind)
    mask, found = mask_of(record)
    assert found == []
    expected = Image.new("L", (8, 6), 0)
    ImageDraw.Draw(expected).polygon([tuple(p) for p in corners], outline=2, fill=2)
    assert np.array_equal(mask, np.array(expected))
    assert (mask == 2).sum() > 10


def test_rotation_without_four_corners_is_an_error_naming_it(raw: Path) -> None:
    doc = xany_doc([xany_shape("person", "rotation", [[1, 1], [5, 1], [5, 4]])])
    record, _ = read(write_json(raw / "img.json", doc), raw)
    _, found = mask_of(record)
    assert [(i.check, i.severity) for i in found] == [("unsupported_shape", "error")]
    assert found[0].message.startswith(
        "img.json shape 0 (rotation 'person'): a rotation must have 4 corner points, got 3; "
        "the file is left out")


def test_rectangle_of_three_points_is_a_point_count_error(raw: Path) -> None:
    doc = xany_doc([xany_shape("car", "rectangle", [[1, 1], [5, 1], [5, 4]])])
    record, _ = read(write_json(raw / "img.json", doc), raw)
    _, found = mask_of(record)
    assert [(i.check, i.severity) for i in found] == [("point_count", "error")]
    assert "a rectangle must have 2 points (or 4 corners), got 3" in found[0].message


def test_extra_keys_of_every_kind_are_accepted(raw: Path) -> None:
    shapes = [xany_shape("person", "rectangle", [[0, 0], [3, 0], [3, 2], [0, 2]],
                         score=0.26, group_id=17, description=None, flags=None,
                         attributes={"bodyColor": "white", "": "Tesla"}, visible=False,
                         text="")]
    doc = {**xany_doc(shapes), "tags": ["street"], "description": " | "}
    record, found = read(write_json(raw / "img.json", doc), raw)
    assert found == []
    assert record.shapes[0].group_id == 17  # a track id: kept, never merged
    assert np.array_equal(mask_of(record)[0], box(6, 8, 0, 0, 3, 2, 2))


# --------------------------------------------------------------------------- difficult


def test_difficult_objects_are_drawn_as_their_class_or_as_ignore(raw: Path) -> None:
    doc = xany_doc([xany_shape("car", "rectangle", [[0, 0], [2, 2]], difficult=True),
                    xany_shape("car", "rectangle", [[4, 3], [6, 5]])])
    record, _ = read(write_json(raw / "img.json", doc), raw)
    assert [s.difficult for s in record.shapes] == [True, False]
    as_class = box(6, 8, 0, 0, 2, 2, 3) + box(6, 8, 4, 3, 6, 5, 3)
    assert np.array_equal(mask_of(record)[0], as_class)
    ignored, found = mask_of(record, ConvertParams(difficult="ignore"))
    assert found == []
    assert np.array_equal(ignored, box(6, 8, 0, 0, 2, 2, 255) + box(6, 8, 4, 3, 6, 5, 3))


def test_voc_difficult_flag(raw: Path) -> None:
    xml = voc_xml("img.png", [("car", 1, 1, 3, 3)]).replace(
        "<difficult>0</difficult>", "<difficult>1</difficult>")
    xml = xml.replace("</annotation>", "<object><name>car</name><difficult>0</difficult>"
                      "<bndbox><xmin>6</xmin><ymin>5</ymin><xmax>8</xmax><ymax>6</ymax>"
                      "</bndbox></object></annotation>")
    record, _ = read(write_file(raw / "img.xml", xml), raw)
    assert [s.difficult for s in record.shapes] == [True, False]
    ignored, _ = mask_of(record, ConvertParams(difficult="ignore"))
    assert np.array_equal(ignored, box(6, 8, 0, 0, 2, 2, 255) + box(6, 8, 5, 4, 7, 5, 3))
    assert np.array_equal(mask_of(record)[0],
                          box(6, 8, 0, 0, 2, 2, 3) + box(6, 8, 5, 4, 7, 5, 3))


# --------------------------------------------------------------------------- never background


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()
    write_params(tmp_path, classes=list(CLASSES))
    return tmp_path


def _undrawable_set(raw: Path) -> None:
    """good.json (a box), points.json (Labelme's "points" kind), and quad.json (a box and a
    self-intersecting polygon whose repair changes it by far more than 5%)."""
    (raw / "good.png").write_bytes(png_bytes(8, 6))
    write_json(raw / "good.json", labelme_doc([shape("car", "rectangle", [[1, 1], [3, 3]])],
                                              "good.png"))
    (raw / "points.png").write_bytes(png_bytes(8, 6))
    write_json(raw / "points.json", labelme_doc(
        [shape("car", "rectangle", [[0, 0], [1, 1]]),
         shape("person", "points", [[2.2, 1.5], [5.6, 4.1], [4.0, 2.0]])], "points.png"))


def test_undrawable_shape_rejects_its_file_and_the_good_file_still_converts(
        project: Path) -> None:
    _undrawable_set(project / "raw")
    summary = convert(project)
    assert (summary.seen, summary.converted, summary.rejected) == (2, 1, 1)
    assert [r["id"] for r in manifest(project)] == ["good"]
    assert ("points.json", 1, "unsupported_shape", "error") in issues(project)
    report = json.loads((project / "reports/validation.json").read_text())
    message = next(i["message"] for i in report if i["check"] == "unsupported_shape")
    assert message == (
        "points.json shape 1 (points 'person'): kind must be one of polygon, rectangle, "
        "circle, line, linestrip, point, mask (or rotation, oriented_rectangle), got 'points'; "
        "the file is left out (convert.undrawable: ignore would mark the shape's bounding box "
        "as ignore and convert the rest)")
    good = read_mask(project / "prepared/masks/good.png")
    assert np.array_equal(good, box(6, 8, 1, 1, 3, 3, 3))


def test_undrawable_ignore_marks_the_bounding_box_and_says_so(project: Path) -> None:
    _undrawable_set(project / "raw")
    write_params(project, classes=list(CLASSES), undrawable="ignore")
    summary = convert(project)
    assert (summary.seen, summary.converted, summary.rejected) == (2, 2, 0)
    mask = read_mask(project / "prepared/masks/points.png")
    # the box first (car, 3), then the points' bounding box x 2..6, y 1..5 as ignore
    expected = box(6, 8, 0, 0, 1, 1, 3)
    expected[1:6, 2:7] = 255
    assert np.array_equal(mask, expected)
    report = json.loads((project / "reports/validation.json").read_text())
    found = [i for i in report if i["check"] == "unsupported_shape"]
    assert [(i["file"], i["shape"], i["severity"]) for i in found] == [
        ("points.json", 1, "warning")]
    assert found[0]["message"].endswith(
        "got 'points'; marked its bounding box x 2..6, y 1..5 as ignore (255) and converted "
        "the rest (convert.undrawable: ignore)")
    md = (project / "reports/validation.md").read_text()
    assert "marked its bounding box x 2..6, y 1..5 as ignore (255)" in md


def test_undrawable_mask_png_and_invalid_polygon_follow_the_rule(raw: Path) -> None:
    pentagram = [[4, 0], [6.5, 5.5], [0.5, 2], [7.5, 2], [1.5, 5.5]]  # repair fills its centre
    bad_mask = {**shape("car", "mask", [[1, 1], [3, 2]]), "mask": "bm90IGEgcG5n"}
    doc = labelme_doc([shape("person", "polygon", pentagram), bad_mask])
    record, found = read_annotation(write_json(raw / "img.json", doc), raw)
    assert record is None and [i.check for i in found] == ["bad_mask"]  # reader: not a PNG
    record, _ = read(write_json(raw / "img.json", labelme_doc([shape("person", "polygon",
                                                                          pentagram)])), raw)
    _, found = mask_of(record)
    assert [(i.check, i.severity) for i in found] == [("invalid_polygon", "error")]
    mask, found = mask_of(record, ConvertParams(undrawable="ignore"))
    assert [(i.check, i.severity) for i in found] == [("invalid_polygon", "warning")]
    assert np.array_equal(mask, box(6, 8, 0, 0, 7, 5, 255))  # x 0..8 -> clipped to 0..7


def test_no_path_leaves_an_annotated_object_as_background(raw: Path) -> None:
    """Every shape kind a reader can hand on either draws pixels, is an error, or (with
    undrawable: ignore) draws ignore: none comes out as a converted all-background mask."""
    kinds = ["points", "segm", "cuboid", "rotation", "oriented_rectangle", "rectangle",
             "polygon", "circle", "mask", "line", "point"]
    for kind in kinds:
        for cfg in (ConvertParams(), ConvertParams(undrawable="ignore")):
            three = ((2.0, 2.0), (5.0, 4.0), (3.0, 5.0))
            record = Record("a", "a.json", "labelme", "img.png", None, 8, 6,
                            (Shape("car", kind, three, 0),))
            mask, found = mask_of(record, cfg)
            errors = [i for i in found if i.severity == "error"]
            assert errors or mask.any(), (kind, cfg.undrawable)


# --------------------------------------------------------------------------- the real set


def _xany_labels(raw: Path) -> list[str]:
    names: set[str] = set()
    for path in raw.rglob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "shapes" in data:
            names |= {s["label"] for s in data["shapes"]}
    return ["background", *sorted(names)]


def test_real_xanylabeling_examples_all_convert(realdata: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    raw = realdata / "xanylabeling-examples"
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, classes=_xany_labels(raw), raw_dir=str(raw),
                 max_error_fraction=0.2)
    summary = convert(tmp_path, jobs=2)
    assert (summary.seen, summary.converted, summary.rejected) == (8, 8, 0)
    rows = {r["id"]: r for r in manifest(tmp_path)}
    assert sum(int(r["n_shapes"]) for r in rows.values()) == 167  # PROVENANCE.md: 167 shapes
    assert rows["examples/classification/shape-level/sources/multi-task/elon-musk-tesla"][
        "image"].endswith(".webp")
    # the tool's config JSONs and the YOLO-seg export without its image: skipped, not rejected
    found = issues(tmp_path)
    assert sorted(f for f, _, check, _ in found if check == "skipped_file") == [
        "examples/classification/shape-level/attributes.json",
        "examples/segmentation/binary_semantic_segmentation/mask_grayscale_map.json",
        "examples/segmentation/instance_segmentation/labels/cat_dog.txt",
        "examples/segmentation/multiclass_semantic_segmentation/mask_color_map.json",
    ]
    assert not [i for i in found if i[3] == "error"]
    assert {check for _, _, check, _ in found} <= {"skipped_file", "class_without_samples"}
    # every 4-point rectangle drew its box: a pixel per shape at least, visible:false included
    worker = "examples/classification/shape-level/sources/multi-label/worker"
    assert int(rows[worker]["n_shapes"]) == 4
    classes = _xany_labels(raw)
    mask = read_mask(tmp_path / "prepared" / rows[worker]["mask"])
    assert {classes[v] for v in np.unique(mask) if v} == {"person", "helmet"}


def test_real_cat_dog_polygons_match_x_anylabelings_own_mask(realdata: Path) -> None:
    base = realdata / "xanylabeling-examples/examples/segmentation/multiclass_semantic_segmentation"
    record, found = read(base / "sources/cat_dog.json", realdata / "xanylabeling-examples")
    labels = Labels(classes=("background", "cat", "dog"))
    ours, found = mask_of(record, labels=labels)
    assert found == []
    with Image.open(base / "masks/cat_dog.png") as theirs_png:
        assert theirs_png.mode == "P"
        rgb = np.asarray(theirs_png.convert("RGB")).astype(int)
    theirs = np.zeros(ours.shape, np.uint8)  # their palette order is dog=1, cat=2: by colour
    theirs[(rgb == (85, 0, 255)).all(-1)] = 1  # cat
    theirs[(rgb == (213, 42, 54)).all(-1)] = 2  # dog
    for value in (1, 2):
        ours_c, theirs_c = ours == value, theirs == value
        differ = ours_c ^ theirs_c
        # Labelme's Pillow fill vs X-AnyLabeling's own: only boundary pixels may differ
        assert differ.sum() <= 0.002 * theirs_c.sum(), value
        grown = np.zeros_like(theirs_c)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= np.roll(np.roll(theirs_c, dy, 0), dx, 1)
        assert not (ours_c & ~grown).any()  # nothing of ours lies away from their object
    assert abs(int((ours == 1).sum()) - 139911) < 300 and abs(int((ours == 2).sum()) - 265472) < 300


def test_real_config_files_are_found_but_not_annotations(realdata: Path) -> None:
    raw = realdata / "xanylabeling-examples"
    found = [p.relative_to(raw).as_posix() for p in find_annotations(raw)]
    assert len(found) == 8 and all(p.endswith(".json") for p in found)
    assert "examples/segmentation/multiclass_semantic_segmentation/mask_color_map.json" \
        not in found
