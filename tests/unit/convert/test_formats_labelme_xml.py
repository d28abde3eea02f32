"""MIT LabelMe XML / CVAT "LabelMe 3.0": polygons, boxes, deleted objects, <segm> masks,
the image found as for VOC, and messages that name the format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.files import labelme_xml, labelme_xml_polygon, png_bytes, write_image, write_text
from PIL import Image, ImageDraw
from test_convert_stage import convert, issues, manifest, write_params

from pipeline.convert.formats import find_annotations, read_annotation
from pipeline.convert.raster import rasterize
from pipeline.convert.validate import check_record
from pipeline.params import ConvertParams, Labels
from pipeline.storage.masks import read_mask

LABELS = Labels(classes=("background", "window", "car"))
TRIANGLE = [(1, 1), (6, 1), (3.5, 5)]


def test_polygons_and_boxes_with_their_exact_mask(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "img1.png", width=8, height=6)
    xml = labelme_xml("img1.png", [
        labelme_xml_polygon("window", TRIANGLE, index=0),
        labelme_xml_polygon("car", [(5, 3), (7, 3), (7, 5), (5, 5)], index=1, box=True),
        labelme_xml_polygon("car", [(0, 0), (7, 0), (7, 5)], index=2, deleted=1),
    ])
    path = write_text(raw / "img1.xml", xml)
    record, found = read_annotation(path, raw)
    assert found == [] and record is not None
    assert (record.format, record.image_path, record.width, record.height) == (
        "labelme_xml", "img1.png", 8, 6)
    assert [(s.index, s.kind, s.points) for s in record.shapes] == [
        (0, "polygon", ((1.0, 1.0), (6.0, 1.0), (3.5, 5.0))),
        (1, "rectangle", ((5.0, 3.0), (7.0, 5.0))),  # <type>bounding_box</type>
    ]  # object 2 is <deleted>1</deleted>: skipped
    pairs, found = check_record(record, 8, 6, LABELS, ConvertParams())
    assert found == []
    expected = Image.new("L", (8, 6), 0)
    ImageDraw.Draw(expected).polygon(TRIANGLE, outline=1, fill=1)
    expected.paste(2, (5, 3, 8, 6))
    assert np.array_equal(rasterize(pairs, 8, 6), np.array(expected))


def test_segm_masks_are_undrawable_never_background(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "img1.png", width=8, height=6)
    segm = ("<name>car</name><deleted>0</deleted><id>1</id><segm><username>u</username><box>"
            "<xmin>2</xmin><ymin>1</ymin><xmax>5</xmax><ymax>4</ymax></box>"
            "<mask>img1_mask_1.png</mask></segm>")
    record, found = read_annotation(write_text(raw / "img1.xml", labelme_xml("img1.png",
                                                                              [segm])), raw)
    assert found == [] and record is not None
    _, found = check_record(record, 8, 6, LABELS, ConvertParams())
    assert [(i.check, i.severity) for i in found] == [("unsupported_shape", "error")]
    assert "got 'segm'; the file is left out" in found[0].message
    pairs, found = check_record(record, 8, 6, LABELS, ConvertParams(undrawable="ignore"))
    mask = rasterize(pairs, 8, 6)
    assert (mask == 255).sum() == 4 * 4 and mask[1:5, 2:6].min() == 255


def test_an_object_with_neither_box_nor_polygon_names_both_formats(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "img1.png", width=8, height=6)
    xml = labelme_xml("img1.png", ["<name>car</name><deleted>0</deleted><id>0</id>"])
    record, found = read_annotation(write_text(raw / "img1.xml", xml), raw)
    assert record is None
    assert [i.message for i in found] == [
        "img1.xml object 0 (car): must have a <bndbox> (Pascal VOC) or a <polygon> (LabelMe "
        "XML), got neither"]


def test_bad_points_are_an_error_naming_the_format(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "img1.png", width=8, height=6)
    xml = labelme_xml("img1.png", [labelme_xml_polygon("car", [(1, 1), ("a", 2), (3, 3)])])
    record, found = read_annotation(write_text(raw / "img1.xml", xml), raw)
    assert record is None
    assert [i.message for i in found] == [
        "img1.xml object 0 (car, LabelMe XML): <pt> 1 must have numbers <x> and <y>, got "
        "x='a' y='2'"]


def test_cvat_for_images_xml_says_what_to_export(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    path = write_text(raw / "annotations.xml", "<?xml version='1.0'?><annotations><version>1.1"
                                              "</version><image id='0' name='a.jpg'/>"
                                              "</annotations>")
    assert find_annotations(raw) == [path]  # CVAT data: reported, never skipped
    record, found = read_annotation(path, raw)
    assert record is None
    assert found[0].message == (
        "annotations.xml must be a Pascal VOC or LabelMe XML annotation (root <annotation>): a "
        "CVAT for images XML (root <annotations>) is not read: export the task as 'LabelMe "
        "3.0' or 'PASCAL VOC' from CVAT")


@pytest.mark.parametrize(("xml_dir", "image"), [
    ("Annotations/users/ann/street", "Images/users/ann/street/img1.jpg"),  # MIT collection
    ("subset1", "subset1/subset1/img1.jpg"),  # Datumaro: <xml dir>/<folder>/<filename>
    ("ann", "images/img1.jpg"),
])
def test_the_image_is_found_in_the_labelme_layouts(tmp_path: Path, xml_dir: str,
                                                   image: str) -> None:
    raw = tmp_path / "raw"
    write_image(raw / image, width=8, height=6)
    folder = xml_dir.rpartition("/")[2]
    xml = labelme_xml("img1.jpg", [labelme_xml_polygon("car", TRIANGLE)], folder=folder)
    record, found = read_annotation(write_text(raw / xml_dir / "img1.xml", xml), raw)
    assert found == [] and record is not None
    assert record.image_path == image


def test_a_bad_labelme_xml_is_rejected_and_the_good_ones_convert(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    (raw / "good").mkdir(parents=True)
    (raw / "good/a.png").write_bytes(png_bytes(8, 6))
    write_text(raw / "good/a.xml", labelme_xml("a.png", [labelme_xml_polygon("car", TRIANGLE)]))
    (raw / "bad").mkdir()
    (raw / "bad/b.png").write_bytes(png_bytes(8, 6))
    write_text(raw / "bad/b.xml", labelme_xml("b.png", [labelme_xml_polygon("lorry", TRIANGLE)]))
    write_text(raw / "pom.xml", "<project><modelVersion>4.0.0</modelVersion></project>")
    write_params(tmp_path, classes=list(LABELS.classes))
    summary = convert(tmp_path)
    assert (summary.seen, summary.converted, summary.rejected) == (2, 1, 1)
    assert [(r["id"], r["format"]) for r in manifest(tmp_path)] == [("good/a", "labelme_xml")]
    found = issues(tmp_path)
    assert ("bad/b.xml", 0, "unknown_label", "error") in found
    assert ("pom.xml", None, "skipped_file", "warning") in found  # not an annotation at all
    assert (read_mask(tmp_path / "prepared/masks/good/a.png") == 2).sum() > 5
