"""Labelme JSON reader: every real-world quirk on tiny files, then the real example sets."""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from helpers.files import (
    b64,
    image_bytes,
    labelme_doc,
    mask_b64,
    shape,
    write_image,
    write_json,
    write_text,
)

from pipeline.convert.formats import find_annotations, read_annotation
from pipeline.convert.formats.labelme import read_labelme
from pipeline.core.records import Issue, Record, Shape, is_error


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    write_image(raw / "img.png")
    return raw


def read(path: Path, raw: Path) -> tuple[Record | None, list[Issue]]:
    record, issues = read_annotation(path, raw)
    assert (record is None) == is_error(issues)
    return record, issues


def checks(issues: list[Issue]) -> list[tuple[str | None, int | None, str, str]]:
    return [(i.file, i.shape, i.check, i.severity) for i in issues]


def test_all_shape_types_read_exactly(raw: Path) -> None:
    mask = mask_b64(3, 2)
    doc = labelme_doc(
        [
            shape("a", "polygon", [[1, 1], [5, 1], [3, 4]]),
            shape("b", "rectangle", [[6, 5], [1, 2]], group_id=3),
            shape("c", "circle", [[4, 3], [6, 3]]),
            shape("d", "line", [[0, 0], [7, 5]]),
            shape("e", "linestrip", [[0.5, 0.5], [2.25, 3.75], [7, 1]]),
            shape("f", "point", [[2, 2]]),
            shape("g", "mask", [[1.5, 2.25], [3.75, 3.5]], mask=mask),
        ]
    )
    record, issues = read(write_json(raw / "img.json", doc), raw)
    assert issues == []
    assert record == Record(
        id="img",
        annotation="img.json",
        format="labelme",
        image_path="img.png",
        image_data=None,
        width=8,
        height=6,
        shapes=(
            Shape("a", "polygon", ((1.0, 1.0), (5.0, 1.0), (3.0, 4.0)), 0),
            Shape("b", "rectangle", ((6.0, 5.0), (1.0, 2.0)), 1, group_id=3),
            Shape("c", "circle", ((4.0, 3.0), (6.0, 3.0)), 2),
            Shape("d", "line", ((0.0, 0.0), (7.0, 5.0)), 3),
            Shape("e", "linestrip", ((0.5, 0.5), (2.25, 3.75), (7.0, 1.0)), 4),
            Shape("f", "point", ((2.0, 2.0),), 5),
            Shape("g", "mask", ((1.5, 2.25), (3.75, 3.5)), 6, mask_png=base64.b64decode(mask)),
        ),
        version="5.4.1",
    )
    assert all(isinstance(v, float) for s in record.shapes for p in s.points for v in p)


def test_old_labelme_without_shape_type_reads_polygons(raw: Path) -> None:
    """Labelme < 3.4: no shape_type, top-level lineColor/fillColor, no group_id key."""
    doc = {
        "imagePath": "img.png",
        "imageData": None,
        "lineColor": [0, 255, 0, 128],
        "fillColor": [255, 0, 0, 128],
        "flags": {},
        "shapes": [
            {
                "label": "cat",
                "line_color": None,
                "fill_color": None,
                "points": [[1, 1], [4, 1], [4, 4]],
            },
            shape("dog", None, [[0, 0], [2, 0], [2, 2]], shape_type=None),
        ],
    }
    record, issues = read(write_json(raw / "img.json", doc), raw)
    assert issues == []
    assert record is not None
    assert [(s.label, s.kind, s.group_id) for s in record.shapes] == [
        ("cat", "polygon", None),
        ("dog", "polygon", None),
    ]
    assert (record.version, record.width, record.height) == (None, None, None)


@pytest.mark.parametrize("flags", [[], ["occluded"], {}, {"blurry": True}, None])
def test_flags_as_list_or_dict(raw: Path, flags: object) -> None:
    doc = labelme_doc([shape("a", "polygon", [[1, 1], [4, 1], [4, 4]], flags=flags)], flags=flags)
    record, issues = read(write_json(raw / "img.json", doc), raw)
    assert issues == []
    assert record is not None and len(record.shapes) == 1


def test_group_id_missing_null_or_int(raw: Path) -> None:
    pts = [[1, 1], [4, 1], [4, 4]]
    doc = labelme_doc(
        [
            shape("a", "polygon", pts),
            shape("a", "polygon", pts, group_id=None),
            shape("a", "polygon", pts, group_id=7),
            shape("a", "polygon", pts, group_id="x"),
        ]
    )
    record, issues = read(write_json(raw / "img.json", doc), raw)
    assert record is not None
    assert [s.group_id for s in record.shapes] == [None, None, 7, None]
    assert checks(issues) == [("img.json", 3, "bad_group_id", "warning")]
    assert issues[0].message == (
        "img.json shape 3: group_id must be an integer or null, got 'x'; ignored it"
    )


