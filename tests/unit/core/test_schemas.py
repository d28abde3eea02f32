"""pipeline.schemas: the manifest and mask checks convert runs before it ends."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.core import schemas
from pipeline.core.manifest import manifest_columns

CLASSES = ("background", "cat")
H = "0123456789abcdef0123456789abcdef"


def manifest(out: Path, ids: tuple[str, ...] = ("a", "b/c")) -> pd.DataFrame:
    rows = []
    for i in ids:
        (out / "masks" / f"{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (out / "masks" / f"{i}.png").write_bytes(b"png")
        rows.append({"id": i, "annotation": f"{i}.json", "image": f"images/{i}.jpg",
                     "mask": f"masks/{i}.png", "format": "labelme", "width": 4, "height": 3,
                     "n_shapes": 1, "group": i, "image_hash": H, "mask_hash": H, "key": H,
                     "px.background": 10, "px.cat": 1, "px.ignore": 1})
    return pd.DataFrame(rows, columns=manifest_columns(CLASSES))


def masks(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"mask": frame["mask"], "mode": "P", "dtype": "uint8", "channels": 1,
                         "width": 4, "height": 3, "image_width": 4, "image_height": 3,
                         "stray_pixels": 0})


def test_valid_manifest_and_masks_pass(tmp_path: Path) -> None:
    frame = manifest(tmp_path)
    assert schemas.check_manifest(frame, CLASSES, tmp_path) == []
    assert schemas.check_masks(masks(frame), frame, len(CLASSES)) == []


def test_empty_manifest_passes(tmp_path: Path) -> None:
    frame = manifest(tmp_path, ids=())
    types = {c: "str" if c in ("id", "annotation", "image", "mask", "format", "group",
                               "image_hash", "mask_hash", "key") else "int64"
             for c in frame.columns}
    assert schemas.check_manifest(frame.astype(types), CLASSES, tmp_path) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f: f.assign(width=[4, 0]), "column 'width': failed greater_than_or_equal_to(1) "
                                           "for id ['b/c']"),
        (lambda f: f.assign(**{"px.cat": [1, -1], "px.ignore": [1, 3]}),
         "table: failed pixel counts must be >= 0 for id ['b/c']"),
        (lambda f: f.iloc[::-1].reset_index(drop=True), "rows must be sorted by id"),
        (lambda f: f.assign(id=["a", "a"]), "column 'id': failed field_uniqueness"),
        (lambda f: f.assign(**{"px.cat": [1, 5]}), "pixel counts must add up"),
        (lambda f: f.assign(key=[H, "xyz"]), "str_matches"),
        (lambda f: f.assign(group=["a", "zzz"]), "group must be the smallest id"),
        (lambda f: f.assign(image=["images/a.jpg", "images/other.jpg"]), "images/<id>.<ext>"),
        (lambda f: f[[c for c in f.columns if c != "n_shapes"]], "column_in_dataframe"),
        (lambda f: f.iloc[:1], "mask files without a row: ['masks/b/c.png']"),
        (lambda f: f.assign(format=["labelme", "coco"]), "str_matches"),
    ],
)
def test_manifest_problems_are_named(tmp_path: Path, change, expected: str) -> None:
    frame = change(manifest(tmp_path))
    problems = schemas.check_manifest(frame, CLASSES, tmp_path)
    assert any(expected in p for p in problems), problems


def test_missing_mask_file_is_a_problem(tmp_path: Path) -> None:
    frame = manifest(tmp_path)
    (tmp_path / "masks" / "b" / "c.png").unlink()
    problems = schemas.check_manifest(frame, CLASSES, tmp_path)
    assert "manifest.csv: column 'mask': failed mask file must exist for id ['b/c']" in problems
    assert "manifest.csv: mask files without a row: []; rows without a file: ['masks/b/c.png']" \
        in problems


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [("dtype", "uint16", "equal_to(uint8)"), ("channels", 3, "equal_to(1)"),
     ("stray_pixels", 7, "equal_to(0)"), ("image_width", 5, "mask size must equal"),
     ("mode", "RGB", "isin")],
)
def test_mask_problems_are_named(tmp_path: Path, column: str, value: object,
                                 expected: str) -> None:
    frame = manifest(tmp_path)
    facts = masks(frame)
    facts.loc[1, column] = value
    problems = schemas.check_masks(facts, frame, len(CLASSES))
    assert any(expected in p for p in problems), problems


def test_mask_rows_must_match_the_manifest(tmp_path: Path) -> None:
    frame = manifest(tmp_path)
    problems = schemas.check_masks(masks(frame).iloc[:1], frame, len(CLASSES))
    assert problems == ["masks: there must be one facts row per manifest mask; missing "
                        "['masks/b/c.png'], extra []"]
    other = masks(frame).assign(width=5, image_width=5)
    assert schemas.check_masks(other, frame, len(CLASSES)) == [
        "masks: masks/a.png: mask size must equal the manifest's width x height",
        "masks: masks/b/c.png: mask size must equal the manifest's width x height"]


def test_checked_rows_skip_only_the_row_checks(tmp_path: Path) -> None:
    frame = manifest(tmp_path, ids=("a", "b", "c"))
    facts = masks(frame)
    assert schemas.check_manifest(frame, CLASSES, tmp_path, {"a", "b"}) == []
    assert schemas.check_masks(facts, frame, len(CLASSES), {"masks/a.png"}) == []
    bad = frame.assign(n_shapes=[-1, 1, -1])  # rows a (checked earlier) and c (new) are wrong
    assert schemas.check_manifest(bad, CLASSES, tmp_path, {"a", "b"}) == [
        "manifest.csv: column 'n_shapes': failed greater_than_or_equal_to(0) for id ['c']"]
    assert schemas.check_manifest(bad, CLASSES, tmp_path) == [  # no checked rows: all seen
        "manifest.csv: column 'n_shapes': failed greater_than_or_equal_to(0) for id ['a', 'c']"]
    # the checks of the whole table see checked rows too
    twice = frame.assign(id=["a", "a", "c"], mask=["masks/a.png", "masks/a.png", "masks/c.png"])
    found = schemas.check_manifest(twice, CLASSES, tmp_path, {"a"})
    assert "manifest.csv: table: failed id must be unique for id ['a', 'a']" in found
    assert any("one row per mask file" in p for p in found)  # masks/b.png has no row
    orphan = frame.assign(group=["a", "zzz", "c"])
    assert any("group must be the smallest id" in p
               for p in schemas.check_manifest(orphan, CLASSES, tmp_path, {"a", "b", "c"}))
    stray = facts.assign(stray_pixels=[3, 0, 0])
    assert schemas.check_masks(stray, frame, len(CLASSES), {"masks/a.png"}) == []
    assert schemas.check_masks(stray, frame, len(CLASSES), {"masks/b.png"}) != []
