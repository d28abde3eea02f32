"""LabelImg YOLO reader, and which files find_annotations picks up."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.files import (
    huge_png_header,
    labelme_doc,
    voc_xml,
    write_image,
    write_json,
    write_text,
)

from pipeline.convert.formats import (
    find_annotation_paths,
    find_annotations,
    is_inside,
    read_annotation,
    rel_posix,
    sample_id,
)
from pipeline.convert.formats.yolo import read_yolo
from pipeline.core.records import Issue, Record, Shape, is_error


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    write_image(raw / "img.jpg", width=100, height=50)
    write_text(raw / "classes.txt", "cat\ndog\n")
    return raw


def read(path: Path, raw: Path) -> tuple[Record | None, list[Issue]]:
    record, issues = read_annotation(path, raw)
    assert (record is None) == is_error(issues)
    return record, issues


def checks(issues: list[Issue]) -> list[tuple[str, int | None, str, str]]:
    return [(i.file, i.shape, i.check, i.severity) for i in issues]


def test_boxes_become_pixel_rectangles(raw: Path) -> None:
    # cat: x0 = (0.5 - 0.2/2) * 100 = 40, x1 = 60; y0 = (0.5 - 0.4/2) * 50 = 15, y1 = 35
    # -> corners (round(x0), round(y0)), (round(x1) - 1, round(y1) - 1)
    text = "0 0.5 0.5 0.2 0.4\n1 0.123 0.9 0.1 0.2\n"
    record, issues = read(write_text(raw / "img.txt", text), raw)
    assert issues == []
    assert record == Record(
        id="img",
        annotation="img.txt",
        format="yolo",
        image_path="img.jpg",
        image_data=None,
        width=100,
        height=50,
        shapes=(
            Shape("cat", "rectangle", ((40.0, 15.0), (59.0, 34.0)), 0),
            # x: (0.073*100, 0.173*100) = (7.3, 17.3) -> 7, 17-1; y: (40, 50) -> 40, 49
            Shape("dog", "rectangle", ((7.0, 40.0), (16.0, 49.0)), 1),
        ),
    )


def test_whole_image_box_covers_every_pixel(raw: Path) -> None:
    record, _ = read(write_text(raw / "img.txt", "1 0.5 0.5 1.0 1.0\n"), raw)
    assert record is not None
    assert record.shapes == (Shape("dog", "rectangle", ((0.0, 0.0), (99.0, 49.0)), 0),)


def test_blank_lines_crlf_and_index_by_line(raw: Path) -> None:
    write_text(raw / "classes.txt", "cat\r\ndog\r\n")
    text = "\r\n0 0.5 0.5 0.2 0.4\r\n\r\n1 0.5 0.5 0.2 0.4\r\n"
    record, issues = read(write_text(raw / "img.txt", text), raw)
    assert issues == []
    assert record is not None
    assert [(s.label, s.index) for s in record.shapes] == [("cat", 1), ("dog", 3)]


def test_empty_label_file_has_no_shapes(raw: Path) -> None:
    record, issues = read(write_text(raw / "img.txt", ""), raw)
    assert issues == []
    assert record is not None and record.shapes == ()


def test_bad_lines_are_errors_and_good_files_still_read(raw: Path) -> None:
    text = "\n".join(
        [
            "0 0.5 0.5 0.2 0.4",
            "0 0.5 0.5 0.2",
            "cat 0.5 0.5 0.2 0.4",
            "0 0.5 x 0.2 0.4",
            "2 0.5 0.5 0.2 0.4",
            "-1 0.5 0.5 0.2 0.4",
            "0 nan 0.5 0.2 0.4",
            "1 0.5 0.5 0 0.4",
            "1 0.5 0.5 0.001 0.4",
        ]
    )
    bad = write_text(raw / "img.txt", text)
    record, issues = read(bad, raw)
    assert record is None
    suffix = " (classes from classes.txt)"
    assert [(i.shape, i.check, i.message.removesuffix(suffix)) for i in issues] == [
        (
            1,
            "bad_line",
            "img.txt line 2: must be 'class cx cy w h' (a box) or 'class x1 y1 x2 y2 x3 y3 ...' "
            "(a polygon of 3 or more points), got 3 numbers in '0 0.5 0.5 0.2'",
        ),
        (2, "bad_line", "img.txt line 3: class must be an integer index, got 'cat'"),
        (3, "bad_line", "img.txt line 4: coordinates must be numbers, got '0.5 x 0.2 0.4'"),
        (4, "bad_class", "img.txt line 5: class index must be in 0..1, got 2"),
        (5, "bad_class", "img.txt line 6: class index must be in 0..1, got -1"),
        (6, "bad_line", "img.txt line 7: coordinates must be finite, got 'nan 0.5 0.2 0.4'"),
        (
            7,
            "zero_box",
            "img.txt line 8: box must cover at least one pixel, got w=0 h=0.4 "
            "on a 100x50 image (dog)",
        ),
        (
            8,
            "zero_box",
            "img.txt line 9: box must cover at least one pixel, got w=0.001 "
            "h=0.4 on a 100x50 image (dog)",
        ),
    ]
    assert all(i.message.endswith(suffix) and i.severity == "error" for i in issues)
    write_image(raw / "good.png", width=10, height=10)
    good = write_text(raw / "good.txt", "1 0.5 0.5 0.2 0.2\n")
    record, issues = read(good, raw)
    assert issues == [] and record is not None
    assert record.shapes == (Shape("dog", "rectangle", ((4.0, 4.0), (5.0, 5.0)), 0),)


def test_box_past_the_border_passes_through(raw: Path) -> None:
    record, issues = read(write_text(raw / "img.txt", "0 0.95 0.5 0.3 1.2\n"), raw)
    assert issues == []
    assert record is not None
    assert record.shapes[0].points == ((80.0, -5.0), (109.0, 54.0))


def test_classes_txt_in_an_ancestor_dir(raw: Path) -> None:
    write_image(raw / "day 1" / "cam" / "f1.png", width=20, height=10)
    path = write_text(raw / "day 1" / "cam" / "f1.txt", "1 0.5 0.5 0.5 0.4\n")
    record, issues = read(path, raw)
    assert issues == []
    assert record is not None
    assert (record.id, record.image_path, record.width, record.height) == (
        "day 1/cam/f1",
        "day 1/cam/f1.png",
        20,
        10,
    )
    assert record.shapes == (Shape("dog", "rectangle", ((5.0, 3.0), (14.0, 6.0)), 0),)


def test_labels_dir_beside_images_dir(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_text(raw / "ds" / "classes.txt", "cat\n")
    write_image(raw / "ds" / "images" / "a.jpg", width=10, height=10)
    record, issues = read(write_text(raw / "ds" / "labels" / "a.txt", "0 .5 .5 .2 .2\n"), raw)
    assert issues == []
    assert record is not None and record.image_path == "ds/images/a.jpg"


def test_no_classes_txt_is_an_error_when_read_directly(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "img.jpg")
    path = write_text(raw / "img.txt", "0 0.5 0.5 0.2 0.4\n")
    assert find_annotations(raw) == []  # not an annotation without classes.txt
    record, issues = read_yolo(path, raw)
    assert record is None
    assert checks(issues) == [("img.txt", None, "no_classes", "error")]
    write_text(raw / "classes.txt", "\n\n")
    record, issues = read_yolo(path, raw)
    assert record is None
    assert [i.message for i in issues] == [
        "img.txt: classes.txt must list at least one class name, got none"
    ]


def test_classes_txt_outside_raw_dir_does_not_count(tmp_path: Path) -> None:
    write_text(tmp_path / "classes.txt", "cat\n")
    raw = tmp_path / "raw"
    write_image(raw / "img.jpg")
    path = write_text(raw / "img.txt", "0 0.5 0.5 0.2 0.4\n")
    assert find_annotations(raw) == []
    assert [i.check for i in read_yolo(path, raw)[1]] == ["no_classes"]


def test_gbk_classes_txt(raw: Path) -> None:
    write_text(raw / "classes.txt", "苹果\n香蕉\n", encoding="gbk")
    record, issues = read(write_text(raw / "img.txt", "1 0.5 0.5 0.2 0.4\n"), raw)
    assert record is not None and record.shapes[0].label == "香蕉"
    assert checks(issues) == [("classes.txt", None, "encoding", "warning")]


def test_missing_and_corrupt_images_are_errors(raw: Path) -> None:
    record, issues = read(write_text(raw / "nope.txt", "0 0.5 0.5 0.2 0.4\n"), raw)
    assert record is None
    assert checks(issues) == [("nope.txt", None, "image_missing", "error")]
    write_text(raw / "junk.png", "not an image")
    record, issues = read(write_text(raw / "junk.txt", "0 0.5 0.5 0.2 0.4\n"), raw)
    assert record is None
    assert checks(issues) == [("junk.txt", None, "image_corrupt", "error")]
    assert issues[0].message.startswith("junk.txt: image junk.png must be a readable image, got")


def test_decompression_bomb_is_an_error_not_a_hang(raw: Path) -> None:
    (raw / "big.png").write_bytes(huge_png_header(30000, 30000))  # 900 Mpx > 2 x 89 Mpx
    record, issues = read(write_text(raw / "big.txt", "0 0.5 0.5 0.2 0.4\n"), raw)
    assert record is None
    assert checks(issues) == [("big.txt", None, "image_too_large", "error")]


@pytest.mark.parametrize(
    ("orientation", "size"), [(1, (100, 50)), (3, (100, 50)), (6, (50, 100)), (8, (50, 100))]
)
def test_exif_rotation_swapping_axes_uses_rotated_size(
    raw: Path, orientation: int, size: tuple[int, int]
) -> None:
    write_image(raw / "img.jpg", width=100, height=50, orientation=orientation)
    record, issues = read(write_text(raw / "img.txt", "0 0.5 0.5 1.0 1.0\n"), raw)
    assert issues == []
    assert record is not None and (record.width, record.height) == size
    assert record.shapes[0].points == ((0.0, 0.0), (size[0] - 1.0, size[1] - 1.0))


# --------------------------------------------------------------------------- find_annotations


def test_find_annotations_picks_the_right_files(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    files = {
        "b/x.json": '{"shapes": []}',
        "b/colours.json": '{"colors": {"cat": [1, 2, 3]}}',  # a tool's config: skipped
        "a/y.xml": "<annotation/>",
        "a/notes.txt": "free text without classes.txt",
        "yolo/classes.txt": "cat\n",
        "yolo/f 1.txt": "",
        "yolo/f 1.png": "",
        "yolo/README.txt": "not a label: no image of its name",
        "yolo/sub/f2.TXT": "",
        "yolo/sub/f2.jpg": "",
        "yolo/sub/.hidden.txt": "",
        ".git/config.json": "{}",
        "b/.cache/z.json": "{}",
        "b/.x.json": "{}",
        "b/readme.md": "",
        "b/photo.jpg": "",
        "C.JSON": '{"version": "5.0.1", "imagePath": "c.jpg"}',  # broken Labelme: read
        "__MACOSX/yolo/._f 1.txt": "",
    }
    for name, text in files.items():
        write_text(raw / name, text)
    found = find_annotations(raw)
    assert [p.relative_to(raw).as_posix() for p in found] == [
        "C.JSON",
        "a/y.xml",
        "b/x.json",
        "yolo/f 1.txt",
        "yolo/sub/f2.TXT",
    ]
    assert all(p.is_file() for p in found)
    assert find_annotation_paths(raw) == [p.relative_to(raw).as_posix() for p in found]
    assert find_annotations(Path(f"{raw}/")) == found  # however the raw dir is spelled
    assert find_annotation_paths(raw / "yolo" / ".." / "yolo") == ["f 1.txt", "sub/f2.TXT"]


@pytest.mark.parametrize(
    ("path", "inside", "rel", "sid"),
    [
        ("raw/a/b.json", True, "a/b.json", "a/b"),
        ("raw/a/b.c.json", True, "a/b.c.json", "a/b.c"),
        ("raw/a/../b.json", True, "b.json", "b"),
        ("raw/.json", True, ".json", ".json"),  # no suffix, as pathlib sees it
        ("raw/a.", True, "a.", "a."),
        ("raw2/x.json", False, "../raw2/x.json", "../raw2/x"),  # a prefix is not a parent
        ("raw/../x.json", False, "../x.json", "../x"),
    ],
)
def test_path_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str,
                      inside: bool, rel: str, sid: str) -> None:
    monkeypatch.chdir(tmp_path)
    for raw in ("raw", "raw/", tmp_path / "raw", "./raw"):
        assert is_inside(Path(path), Path(raw)) is inside
        assert rel_posix(Path(path), Path(raw)) == rel
        assert sample_id(Path(path), Path(raw)) == sid
    assert is_inside(tmp_path / "raw", Path("raw"))  # the raw dir itself


def test_read_annotation_dispatches_by_suffix(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "img.jpg", width=10, height=10)
    write_text(raw / "classes.txt", "cat\n")
    formats = []
    for path in (
        write_json(raw / "img.json", labelme_doc([], image_path="img.jpg")),
        write_text(raw / "img.xml", voc_xml("img.jpg")),
        write_text(raw / "img.txt", "0 .5 .5 .5 .5\n"),
    ):
        record, issues = read(path, raw)
        assert issues == [] and record is not None
        formats.append((record.id, record.format))
    assert formats == [("img", "labelme"), ("img", "voc"), ("img", "yolo")]
    record, issues = read_annotation(write_text(raw / "img.csv", ""), raw)
    assert record is None
    assert checks(issues) == [("img.csv", None, "unknown_format", "error")]