def test_embedded_image_data_and_good_image_path(raw: Path) -> None:
    data = image_bytes(8, 6, "JPEG")
    doc = labelme_doc([], imageData=b64(data))
    record, issues = read(write_json(raw / "img.json", doc), raw)
    assert issues == []
    assert record is not None
    assert (record.image_path, record.image_data) == ("img.png", data)


def test_windows_separators_relative_to_json(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "photos" / "day 1" / "cat pic.jpg")
    doc = labelme_doc([], image_path="..\\photos\\day 1\\cat pic.jpg")
    record, issues = read(write_json(raw / "ann" / "cat pic.json", doc), raw)
    assert issues == []
    assert record is not None
    assert (record.id, record.annotation, record.image_path) == (
        "ann/cat pic",
        "ann/cat pic.json",
        "photos/day 1/cat pic.jpg",
    )


def test_wrong_image_path_uses_embedded_data_with_warning(raw: Path) -> None:
    data = image_bytes(8, 6)
    doc = labelme_doc([], image_path="missing.jpg", imageData=b64(data))
    record, issues = read(write_json(raw / "img.json", doc), raw)
    assert record is not None
    assert (record.image_path, record.image_data) == (None, data)
    assert checks(issues) == [("img.json", None, "image_path_wrong", "warning")]
    assert issues[0].message == (
        "img.json: imagePath must name an image file inside the raw dir, got 'missing.jpg' "
        "(no such image); using the embedded imageData"
    )


@pytest.mark.parametrize("image_name", ["shot.JPG", "shot.Jpg", "shot.png"])
def test_wrong_image_path_falls_back_to_same_stem_image(tmp_path: Path, image_name: str) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "b" / image_name)
    write_image(raw / "b" / "other.jpg")
    doc = labelme_doc([], image_path="renamed.jpg")
    record, issues = read(write_json(raw / "b" / "shot.json", doc), raw)
    assert record is not None and record.image_path == f"b/{image_name}"
    assert checks(issues) == [("b/shot.json", None, "image_path_wrong", "warning")]
    assert issues[0].message.endswith(f"(no such image); using 'b/{image_name}' beside the JSON")


@pytest.mark.parametrize(
    "image_path", ["C:\\Users\\bob\\Desktop\\shot.jpg", "/home/bob/data/shot.jpg"]
)
def test_absolute_image_path_from_another_machine(tmp_path: Path, image_path: str) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "shot.jpg")
    doc = labelme_doc([], image_path=image_path)
    record, issues = read(write_json(raw / "shot.json", doc), raw)
    assert record is not None and record.image_path == "shot.jpg"
    assert checks(issues) == [("shot.json", None, "image_path_wrong", "warning")]
    assert "(an absolute path from another machine); using 'shot.jpg'" in issues[0].message


