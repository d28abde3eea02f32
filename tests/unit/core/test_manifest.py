"""core/manifest.py: the one reader of manifest.csv and splits.csv, and the split selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.hashing import content_hash
from pipeline.core.manifest import (
    Splits,
    data_fingerprint,
    manifest_columns,
    read_manifest,
    read_splits,
    select,
)
from pipeline.errors import InputError

CLASSES = ("background", "cat")


def write_manifest(path: Path, rows: list[dict[str, object]]) -> Path:
    columns = manifest_columns(CLASSES)
    lines = [",".join(columns)]
    for row in rows:
        full = {"annotation": f"{row['id']}.json", "image": f"images/{row['id']}.jpg",
                "mask": f"masks/{row['id']}.png", "format": "labelme", "width": 4,
                "height": 2, "n_shapes": 1, "group": row["id"], "image_hash": "a" * 32,
                "mask_hash": "b" * 32, "key": "c" * 32, "px.background": 6, "px.cat": 2,
                "px.ignore": 0, **row}
        lines.append(",".join(str(full[c]) for c in columns))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_rows_sorted_with_paths_relative_to_the_manifest(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "prep" / "manifest.csv",
                          [{"id": "b/2", "px.cat": 3, "px.background": 5}, {"id": "a/1"}])
    manifest = read_manifest(path, CLASSES)
    assert manifest.root == tmp_path / "prep"
    assert [r.id for r in manifest.rows] == ["a/1", "b/2"]
    assert manifest.rows[1].image == "images/b/2.jpg"
    assert manifest.pixel_counts().tolist() == [[6, 2], [5, 3]]
    # the row fingerprint covers every column as written: any change changes it
    line = path.read_text(encoding="utf-8").splitlines()[1]
    columns = manifest_columns(CLASSES)
    text = "\x1f".join(f"{k}={v}" for k, v in zip(columns, line.split(","), strict=True))
    assert manifest.rows[1].fingerprint == content_hash(text.encode())


def test_missing_file_column_or_bad_count_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found; run `segpipe convert` first"):
        read_manifest(tmp_path / "manifest.csv", CLASSES)
    path = write_manifest(tmp_path / "manifest.csv", [{"id": "a"}])
    with pytest.raises(InputError, match=r"must have the columns \['px.tree'\]"):
        read_manifest(path, (*CLASSES, "tree"))
    write_manifest(path, [{"id": "a", "px.cat": "many"}])
    with pytest.raises(InputError,
                       match=r"width, height and px\.<class> must hold integers, got a row 'a'"):
        read_manifest(path, CLASSES)
    write_manifest(path, [{"id": "a"}, {"id": "a"}])
    with pytest.raises(InputError, match=r"ids must be unique, got 1 repeated: \['a'\]"):
        read_manifest(path, CLASSES)
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="must be a CSV with a header row"):
        read_manifest(tmp_path / "empty.csv", CLASSES)


def test_a_broken_splits_csv_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "splits.csv"
    path.write_text("id,group,split,version\na,a,train,1\nb,b,test,1\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_splits(path)
    assert str(err.value) == (f"{path}: split must be one of ['train', 'val', 'benchmark'], "
                              f"got line 3: 'test'")
    path.write_text("id,group,split\na,a,train\nb,b,val\n", encoding="utf-8")
    assert read_splits(path) == Splits(assignments={"a": "train", "b": "val"}, version=None,
                                       groups={"a": "a", "b": "b"})
    assert read_splits(tmp_path / "absent.csv") is None
    path.write_text("id,split,version\na,train,1\na,val,1\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"ids must be unique, got repeated \['a'\]"):
        read_splits(path)
    path.write_text("id,split,version\na,train,1\nb,val,2\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"version must be one integer on every row"):
        read_splits(path)


def test_select_returns_one_split_and_names_unknown_ids(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "manifest.csv", [{"id": "a"}, {"id": "b"}, {"id": "c"}])
    manifest = read_manifest(path, CLASSES)
    splits = Splits({"c": "val", "a": "val", "b": "train"}, 1)
    assert [r.id for r in select(manifest, splits, "val")] == ["a", "c"]
    assert select(manifest, splits, "benchmark") == []
    with pytest.raises(InputError, match="split must be one of"):
        select(manifest, splits, "test")
    gone = Splits({"a": "val", "zz": "val"}, 1)
    with pytest.raises(InputError, match=r"1 ids of split 'val' are not in the manifest \(zz\)"):
        select(manifest, gone, "val")


def test_data_fingerprint_follows_both_files(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "manifest.csv", [{"id": "a"}])
    splits = tmp_path / "splits.csv"
    splits.write_text("id,split\na,train\n", encoding="utf-8")
    before = data_fingerprint(manifest, splits)
    assert data_fingerprint(manifest, splits) == before
    splits.write_text("id,split\na,val\n", encoding="utf-8")
    assert data_fingerprint(manifest, splits) != before
    with pytest.raises(InputError, match="file not found"):
        data_fingerprint(tmp_path / "nope.csv", splits)
