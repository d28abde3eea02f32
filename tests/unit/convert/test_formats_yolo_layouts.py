"""YOLO as today's tools write it: the Ultralytics layout, class names from obj.names and
data.yaml, YOLO-seg polygons, .txt files that are not labels, labels without a class list or
without an image; the real coco8 and pylabel-squirrels sets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.files import write_image, write_text
from PIL import Image, ImageDraw
from test_convert_stage import convert, issues, manifest, write_params

from pipeline.convert.formats import find_annotation_paths, read_annotation, skipped_files
from pipeline.convert.formats.yolo import read_yolo
from pipeline.convert.raster import rasterize
from pipeline.convert.validate import check_record
from pipeline.core.records import Shape
from pipeline.params import ConvertParams, Labels
from pipeline.storage.masks import read_mask

COCO_YAML = """\
path: ../datasets/coco8  # dataset root dir (does not resolve here)
train: images/train
val: images/val
test:  # optional
names:
  0: person
  1: traffic light
  2: dog
download: https://example.invalid/coco8.zip
"""


def boxes(*rows: tuple[int, int, int, int, int], size: tuple[int, int] = (10, 10)) -> np.ndarray:
    out = np.zeros((size[1], size[0]), np.uint8)
    for x0, y0, x1, y1, v in rows:
        out[y0:y1 + 1, x0:x1 + 1] = v
    return out


def drawn(path: Path, raw: Path, classes: tuple[str, ...]) -> np.ndarray:
    record, found = read_annotation(path, raw)
    assert record is not None, found
    assert record.width and record.height
    pairs, found = check_record(record, record.width, record.height, Labels(classes=classes),
                                ConvertParams())
    assert [i for i in found if i.severity == "error"] == []
    return rasterize(pairs, record.width, record.height)


# --------------------------------------------------------------------------- layouts and names


def test_ultralytics_layout_with_data_yaml_names_as_a_dict(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_text(raw / "coco8/data.yaml", COCO_YAML)
    write_image(raw / "coco8/images/train/a.jpg", width=10, height=10)
    write_image(raw / "coco8/images/val/b.jpg", width=10, height=10)
    label = write_text(raw / "coco8/labels/train/a.txt", "1 0.25 0.25 0.3 0.3\n")
    write_text(raw / "coco8/labels/val/b.txt", "2 0.5 0.5 1 1\n")
    (raw / "coco8/labels/train.cache").write_bytes(b"\x93NUMPY\x01\x00 pickled, never read")
    assert find_annotation_paths(raw) == ["coco8/labels/train/a.txt", "coco8/labels/val/b.txt"]
    record, found = read_yolo(label, raw)
    assert found == []
    assert record is not None and record.image_path == "coco8/images/train/a.jpg"
    assert record.shapes == (Shape("traffic light", "rectangle", ((1.0, 1.0), (3.0, 3.0)), 0),)
    classes = ("background", "person", "traffic light", "dog")
    assert np.array_equal(drawn(label, raw, classes), boxes((1, 1, 3, 3, 2)))


def test_images_and_labels_side_by_side_without_splits(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_text(raw / "ds/obj.names", "cat\ndog\n")  # Darknet's class list
    write_image(raw / "ds/images/x.png", width=10, height=10)
    label = write_text(raw / "ds/labels/x.txt", "1 0.5 0.5 0.2 0.2\n")
    assert find_annotation_paths(raw) == ["ds/labels/x.txt"]
    record, found = read_yolo(label, raw)
    assert found == [] and record is not None
    assert (record.image_path, record.shapes[0].label) == ("ds/images/x.png", "dog")


def test_names_as_a_list_with_nc_and_a_wrong_nc(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_text(raw / "yolo_data.yaml", "nc: 2  # number of classes\n"
                                       "names: [ 'Squirrel','Nut']  # class names")
    write_image(raw / "images/train/f.jpeg", width=10, height=10)
    label = write_text(raw / "labels/train/f.txt", "1 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.2 0.2\n")
    record, found = read_yolo(label, raw)
    assert found == [] and record is not None
    assert [s.label for s in record.shapes] == ["Nut", "Squirrel"]
    write_text(raw / "yolo_data.yaml", "nc: 3\nnames: [Squirrel, Nut]\n")
    record, found = read_yolo(label, raw)
    assert record is None
    assert [(i.file, i.check) for i in found] == [("labels/train/f.txt", "no_classes")]
    assert found[0].message == (
        "labels/train/f.txt: yolo_data.yaml must be a YOLO dataset YAML whose names: is a list "
        "or an {id: name} mapping, got nc: 3 with 2 names (nc must be the number of classes)")


def test_nearest_class_list_wins_and_classes_txt_before_yaml(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_text(raw / "data.yaml", "names: [far]\n")
    write_text(raw / "a/classes.txt", "near\n")
    write_text(raw / "a/data.yaml", "names: [yaml]\n")
    write_text(raw / "a/labels.yaml", "colours: {x: 1}\n")  # no names: not a class list
    write_image(raw / "a/b/img.png", width=10, height=10)
    record, _ = read_yolo(write_text(raw / "a/b/img.txt", "0 .5 .5 .5 .5\n"), raw)
    assert record is not None and record.shapes[0].label == "near"
    write_image(raw / "c/img.png", width=10, height=10)
    record, _ = read_yolo(write_text(raw / "c/img.txt", "0 .5 .5 .5 .5\n"), raw)
    assert record is not None and record.shapes[0].label == "far"


def test_sparse_class_ids_of_a_names_dict(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_text(raw / "data.yaml", "names:\n  0: person\n  16: dog\n")
    write_image(raw / "img.png", width=10, height=10)
    record, found = read_yolo(write_text(raw / "img.txt", "16 .5 .5 .2 .2\n3 .5 .5 .2 .2\n"),
                              raw)
    assert record is None
    assert [(i.shape, i.check) for i in found] == [(1, "bad_class")]
    assert found[0].message == ("img.txt line 2: class index must be one of the 2 ids listed "
                                "(0..16, with gaps), got 3 (classes from data.yaml)")


# --------------------------------------------------------------------------- YOLO-seg


def test_yolo_seg_polygon_lines_are_drawn_as_polygons(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_text(raw / "classes.txt", "cat\ndog")  # no trailing newline, as X-AnyLabeling writes
    write_image(raw / "images/img.png", width=10, height=10)
    text = "0 0.1 0.1 0.6 0.1 0.6 0.5\n1 0.2 0.6 0.9 0.6 0.9 0.9 0.2 0.9\n"
    label = write_text(raw / "labels/img.txt", text)
    record, found = read_yolo(label, raw)
    assert found == [] and record is not None
    assert [(s.label, s.kind, s.points) for s in record.shapes] == [
        ("cat", "polygon", ((1.0, 1.0), (6.0, 1.0), (6.0, 5.0))),
        ("dog", "polygon", ((2.0, 6.0), (9.0, 6.0), (9.0, 9.0), (2.0, 9.0))),
    ]
    expected = Image.new("L", (10, 10), 0)
    draw = ImageDraw.Draw(expected)
    draw.polygon([(1, 1), (6, 1), (6, 5)], outline=1, fill=1)  # Labelme's polygon drawing
    draw.polygon([(2, 6), (9, 6), (9, 9), (2, 9)], outline=2, fill=2)
    assert np.array_equal(drawn(label, raw, ("background", "cat", "dog")), np.array(expected))


def test_a_line_of_the_wrong_length_names_both_forms(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_text(raw / "classes.txt", "cat\n")
    write_image(raw / "img.png", width=10, height=10)
    record, found = read_yolo(write_text(raw / "img.txt", "0 .1 .1 .5 .1 .5\n"), raw)
    assert record is None
    assert found[0].message == (
        "img.txt line 1: must be 'class cx cy w h' (a box) or 'class x1 y1 x2 y2 x3 y3 ...' "
        "(a polygon of 3 or more points), got 5 numbers in '0 .1 .1 .5 .1 .5' "
        "(classes from classes.txt)")


def test_real_yolo_seg_export_matches_the_labelme_polygons(realdata: Path,
                                                           tmp_path: Path) -> None:
    """X-AnyLabeling's YOLO-seg export of cat_dog.json draws the JSON's mask exactly (the
    normalised coordinates have 16 digits; x * W is rounded to 1e-9 px, so the float noise
    of 1017.0000000000001 does not move Pillow's edge pixels)."""
    base = realdata / "xanylabeling-examples/examples/segmentation"
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(base / "instance_segmentation/classes.txt", raw / "classes.txt")
    shutil.copy(base / "instance_segmentation/labels/cat_dog.txt", raw / "cat_dog.txt")
    shutil.copy(base / "multiclass_semantic_segmentation/sources/cat_dog.webp",
                raw / "cat_dog.webp")
    shutil.copy(base / "multiclass_semantic_segmentation/sources/cat_dog.json",
                raw / "cat_dog.json")
    classes = ("background", "cat", "dog")
    from_txt = drawn(raw / "cat_dog.txt", raw, classes)
    from_json = drawn(raw / "cat_dog.json", raw, classes)
    assert (from_txt == 1).sum() > 100_000 and (from_txt == 2).sum() > 200_000
    assert np.array_equal(from_txt, from_json)


# --------------------------------------------------------------------------- not labels


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()
    write_params(tmp_path, classes=["background", "cat", "dog"])
    return tmp_path


def test_text_files_that_are_not_labels_are_skipped_and_listed_once(project: Path) -> None:
    raw = project / "raw/ds"
    write_text(raw / "obj.names", "cat\ndog\n")
    write_image(raw / "obj/a.jpg", width=10, height=10)
    write_text(raw / "obj/a.txt", "0 0.5 0.5 0.2 0.2\n")  # the one real label
    write_text(raw / "README.txt", "Darknet set, see train.txt\n")
    write_text(raw / "train.txt", "data/obj/a.jpg\ndata/obj/b.jpg\n")  # Darknet's image list
    write_text(raw / "det/det.txt", "1,-1,794.2,47.5,71.2,174.8,67.5,-1,-1\n")  # MOT rows
    write_text(raw / "labels/orphan.txt", "1 0.5 0.5 0.2 0.2\n")  # a label without an image
    (raw / "obj/._a.txt").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS junk
    summary = convert(project)
    assert (summary.seen, summary.converted, summary.rejected) == (1, 1, 0)
    assert [r["id"] for r in manifest(project)] == ["ds/obj/a"]
    skipped = {f: m for f, m in ((i["file"], i["message"]) for i in json.loads(
        (project / "reports/validation.json").read_text()) if i["check"] == "skipped_file")}
    assert sorted(skipped) == ["ds/README.txt", "ds/det/det.txt", "ds/labels/orphan.txt",
                               "ds/train.txt"]
    assert skipped["ds/train.txt"] == (
        "ds/train.txt: not read: not a YOLO label file (no image train.<jpg|png|...> in 'ds', "
        "and not 'class cx cy w h' lines)")
    assert skipped["ds/labels/orphan.txt"] == (
        "ds/labels/orphan.txt: not read: a YOLO label (classes from ds/obj.names) without an "
        "image: no orphan.<jpg|png|...> in 'ds/labels' or 'ds/images'; skipped, not rejected")
    assert all(sev == "warning" for f, _, check, sev in issues(project)
               if check == "skipped_file")
    md = (project / "reports/validation.md").read_text()
    assert md.count("ds/train.txt: not read") == 1


def test_labels_without_any_class_list_get_one_warning(project: Path) -> None:
    raw = project / "raw"
    for name in ("a", "b", "c", "d"):
        write_image(raw / f"yolo/images/{name}.jpg", width=10, height=10)
        write_text(raw / f"yolo/labels/{name}.txt", "0 0.5 0.5 0.2 0.2\n")
    write_image(raw / "notes/photo.jpg")
    write_text(raw / "notes/photo.txt", "a caption, not a label")
    summary = convert(project)
    assert (summary.seen, summary.rejected) == (0, 0)
    found = [i for i in json.loads((project / "reports/validation.json").read_text())
             if i["check"] == "no_class_list"]
    assert found == [{"file": "yolo/labels", "shape": None, "check": "no_class_list",
                      "severity": "warning", "message":
                      "4 .txt files look like YOLO labels (an image of the same name, lines "
                      "'class cx cy w h') but no class list (classes.txt, obj.names or a "
                      "data.yaml with names:) is in their folder or above it inside the raw "
                      "dir; ignored them: yolo/labels/a.txt, yolo/labels/b.txt, "
                      "yolo/labels/c.txt and 1 more"}]


def test_a_bad_label_is_rejected_and_the_good_ones_convert(project: Path) -> None:
    raw = project / "raw"
    write_text(raw / "classes.txt", "cat\ndog\n")
    for name in ("good", "bad"):
        write_image(raw / f"images/{name}.png", width=10, height=10)
    write_text(raw / "labels/good.txt", "1 0.5 0.5 0.2 0.2\n")
    write_text(raw / "labels/bad.txt", "1 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")
    summary = convert(project)
    assert (summary.seen, summary.converted, summary.rejected) == (2, 1, 1)
    assert [i for i in issues(project) if i[2] != "class_without_samples"] == [
        ("labels/bad.txt", 1, "bad_class", "error")]
    assert np.array_equal(read_mask(project / "prepared/masks/labels/good.png"),
                          boxes((4, 4, 5, 5, 2)))


# --------------------------------------------------------------------------- the real sets


def test_real_coco8_ultralytics_layout(realdata: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    raw = realdata / "coco8-yolo"
    names = yaml.safe_load((raw / "data.yaml").read_text(encoding="utf-8"))["names"]
    classes = ["background", *(names[i] for i in sorted(names))]
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, classes=classes, raw_dir=str(raw), max_error_fraction=0.2)
    summary = convert(tmp_path, jobs=2)
    assert (summary.seen, summary.converted, summary.rejected) == (8, 8, 0)
    rows = manifest(tmp_path)
    assert sum(int(r["n_shapes"]) for r in rows) == 30  # PROVENANCE.md: 30 boxes
    assert {r["image"].split("/")[1] for r in rows} == {"labels"}  # ids from the label paths
    assert all(r["format"] == "yolo" for r in rows)
    present = {c for c in classes[1:] if any(int(r[f"px.{c}"]) for r in rows)}
    assert present == {"person", "orange", "bowl", "giraffe", "potted plant", "horse",
                       "elephant", "broccoli", "vase", "zebra", "umbrella", "dog"}
    assert [i for i in issues(tmp_path) if i[2] != "class_without_samples"] == []


def test_real_pylabel_squirrels_orphans_are_skipped_not_rejected(
        realdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = realdata / "pylabel-squirrels-yolo"
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, classes=["background", "Squirrel", "Nut"], raw_dir=str(raw),
                 max_error_fraction=0.2)
    summary = convert(tmp_path, jobs=2)  # with 89 rejected of 100 it would fail
    assert (summary.seen, summary.converted, summary.rejected) == (11, 11, 0)
    found = issues(tmp_path)
    skipped = [f for f, _, check, _ in found if check == "skipped_file"]
    assert len(skipped) == 89  # PROVENANCE.md: 89 labels without an image
    assert all(f.startswith("squirrelsandnuts_train_ezsplit/labels/train/") for f in skipped)
    assert not any("__MACOSX" in f for f, *_ in found)  # AppleDouble ._*.txt never read
    assert all(check in ("skipped_file", "class_without_samples") for _, _, check, _ in found)
    assert skipped_files(raw)[0].message.endswith("; skipped, not rejected")
