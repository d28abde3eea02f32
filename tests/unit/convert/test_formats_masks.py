"""Existing mask PNGs as input (convert.masks): pairing with the image, palette indices, grey
levels (trimaps), RGB(A) colours, every value mapped, the size checked, 1-px structures kept
exactly; the params checks; the real uav75 crack masks and X-AnyLabeling's palette mask."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers.files import write_image, write_mask_png
from test_convert_stage import convert, issues, manifest, write_params

from pipeline.convert.formats import find_annotation_paths, read_annotation
from pipeline.convert.raster import rasterize
from pipeline.convert.validate import check_record
from pipeline.errors import ParamsError
from pipeline.params import ConvertParams, Labels, MaskSource, parse_params
from pipeline.storage.masks import read_mask

TRIMAP = MaskSource("annotations/trimaps", "images",
                    ((1, "pet"), (2, "background"), (3, "__ignore__")))
LABELS = Labels(classes=("background", "pet", "crack", "planking"))


def mask_of(path: Path, raw: Path, sources: tuple[MaskSource, ...]) -> np.ndarray:
    record, found = read_annotation(path, raw, sources)
    assert record is not None, found
    assert record.width and record.height
    pairs, found = check_record(record, record.width, record.height, LABELS, ConvertParams())
    assert [i for i in found if i.severity == "error"] == []
    return rasterize(pairs, record.width, record.height)


def trimap() -> np.ndarray:
    values = np.full((6, 8), 2, np.uint8)
    values[1:5, 2:6] = 3  # the border
    values[2:4, 3:5] = 1  # the pet
    return values


# --------------------------------------------------------------------------- reading


def test_grey_trimap_values_map_to_classes_and_ignore(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "images/Abyssinian_1.jpg", width=8, height=6)
    path = write_mask_png(raw / "annotations/trimaps/Abyssinian_1.png", trimap())
    assert find_annotation_paths(raw) == []  # never guessed: no convert.masks, no masks
    assert find_annotation_paths(raw, (TRIMAP,)) == ["annotations/trimaps/Abyssinian_1.png"]
    record, found = read_annotation(path, raw, (TRIMAP,))
    assert found == [] and record is not None
    assert (record.format, record.image_path) == ("masks", "images/Abyssinian_1.jpg")
    expected = np.where(trimap() == 1, 1, np.where(trimap() == 3, 255, 0)).astype(np.uint8)
    assert np.array_equal(mask_of(path, raw, (TRIMAP,)), expected)


def test_palette_png_indices_as_voc_segmentation_class(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "VOC2012/JPEGImages/2007_000032.jpg", width=8, height=6)
    index = np.zeros((6, 8), np.uint8)
    index[1:3, 1:7] = 1
    index[0, :] = 255  # VOC's void border
    palette = [0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192]
    path = write_mask_png(raw / "VOC2012/SegmentationClass/2007_000032.png", index,
                          mode="P", palette=palette)
    source = MaskSource("**/SegmentationClass", "**/JPEGImages",
                        ((0, "background"), (1, "pet"), (255, "__ignore__")))
    assert find_annotation_paths(raw, (source,)) == ["VOC2012/SegmentationClass/2007_000032.png"]
    assert np.array_equal(mask_of(path, raw, (source,)), index)


def test_rgba_colour_mask_keeps_a_one_pixel_crack_exactly(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "test_img/DSC1.jpg", width=8, height=6)
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[4, 1:7, :3] = 204  # planking
    crack = [(0, 3), (1, 3), (2, 4), (3, 5), (4, 5), (5, 6)]  # a 1-px diagonal crack
    for y, x in crack:
        rgba[y, x, :3] = 255
    path = write_mask_png(raw / "test_lab/DSC1.png", rgba)
    source = MaskSource("*_lab", "*_img", (((0, 0, 0), "background"),
                                          ((204, 204, 204), "planking"),
                                          ((255, 255, 255), "crack")))
    mask = mask_of(path, raw, (source,))
    assert sorted(map(tuple, np.argwhere(mask == 2))) == crack
    expected = np.zeros((6, 8), np.uint8)
    expected[4, 1:7] = 3
    for y, x in crack:
        expected[y, x] = 2
    assert np.array_equal(mask, expected)


def test_mask_beside_its_image_with_a_suffix(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_image(raw / "data/img_01.png", width=8, height=6)  # a PNG image is not a mask
    path = write_mask_png(raw / "data/img_01_mask.png", (trimap() == 1).astype(np.uint8) * 255)
    source = MaskSource("data", "data", ((0, "background"), (255, "pet")), suffix="_mask")
    assert find_annotation_paths(raw, (source,)) == ["data/img_01_mask.png"]
    record, _ = read_annotation(path, raw, (source,))
    assert record is not None and record.image_path == "data/img_01.png"
    assert np.array_equal(mask_of(path, raw, (source,)), (trimap() == 1).astype(np.uint8))


# --------------------------------------------------------------------------- rejections


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    for name in ("good", "unknown", "small", "orphan"):
        if name != "orphan":
            write_image(raw / f"images/{name}.jpg", width=8, height=6)
    write_mask_png(raw / "annotations/trimaps/good.png", trimap())
    stray = trimap()
    stray[0, 0], stray[5, 7] = 7, 9  # values the mapping does not list
    write_mask_png(raw / "annotations/trimaps/unknown.png", stray)
    write_mask_png(raw / "annotations/trimaps/small.png", trimap()[:4])
    write_mask_png(raw / "annotations/trimaps/orphan.png", trimap())
    masks = [{"masks": "annotations/trimaps", "images": "images",
              "values": {1: "pet", 2: "background", 3: "__ignore__"}}]
    write_params(tmp_path, classes=list(LABELS.classes), masks=masks)
    return tmp_path


def test_bad_masks_are_rejected_with_the_reason_and_the_good_one_converts(
        project: Path) -> None:
    summary = convert(project)
    assert (summary.seen, summary.converted, summary.rejected) == (4, 1, 3)
    assert [(r["id"], r["format"]) for r in manifest(project)] == [
        ("annotations/trimaps/good", "masks")]
    good = read_mask(project / "prepared/masks/annotations/trimaps/good.png")
    assert np.array_equal(good, np.where(trimap() == 1, 1, np.where(trimap() == 3, 255, 0)))
    found = {i["file"]: (i["check"], i["message"]) for i in json.loads(
        (project / "reports/validation.json").read_text()) if i["severity"] == "error"}
    where = "convert.masks entry 0 (masks 'annotations/trimaps' -> images 'images')"
    assert found == {
        "annotations/trimaps/unknown.png": (
            "mask_values", f"annotations/trimaps/unknown.png: every pixel value must be listed "
            f"in the values of {where}, got 7 in 1 px, 9 in 1 px not listed (listed: 1, 2, 3)"),
        "annotations/trimaps/small.png": (
            "mask_size", "annotations/trimaps/small.png: the mask must be the size of its "
            f"image images/small.jpg (8x6), got 8x4 ({where})"),
        "annotations/trimaps/orphan.png": (
            "image_missing", "annotations/trimaps/orphan.png: the mask's image must exist as "
            f"orphan.<jpg|png|...> in 'images' ({where}), got none"),
    }


def test_changing_the_mapping_converts_the_masks_again(project: Path) -> None:
    convert(project)
    masks = [{"masks": "annotations/trimaps", "images": "images",
              "values": {1: "pet", 2: "background", 3: "pet", 7: "pet", 9: "pet"}}]
    write_params(project, classes=list(LABELS.classes), masks=masks)
    summary = convert(project)
    assert (summary.converted, summary.processed, summary.reused) == (2, 4, 0)
    good = read_mask(project / "prepared/masks/annotations/trimaps/good.png")
    assert np.array_equal(good, np.isin(trimap(), (1, 3)).astype(np.uint8))


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize(("masks", "message"), [
    ({"masks": "*_lab", "images": "images", "values": {0: "background"}},
     "convert.masks entry 0: images must use the same wildcards as masks"),
    ({"masks": "a", "images": "a", "values": {0: "background"}},
     "convert.masks entry 0: masks in the images' own folder need a suffix"),
    ({"masks": "a", "images": "b", "values": {"red": "background"}},
     "convert.masks entry 0: values key 'red' must be a pixel value"),
    ({"masks": "a", "images": "b", "values": {0: "background", "1,1,1": "pet"}},
     "convert.masks entry 0: values must be all integers or all colours, got both"),
    ({"masks": "../a", "images": "b", "values": {0: "background"}},
     "convert.masks entry 0: masks must be a folder inside convert.raw_dir"),
    ({"masks": "a", "images": "b", "values": {1: "cat"}},
     "convert.masks entry 0: values.1 must name a class, an ignore label or an alias, got "
     "'cat'"),
])
def test_masks_params_are_checked_before_anything_runs(masks: dict, message: str) -> None:
    with pytest.raises(ParamsError) as exc:
        parse_params({"classes": ["background", "pet"], "convert": {"masks": [masks]}})
    assert message in str(exc.value)


def test_masks_params_values_as_colours_and_indices() -> None:
    params = parse_params({"classes": ["background", "crack"], "convert": {"masks": {
        "masks": "*_lab", "images": "*_img",
        "values": {"0,0,0": "background", "#ffffff": "crack"}}}})
    assert params.convert.masks == (MaskSource(
        "*_lab", "*_img", (((0, 0, 0), "background"), ((255, 255, 255), "crack"))),)


# --------------------------------------------------------------------------- real sets


def _link_tree(src: Path, dst: Path) -> None:
    """`dst` mirrors `src` with symlinked files (the real sets are never copied)."""
    for path in src.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)


def test_real_uav75_crack_pixels_survive_exactly(realdata: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    raw = realdata / "uav75-crack-masks"
    monkeypatch.chdir(tmp_path)
    masks = [{"masks": "*_lab", "images": "*_img", "values": {
        "0,0,0": "background", "255,255,255": "crack", "204,204,204": "planking"}}]
    write_params(tmp_path, classes=["background", "crack", "planking"], raw_dir=str(raw),
                 masks=masks, max_error_fraction=0.2)
    summary = convert(tmp_path, jobs=2)
    assert (summary.seen, summary.converted, summary.rejected) == (25, 25, 0)
    assert issues(tmp_path) == []
    rows = manifest(tmp_path)
    assert {r["id"].split("/")[0] for r in rows} == {"test_lab", "val_lab"}
    for row in rows:
        with Image.open(raw / f"{row['id']}.png") as source:
            rgb = np.asarray(source)[..., :3]
        ours = read_mask(tmp_path / "prepared" / row["mask"])
        assert np.array_equal(ours == 1, (rgb == 255).all(-1)), row["id"]  # every crack px
        assert np.array_equal(ours == 2, (rgb == 204).all(-1)), row["id"]
        assert row["image"] == f"images/{row['id']}.jpg"
        image = tmp_path / "prepared" / row["image"]
        assert image.read_bytes() == (raw / row["id"].replace("_lab/", "_img/")).with_suffix(
            ".jpg").read_bytes()


def test_real_x_anylabeling_palette_mask_read_by_colour(realdata: Path, tmp_path: Path) -> None:
    base = realdata / "xanylabeling-examples/examples/segmentation/multiclass_semantic_segmentation"
    raw = tmp_path / "raw"
    _link_tree(base, raw)
    # its palette order is dog = 1, cat = 2: mapped by colour, the index does not matter
    source = MaskSource("masks", "sources", (((0, 0, 0), "background"),
                                             ((85, 0, 255), "pet"), ((213, 42, 54), "crack")))
    mask = mask_of(raw / "masks/cat_dog.png", raw, (source,))
    assert ((mask == 1).sum(), (mask == 2).sum()) == (139911, 265472)  # PROVENANCE.md