def test_absolute_image_path_inside_raw_dir_is_used(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    image = write_image(raw / "imgs" / "x.png")
    record, issues = read(write_json(raw / "a.json", labelme_doc([], str(image))), raw)
    assert issues == []
    assert record is not None and record.image_path == "imgs/x.png"


def test_no_image_at_all_is_an_error_and_good_files_still_read(raw: Path) -> None:
    bad = write_json(raw / "lost.json", labelme_doc([], image_path="lost.jpg"))
    good = write_json(raw / "img.json", labelme_doc([]))
    record, issues = read(bad, raw)
    assert record is None
    assert checks(issues) == [("lost.json", None, "image_missing", "error")]
    assert issues[0].message == (
        "lost.json: imagePath must name an image file inside the raw dir, got 'lost.jpg' "
        "(no such image), and there is no embedded imageData nor an image named 'lost' "
        "beside the JSON"
    )
    assert find_annotations(raw) == [good.parent / "img.json", bad]
    good_record, good_issues = read(good, raw)
    assert good_issues == [] and good_record is not None


def test_image_path_outside_raw_dir_is_never_read(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(tmp_path / "secret.png")
    write_image(raw / "a.png")  # a same-stem image is no excuse to ignore the escape
    record, issues = read(write_json(raw / "a.json", labelme_doc([], "../secret.png")), raw)
    assert record is None
    assert checks(issues) == [("a.json", None, "image_outside_raw", "error")]
    assert issues[0].message == (
        "a.json: imagePath must name an image file inside the raw dir, got '../secret.png' "
        "(outside it, never read) and there is no embedded imageData"
    )
    data = image_bytes()
    doc = labelme_doc([], "../secret.png", imageData=b64(data))
    record, issues = read(write_json(raw / "b.json", doc), raw)
    assert record is not None and (record.image_path, record.image_data) == (None, data)
    assert checks(issues) == [("b.json", None, "image_outside_raw", "warning")]


def test_symlinks_inside_raw_dir_are_followed(tmp_path: Path) -> None:
    """Links the user placed (e.g. DVC's symlink cache) work; `..` still cannot climb out."""
    raw = tmp_path / "raw"
    write_image(tmp_path / "cache" / "ab12")
    raw.mkdir()
    (raw / "link.png").symlink_to(tmp_path / "cache" / "ab12")
    record, issues = read(write_json(raw / "a.json", labelme_doc([], "link.png")), raw)
    assert issues == []
    assert record is not None and record.image_path == "link.png"
    (raw / "sub").mkdir()
    doc = labelme_doc([], "sub/../../cache/ab12")
    record, issues = read(write_json(raw / "b.json", doc), raw)
    assert record is None
    assert checks(issues) == [("b.json", None, "image_outside_raw", "error")]


@pytest.mark.parametrize("encoding", ["gbk", "gb18030"])
def test_gbk_file_with_chinese_labels(raw: Path, encoding: str) -> None:
    # (a lone "猫" in GBK happens to be valid UTF-8 "è": real files have more text than that)
    doc = labelme_doc([shape("苹果", "polygon", [[1, 1], [4, 1], [4, 4]])])
    record, issues = read(write_json(raw / "img.json", doc, encoding=encoding), raw)
    assert record is not None and record.shapes[0].label == "苹果"
    assert checks(issues) == [("img.json", None, "encoding", "warning")]
    assert issues[0].message == "img.json must be UTF-8, got gb18030; read it as gb18030"


def test_utf8_bom_unicode_labels_and_spaces(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "ferme été" / "vache n°1.png")
    doc = labelme_doc(
        [shape("vache été 🐄", "polygon", [[1, 1], [4, 1], [4, 4]])], image_path="vache n°1.png"
    )
    path = write_json(raw / "ferme été" / "vache n°1.json", doc, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    record, issues = read(path, raw)
    assert issues == []
    assert record is not None
    assert (record.id, record.image_path, record.shapes[0].label) == (
        "ferme été/vache n°1",
        "ferme été/vache n°1.png",
        "vache été 🐄",
    )


def test_utf16_file_from_windows_notepad(raw: Path) -> None:
    doc = labelme_doc([shape("été", "polygon", [[1, 1], [4, 1], [4, 4]])])
    record, issues = read(write_json(raw / "img.json", doc, encoding="utf-16"), raw)
    assert record is not None and record.shapes[0].label == "été"
    assert [i.message for i in issues] == ["img.json must be UTF-8, got utf-16; read it as utf-16"]


def test_undecodable_bytes_are_an_encoding_error(raw: Path) -> None:
    path = raw / "img.json"
    path.write_bytes(b'{"shapes": [], "imagePath": "\xff\xff"}')
    record, issues = read(path, raw)
    assert record is None
    assert checks(issues) == [("img.json", None, "encoding", "error")]


def test_corrupt_json_is_an_error_and_good_files_still_read(raw: Path) -> None:
    bad = write_text(raw / "bad.json", '{"shapes": [ {"label": "a", ')
    record, issues = read(bad, raw)
    assert record is None
    assert checks(issues) == [("bad.json", None, "invalid_json", "error")]
    assert issues[0].message.startswith("bad.json must be valid JSON, got Expecting")
    good, good_issues = read(write_json(raw / "img.json", labelme_doc([])), raw)
    assert good is not None and good_issues == []


@pytest.mark.parametrize(
    ("doc", "got"),
    [
        ([1, 2], "a JSON list"),
        (
            {"images": [], "annotations": [], "categories": []},
            "a COCO annotations file (keys images/annotations/categories)",
        ),
        (
            {"version": "5.0.1", "imagePath": "img.png"},
            "an object without 'shapes' (keys: imagePath, version)",
        ),
        ({"shapes": {"label": "a"}}, "'shapes' of type dict"),
    ],
)
def test_json_that_is_not_labelme(raw: Path, doc: object, got: str) -> None:
    record, issues = read(write_json(raw / "other.json", doc), raw)
    assert record is None
    assert checks(issues) == [("other.json", None, "not_labelme", "error")]
    assert issues[0].message == (
        "other.json must be a Labelme annotation (an object with a 'shapes' list), got " + got
    )


def test_declared_size_and_version(raw: Path) -> None:
    doc = labelme_doc([], version="7.0.0", imageWidth=640, imageHeight=480)
    record, _ = read(write_json(raw / "img.json", doc), raw)
    assert record is not None and (record.width, record.height, record.version) == (
        640,
        480,
        "7.0.0",
    )
    doc = labelme_doc([], version="3.16.2")
    del doc["imageWidth"], doc["imageHeight"]
    record, issues = read(write_json(raw / "img.json", doc), raw)
    assert issues == []
    assert record is not None and (record.width, record.height) == (None, None)
    record, issues = read(write_json(raw / "img.json", labelme_doc([], imageWidth="8")), raw)
    assert record is not None and (record.width, record.height) == (None, None)
    assert checks(issues) == [("img.json", None, "bad_size", "warning")]


def test_nan_and_infinity_coordinates_pass_through(raw: Path) -> None:
    path = raw / "img.json"
    path.write_text(
        '{"shapes": [{"label": "a", "shape_type": "polygon",'
        ' "points": [[NaN, 1], [Infinity, 2], [3, -Infinity]]}], "imagePath": "img.png"}'
    )
    record, issues = read(path, raw)
    assert issues == []
    assert record is not None
    (p0, p1, p2) = record.shapes[0].points
    assert math.isnan(p0[0]) and p0[1] == 1.0
    assert p1 == (math.inf, 2.0) and p2 == (3.0, -math.inf)


def test_unknown_shape_type_passes_through(raw: Path) -> None:
    doc = labelme_doc([shape("dots", "points", [[1, 1], [2, 2], [3, 3], [4, 4]])])
    record, issues = read(write_json(raw / "img.json", doc), raw)
    assert issues == []
    assert record is not None
    assert record.shapes == (
        Shape("dots", "points", ((1.0, 1.0), (2.0, 2.0), (3.0, 3.0), (4.0, 4.0)), 0),
    )


def test_bad_shapes_are_all_reported_by_index(raw: Path) -> None:
    pts = [[1, 1], [4, 1], [4, 4]]
    doc = labelme_doc(
        [
            shape("ok", "polygon", pts),
            {"points": pts, "shape_type": "polygon"},
            shape("a", "polygon", [[1, 1], [2, "x"], [3, 3]]),
            shape("b", "polygon", "1,2,3"),
            shape("c", "mask", [[0, 0], [2, 1]], mask="not base64!"),
            shape("d", "mask", [[0, 0], [2, 1]], mask=b64(b"GIF89a....")),
            shape("e", "mask", [[0, 0], [2, 1]]),
            "not a shape",
            shape("f", 7, pts),
        ]
    )
    record, issues = read(write_json(raw / "img.json", doc), raw)
    assert record is None
    messages = [(i.shape, i.check, i.message) for i in issues]
    assert messages[3][2].startswith(
        "img.json shape 4: mask must be valid base64, got an undecodable string ("
    )
    messages[3] = (4, "bad_mask", "(python's wording)")
    assert messages == [
        (1, "bad_label", "img.json shape 1: label must be a string, got None"),
        (
            2,
            "bad_points",
            "img.json shape 2: points must be a list of [x, y] number pairs, "
            "got [2, 'x'] at point 1",
        ),
        (3, "bad_points", "img.json shape 3: points must be a list of [x, y] pairs, got '1,2,3'"),
        (4, "bad_mask", "(python's wording)"),
        (
            5,
            "bad_mask",
            "img.json shape 5: mask must be a PNG image, got bytes starting b'GIF89a..'",
        ),
        (6, "bad_mask", "img.json shape 6: mask must be a base64 PNG string, got None"),
        (7, "bad_shape", "img.json shape 7 must be an object, got str"),
        (8, "bad_shape", "img.json shape 8: shape_type must be a string, got 7"),
    ]
    assert {i.severity for i in issues} == {"error"}


def test_bad_image_data_falls_back_to_image_path(raw: Path) -> None:
    doc = labelme_doc([], imageData=12)
    record, issues = read(write_json(raw / "img.json", doc), raw)
    assert record is not None and (record.image_path, record.image_data) == ("img.png", None)
    assert checks(issues) == [("img.json", None, "bad_image_data", "warning")]


def test_unreadable_file_is_an_error(raw: Path) -> None:
    (raw / "dir.json").mkdir()
    record, issues = read_labelme(raw / "dir.json", raw)
    assert record is None
    assert checks(issues) == [("dir.json", None, "read_error", "error")]


# --------------------------------------------------------------------------- real data


def _read_all(paths: list[Path], raw: Path) -> list[tuple[Record, list[Issue]]]:
    out = []
    for path in paths:
        record, issues = read(path, raw)
        assert record is not None, (path, issues)
        out.append((record, issues))
    return out


def test_real_labelme_examples_data_annotated(realdata: Path) -> None:
    raw = realdata / "labelme-examples"
    paths = sorted(raw.glob("examples/*/data_annotated/*.json"))
    assert len(paths) == 16
    for record, issues in _read_all(paths, raw):
        assert issues == []
        assert record.version == "4.0.0"
        assert record.image_path == record.id + ".jpg"
        assert (raw / record.image_path).is_file()
        assert record.image_data is None
        doc = json.loads((raw / record.annotation).read_text())
        assert (record.width, record.height) == (doc["imageWidth"], doc["imageHeight"])
        assert [(s.label, s.kind, s.group_id) for s in record.shapes] == [
            (s["label"], s["shape_type"], s["group_id"]) for s in doc["shapes"]
        ]
    record, _ = read(raw / "examples/instance_segmentation/data_annotated/2011_000006.json", raw)
    assert record is not None
    assert Counter(s.label for s in record.shapes) == {
        "person": 4,
        "sofa": 4,
        "chair": 1,
        "__ignore__": 1,
    }
    assert [s.group_id for s in record.shapes] == [None] * 6 + [0] * 4  # one sofa, 4 parts


def test_real_primitives_every_shape_type(realdata: Path) -> None:
    raw = realdata / "labelme-examples"
    record, issues = read(raw / "examples/primitives/primitives.json", raw)
    assert issues == []
    assert record is not None
    assert (record.version, record.width, record.height, record.image_path) == (
        "5.7.0",
        560,
        450,
        "examples/primitives/primitives.jpg",
    )
    assert [s.kind for s in record.shapes] == [
        "rectangle",
        "circle",
        "rectangle",
        "polygon",
        "line",
        "point",
        "linestrip",
        "mask",
    ]
    mask = record.shapes[7]
    assert (mask.label, mask.index) == ("octagon", 7)
    assert mask.points == ((417.39759036144574, 305.0), (516.3975903614457, 404.0))
    assert mask.mask_png is not None and mask.mask_png.startswith(b"\x89PNG\r\n\x1a\n")


def test_real_tutorial_wrong_image_path_uses_embedded_data(realdata: Path) -> None:
    raw = realdata / "labelme-examples"
    record, issues = read(raw / "examples/tutorial/apc2016_obj3.json", raw)
    assert record is not None
    assert record.image_path is None
    assert record.image_data is not None and record.image_data[:2] == b"\xff\xd8"  # a JPEG
    assert checks(issues) == [
        ("examples/tutorial/apc2016_obj3.json", None, "image_path_wrong", "warning")
    ]
    assert "(the annotation itself); using the embedded imageData" in issues[0].message
    assert (record.width, record.height, len(record.shapes)) == (1210, 907, 4)


def test_real_coco_file_is_not_labelme(realdata: Path) -> None:
    raw = realdata / "labelme-examples"
    path = raw / "examples/instance_segmentation/data_dataset_coco/annotations.json"
    assert path in find_annotations(raw)
    record, issues = read(path, raw)
    assert record is None
    assert [i.check for i in issues] == ["not_labelme"]
    assert "got a COCO annotations file" in issues[0].message


def test_real_nuts_labelme_3_16_2(realdata: Path) -> None:
    raw = realdata / "tony607-nuts-labelme"
    paths = find_annotations(raw)
    assert len(paths) == 18
    labels: Counter[str] = Counter()
    for record, issues in _read_all(paths, raw):
        assert issues == []
        assert record.version == "3.16.2"
        assert record.image_data is not None and record.image_data[:2] == b"\xff\xd8"
        assert record.image_path == record.id + ".jpg"
        assert (record.width, record.height) == (800, 600)
        assert {s.kind for s in record.shapes} == {"polygon"}
        assert all(s.group_id is None for s in record.shapes)
        labels.update(s.label for s in record.shapes)
    assert sum(labels.values()) == 165
    assert labels == {"date": 71, "hazelnut": 53, "fig": 41}
