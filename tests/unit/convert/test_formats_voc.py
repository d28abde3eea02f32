"""LabelImg Pascal VOC reader (and merging a VOC box file with a Labelme file of one image)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.files import labelme_doc, shape, voc_xml, write_image, write_json, write_text

from pipeline.convert.formats import find_annotations, merge_records, read_annotation
from pipeline.core.records import Issue, Record, Shape, is_error


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    write_image(raw / "img.jpg")
    return raw


def read(path: Path, raw: Path) -> tuple[Record | None, list[Issue]]:
    record, issues = read_annotation(path, raw)
    assert (record is None) == is_error(issues)
    return record, issues


def checks(issues: list[Issue]) -> list[tuple[str, int | None, str, str]]:
    return [(i.file, i.shape, i.check, i.severity) for i in issues]


def test_boxes_become_zero_based_rectangles(raw: Path) -> None:
    xml = voc_xml("img.jpg", [("cat", 1, 1, 8, 6), ("dog", 3, 2, 5, 4)])
    record, issues = read(write_text(raw / "img.xml", xml), raw)
    assert issues == []
    assert record == Record(
        id="img",
        annotation="img.xml",
        format="voc",
        image_path="img.jpg",
        image_data=None,
        width=8,
        height=6,
        shapes=(
            Shape("cat", "rectangle", ((0.0, 0.0), (7.0, 5.0)), 0),
            Shape("dog", "rectangle", ((2.0, 1.0), (4.0, 3.0)), 1),
        ),
    )


def test_float_coordinates_are_truncated_like_labelimg(raw: Path) -> None:
    xml = voc_xml("img.jpg", [("cat", "2.9", "1.2", "6.99", "5.5")], size=("8.0", "6"))
    record, issues = read(write_text(raw / "img.xml", xml), raw)
    assert issues == []
    assert record is not None
    assert record.shapes[0].points == ((1.0, 0.0), (5.0, 4.0))
    assert (record.width, record.height) == (8, 6)


@pytest.mark.parametrize("size", [None, (0, 0), (8, 0), ("", "")])
def test_missing_or_zero_size_gives_none(raw: Path, size: tuple | None) -> None:
    xml = voc_xml("img.jpg", [("cat", 1, 1, 4, 4)], size=size)
    record, issues = read(write_text(raw / "img.xml", xml), raw)
    assert issues == []
    assert record is not None and (record.width, record.height) == (None, None)


def test_non_numeric_size_is_ignored_with_warning(raw: Path) -> None:
    xml = voc_xml("img.jpg", [("cat", 1, 1, 4, 4)], size=("wide", 6))
    record, issues = read(write_text(raw / "img.xml", xml), raw)
    assert record is not None and (record.width, record.height) == (None, None)
    assert checks(issues) == [("img.xml", None, "bad_size", "warning")]


def test_filename_without_extension_is_found_by_stem(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "batch 2" / "shot 7.PNG")
    xml = voc_xml("shot 7", [("cat", 1, 1, 4, 4)])
    record, issues = read(write_text(raw / "batch 2" / "shot 7.xml", xml), raw)
    assert issues == []
    assert record is not None
    assert (record.id, record.image_path) == ("batch 2/shot 7", "batch 2/shot 7.PNG")


def test_absolute_path_from_another_machine_is_ignored(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "a.jpg")
    write_image(tmp_path / "elsewhere" / "a.jpg")
    for given in (
        "/Users/someone/Desktop/a.jpg",
        str(tmp_path / "elsewhere" / "a.jpg"),
        "C:\\Users\\someone\\a.jpg",
    ):
        xml = voc_xml("a.jpg", [("cat", 1, 1, 4, 4)], path=given)
        record, issues = read(write_text(raw / "a.xml", xml), raw)
        assert issues == []
        assert record is not None and record.image_path == "a.jpg"


def test_absolute_path_inside_raw_dir_is_used(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    image = write_image(raw / "pics" / "z.jpg")
    xml = voc_xml("z.jpg", [("cat", 1, 1, 4, 4)], path=str(image))
    record, issues = read(write_text(raw / "ann" / "z.xml", xml), raw)
    assert issues == []
    assert record is not None and record.image_path == "pics/z.jpg"


def test_wrong_filename_falls_back_to_xml_stem_with_warning(raw: Path) -> None:
    xml = voc_xml("IMG_0001.jpg", [("cat", 1, 1, 4, 4)])
    record, issues = read(write_text(raw / "img.xml", xml), raw)
    assert record is not None and record.image_path == "img.jpg"
    assert checks(issues) == [("img.xml", None, "image_path_wrong", "warning")]
    assert issues[0].message == (
        "img.xml: <filename> must name the image, got 'IMG_0001.jpg' (not found); using 'img.jpg'"
    )


def test_annotations_and_images_dirs_via_folder(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "set1" / "photos" / "p1.jpg")
    write_image(raw / "set2" / "JPEGImages" / "p2.jpg")
    xml1 = voc_xml("p1.jpg", [("cat", 1, 1, 4, 4)], folder="photos")
    xml2 = voc_xml("p2.jpg", [("cat", 1, 1, 4, 4)], folder="VOC2012")
    r1, i1 = read(write_text(raw / "set1" / "annotations" / "p1.xml", xml1), raw)
    r2, i2 = read(write_text(raw / "set2" / "Annotations" / "p2.xml", xml2), raw)
    assert i1 == [] and i2 == []
    assert r1 is not None and r1.image_path == "set1/photos/p1.jpg"
    assert r2 is not None and r2.image_path == "set2/JPEGImages/p2.jpg"


def test_missing_image_is_an_error(raw: Path) -> None:
    xml = voc_xml("gone.jpg", [("cat", 1, 1, 4, 4)])
    record, issues = read(write_text(raw / "gone.xml", xml), raw)
    assert record is None
    assert checks(issues) == [("gone.xml", None, "image_missing", "error")]
    assert issues[0].message == (
        "gone.xml: the image must exist inside the raw dir, got no image named by <filename> "
        "'gone.jpg' or 'gone' in '.'"
    )


def test_zero_and_negative_boxes_are_errors_and_good_files_still_read(raw: Path) -> None:
    xml = voc_xml("img.jpg", [("ok", 1, 1, 4, 4), ("flat", 2, 3, 5, 3), ("back", 6, 1, 2, 4)])
    bad = write_text(raw / "img.xml", xml)
    record, issues = read(bad, raw)
    assert record is None
    assert [(i.shape, i.check, i.severity, i.message) for i in issues] == [
        (
            1,
            "zero_box",
            "error",
            "img.xml object 1 (flat): box must have xmax > xmin and "
            "ymax > ymin, got xmin=2 ymin=3 xmax=5 ymax=3",
        ),
        (
            2,
            "zero_box",
            "error",
            "img.xml object 2 (back): box must have xmax > xmin and "
            "ymax > ymin, got xmin=6 ymin=1 xmax=2 ymax=4",
        ),
    ]
    write_image(raw / "good.jpg")
    good = write_text(raw / "good.xml", voc_xml("good.jpg", [("ok", 1, 1, 4, 4)]))
    assert find_annotations(raw) == [good, bad]
    record, issues = read(good, raw)
    assert issues == [] and record is not None and len(record.shapes) == 1


def test_boxes_past_the_border_pass_through(raw: Path) -> None:
    xml = voc_xml("img.jpg", [("cat", -3, 0, 20, 9)])
    record, issues = read(write_text(raw / "img.xml", xml), raw)
    assert issues == []
    assert record is not None
    assert record.shapes[0].points == ((-4.0, -1.0), (19.0, 8.0))


def test_file_without_objects_has_no_shapes(raw: Path) -> None:
    record, issues = read(write_text(raw / "img.xml", voc_xml("img.jpg", [])), raw)
    assert issues == []
    assert record is not None and record.shapes == ()


def test_bad_objects_are_reported(raw: Path) -> None:
    xml = voc_xml("img.jpg", [("", 1, 1, 4, 4), ("cat", "a", 1, "nan", 4)]).replace(
        "</annotation>", "<object><name>dog</name></object></annotation>"
    )
    record, issues = read(write_text(raw / "img.xml", xml), raw)
    assert record is None
    assert [(i.shape, i.check, i.message) for i in issues] == [
        (0, "bad_label", "img.xml object 0: <name> must be a non-empty label, got None"),
        (
            1,
            "bad_box",
            "img.xml object 1: <bndbox> xmin/ymin/xmax/ymax must be numbers, "
            "got xmin='a', xmax='nan'",
        ),
        (2, "bad_box", "img.xml object 2 (dog): must have a <bndbox> (Pascal VOC) or a "
                "<polygon> (LabelMe XML), got neither"),
    ]


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>img.jpg</filename><object><name>&lol9;</name></object></annotation>
"""

EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><filename>&xxe;</filename></annotation>
"""

DTD_ONLY = """<?xml version="1.0"?>
<!DOCTYPE annotation SYSTEM "voc.dtd">
<annotation><filename>img.jpg</filename></annotation>
"""


@pytest.mark.parametrize("text", [BOMB, EXTERNAL, DTD_ONLY], ids=["bomb", "external", "dtd"])
def test_entity_bombs_and_dtds_are_refused_quickly(raw: Path, text: str) -> None:
    start = time.perf_counter()
    record, issues = read(write_text(raw / "evil.xml", text), raw)
    assert time.perf_counter() - start < 1.0  # refused before any expansion
    assert record is None
    assert checks(issues) == [("evil.xml", None, "unsafe_xml", "error")]
    assert issues[0].message.startswith("evil.xml must be plain XML without DTD or entities")


def test_corrupt_and_non_voc_xml(raw: Path) -> None:
    record, issues = read(write_text(raw / "cut.xml", "<annotation><object>"), raw)
    assert record is None
    assert checks(issues) == [("cut.xml", None, "invalid_xml", "error")]
    assert issues[0].message.startswith("cut.xml must be valid XML, got no element found")
    record, issues = read(write_text(raw / "svg.xml", "<svg><rect/></svg>"), raw)
    assert record is None
    assert [i.message for i in issues] == [
        "svg.xml must be a Pascal VOC or LabelMe XML annotation (root <annotation>): got root "
        "<svg>"
    ]


# --------------------------------------------------------------------------- merge


def test_voc_and_labelme_of_one_image_merge_boxes_first(raw: Path) -> None:
    labelme = write_json(
        raw / "img.json",
        labelme_doc([shape("cat", "polygon", [[1, 1], [5, 1], [3, 4]])], image_path="img.jpg"),
    )
    voc = write_text(raw / "img.xml", voc_xml("img.jpg", [("box", 2, 2, 7, 6)]))
    paths = find_annotations(raw)
    assert paths == [labelme, voc]
    records = [read(p, raw)[0] for p in paths]
    assert all(r is not None for r in records)
    merged = merge_records([r for r in records if r is not None])
    assert merged == Record(
        id="img",
        annotation="img.json;img.xml",
        format="voc+labelme",
        image_path="img.jpg",
        image_data=None,
        width=8,
        height=6,
        shapes=(
            Shape("box", "rectangle", ((1.0, 1.0), (6.0, 5.0)), 0, source="img.xml"),
            Shape("cat", "polygon", ((1.0, 1.0), (5.0, 1.0), (3.0, 4.0)), 0, source="img.json"),
        ),
        version="5.4.1",
    )


def test_merge_of_one_record_is_itself_and_bad_calls_raise(raw: Path) -> None:
    record, _ = read(write_text(raw / "img.xml", voc_xml("img.jpg", [])), raw)
    assert record is not None
    assert merge_records([record]) is record
    with pytest.raises(ValueError, match="at least one record"):
        merge_records([])
    other = Record("other", "other.xml", "voc", "img.jpg", None, None, None, ())
    with pytest.raises(ValueError, match="one sample id"):
        merge_records([record, other])


# --------------------------------------------------------------------------- real data


def test_real_raccoon_voc(realdata: Path) -> None:
    raw = realdata / "raccoon-voc"
    paths = find_annotations(raw)
    assert len(paths) == 200
    n_boxes = 0
    for path in paths:
        record, issues = read(path, raw)
        assert issues == [], path
        assert record is not None
        assert record.image_path == f"images/{path.stem}.jpg"  # not the /Users/... <path>
        assert (raw / record.image_path).is_file()
        assert record.width is not None and record.height is not None
        assert {s.label for s in record.shapes} == {"raccoon"}
        n_boxes += len(record.shapes)
    assert n_boxes == 217
    record, _ = read(raw / "annotations" / "raccoon-1.xml", raw)
    assert record is not None
    assert (record.id, record.width, record.height) == ("annotations/raccoon-1", 650, 417)
    assert record.shapes == (Shape("raccoon", "rectangle", ((80.0, 87.0), (521.0, 407.0)), 0),)
