"""Pandera schemas for what `convert` hands to the later stages: the manifest and the masks.

The columns are core/manifest.py's. `check_manifest` and `check_masks` return readable
problems (empty when all is well); the convert stage runs both before it ends and fails with
those problems. The schemas are built per run: they depend on the classes and the output dir.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors

from pipeline.core.manifest import IGNORE_COLUMN, MANIFEST_NAME, pixel_column

_HASH = r"^[0-9a-f]{32}$"
_FORMAT = r"^(labelme|voc|yolo|labelme_xml|masks)(\+(labelme|voc|yolo|labelme_xml|masks))*$"


def _files_under(root: Path) -> set[str]:
    """Posix paths relative to root.parent of every file under root (e.g. 'masks/a/b.png')."""
    found = set()
    for dirpath, _, names in os.walk(root):
        rel = Path(dirpath).relative_to(root.parent).as_posix()
        found.update(f"{rel}/{name}" for name in names)
    return found


def manifest_schema(classes: Sequence[str], out_dir: Path) -> pa.DataFrameSchema:
    """The manifest: columns in order, types, ranges, unique ids sorted, paths that follow the
    id, groups that name a sample, pixel counts adding up to the image area, and exactly one
    row per mask file in `out_dir/masks` (each of which exists)."""
    columns, row_checks, table_checks = _manifest_parts(classes, out_dir)
    return pa.DataFrameSchema(columns, checks=[*table_checks, *row_checks], strict=True,
                              ordered=True, name=MANIFEST_NAME)


def _manifest_parts(classes: Sequence[str], out_dir: Path
                    ) -> tuple[dict[str, pa.Column], list[pa.Check], list[pa.Check]]:
    """The manifest schema's columns, its checks of each row on its own, and its checks
    that need the whole table (sorted, groups, one row per mask file)."""
    count = pa.Column(int)  # >= 0: one table-level check for all counts (cheaper than one each)
    masks_on_disk = _files_under(out_dir / "masks")  # one directory walk, not a stat per row
    columns = {
        "id": pa.Column(str, [pa.Check.str_length(min_value=1),
                              pa.Check(lambda s: ~s.str.startswith("/")
                                       & ~s.str.contains(r"(?:^|/)\.\.(?:/|$)"),
                                       error="id must be a relative path inside the raw dir")],
                        unique=True),
        "annotation": pa.Column(str, pa.Check.str_length(min_value=1)),
        "image": pa.Column(str, pa.Check.str_startswith("images/")),
        "mask": pa.Column(str, [pa.Check.str_startswith("masks/"), pa.Check(
            lambda s: s.isin(masks_on_disk), error="mask file must exist")], unique=True),
        "format": pa.Column(str, pa.Check.str_matches(_FORMAT)),
        "width": pa.Column(int, pa.Check.ge(1)),
        "height": pa.Column(int, pa.Check.ge(1)),
        "n_shapes": pa.Column(int, pa.Check.ge(0)),
        "group": pa.Column(str),
        "image_hash": pa.Column(str, pa.Check.str_matches(_HASH)),
        "mask_hash": pa.Column(str, pa.Check.str_matches(_HASH)),
        "key": pa.Column(str, pa.Check.str_matches(_HASH)),
        **{pixel_column(c): count for c in classes},
        IGNORE_COLUMN: count,
    }
    px = [pixel_column(c) for c in classes] + [IGNORE_COLUMN]
    table_checks = [
        pa.Check(lambda df: df["id"].is_monotonic_increasing, error="rows must be sorted by id"),
        pa.Check(lambda df: df["group"].isin(set(df["id"])) & (df["group"] <= df["id"]),
                 error="group must be the smallest id of its duplicate-image group"),
        pa.Check(lambda df: set(df["mask"]) == masks_on_disk,
                 error="one row per mask file in masks/ (no mask file without a row)"),
    ]
    row_checks = [
        pa.Check(lambda df: df["mask"] == "masks/" + df["id"] + ".png",
                 error="mask must be masks/<id>.png"),
        pa.Check(lambda df: df["image"].str.rsplit(".", n=1).str[0] == "images/" + df["id"],
                 error="image must be images/<id>.<ext>"),
        pa.Check(lambda df: (df[px] >= 0).all(axis=1), error="pixel counts must be >= 0"),
        pa.Check(lambda df: df[px].sum(axis=1) == df["width"] * df["height"],
                 error="pixel counts must add up to width x height"),
    ]
    return columns, row_checks, table_checks


def _unique(*names: str) -> list[pa.Check]:
    return [pa.Check(lambda df, n=n: ~df[n].duplicated(keep=False), error=f"{n} must be unique")
            for n in names]


def _split(frame: pd.DataFrame, key: str, checked: Collection[str]) -> pd.DataFrame | None:
    """The rows of `frame` whose `key` is not in `checked` (index reset), or None when that
    cannot be told (no such column): then the whole table is checked."""
    if not checked or key not in frame:
        return None
    return frame[~frame[key].isin(checked)].reset_index(drop=True)


def mask_schema(n_classes: int) -> pa.DataFrameSchema:
    """One row of facts per mask file (read back from its bytes): uint8, a single channel,
    values that are a class index or 255, and the size of its image."""
    size = pa.Column(int, pa.Check.ge(1))
    return pa.DataFrameSchema(
        {
            "mask": pa.Column(str, unique=True),
            "mode": pa.Column(str, pa.Check.isin(["P", "L"])),
            "dtype": pa.Column(str, pa.Check.eq("uint8")),
            "channels": pa.Column(int, pa.Check.eq(1)),
            "width": size,
            "height": size,
            "image_width": size,
            "image_height": size,
            "stray_pixels": pa.Column(int, pa.Check.eq(0), description=(
                f"pixels whose value is neither a class index (< {n_classes}) nor 255")),
        },
        checks=[pa.Check(lambda df: (df["width"] == df["image_width"])
                         & (df["height"] == df["image_height"]),
                         error="mask size must equal its image's size")],
        strict=True, name="masks")


def _problems(schema: pa.DataFrameSchema, frame: pd.DataFrame, limit: int = 20) -> list[str]:
    """Readable failures: one line per (column, check), naming the rows' ids and examples."""
    try:
        schema.validate(frame)  # valid data (the usual case) stops here, at half the cost
        return []
    except SchemaError:
        pass
    try:
        schema.validate(frame, lazy=True)  # collect every failure
    except SchemaErrors as exc:
        cases = exc.failure_cases.astype({"column": object, "check": str})
        cases["column"] = cases["column"].where(cases["schema_context"] == "Column", None)
        out = []
        for (column, check), found in cases.groupby(["column", "check"], dropna=False,
                                                    sort=False):
            rows = sorted({int(i) for i in found["index"] if isinstance(i, (int, float))
                           and i == i})
            where = f"column {column!r}" if isinstance(column, str) else "table"
            what = [str(frame["id"].iloc[r]) for r in rows[:5]] if "id" in frame and rows \
                and rows[-1] < len(frame) else []
            shown = f" for id {what}" if what else \
                f" (got {sorted(set(map(str, found['failure_case'])))[:5]})"
            more = f" and {len(rows) - 5} more rows" if len(rows) > 5 else ""
            out.append(f"{schema.name}: {where}: failed {check}{shown}{more}")
        return out[:limit] + ([f"{schema.name}: ... {len(out) - limit} more"]
                              if len(out) > limit else [])
    return []


def check_manifest(manifest: pd.DataFrame, classes: Sequence[str], out_dir: Path,
                   checked: Collection[str] = ()) -> list[str]:
    """Problems of the manifest table against `manifest_schema` (empty list: valid).

    `checked`: ids whose rows passed this schema before and are unchanged since (convert's
    cache knows). Their rows only take part in the checks of the whole table (sorted, unique
    ids and masks, groups, one row per mask file); every other row gets the whole schema.
    The same verdict for valid data, at a fraction of the cost when few rows are new."""
    fresh = _split(manifest, "id", checked)
    if fresh is None:
        problems = _problems(manifest_schema(classes, Path(out_dir)), manifest)
    else:
        columns, row_checks, table_checks = _manifest_parts(classes, Path(out_dir))
        whole = pa.DataFrameSchema(checks=[*table_checks, *_unique("id", "mask")],
                                   name=MANIFEST_NAME)
        rows = pa.DataFrameSchema(columns, checks=row_checks, strict=True, ordered=True,
                                  name=MANIFEST_NAME)
        problems = _problems(whole, manifest) + _problems(rows, fresh)
    if any("one row per mask file" in p for p in problems) and "mask" in manifest:
        on_disk, rows = _files_under(Path(out_dir) / "masks"), set(manifest["mask"])
        problems.append("manifest.csv: mask files without a row: "
                        f"{sorted(on_disk - rows)[:5]}; rows without a file: "
                        f"{sorted(rows - on_disk)[:5]}")
    return problems


def check_masks(masks: pd.DataFrame, manifest: pd.DataFrame, n_classes: int,
                checked: Collection[str] = ()) -> list[str]:
    """Problems of the mask facts against `mask_schema`, plus one facts row per manifest mask
    with the manifest's size. `checked`: masks whose facts passed before and are unchanged
    (only their uniqueness and their match with the manifest are checked again)."""
    fresh = _split(masks, "mask", checked)
    if fresh is None:
        problems = _problems(mask_schema(n_classes), masks)
    else:
        whole = pa.DataFrameSchema(checks=_unique("mask"), name="masks")
        problems = _problems(whole, masks) + _problems(mask_schema(n_classes), fresh)
    sizes = manifest.set_index("mask")[["width", "height"]]
    facts = masks.set_index("mask")[["width", "height"]] if "mask" in masks else sizes.iloc[:0]
    if set(facts.index) != set(sizes.index):
        missing = sorted(set(sizes.index) - set(facts.index))[:5]
        extra = sorted(set(facts.index) - set(sizes.index))[:5]
        problems.append(f"masks: there must be one facts row per manifest mask; missing "
                        f"{missing}, extra {extra}")
    else:
        differ = (facts.loc[sizes.index] != sizes).any(axis=1)
        problems += [f"masks: {m}: mask size must equal the manifest's width x height"
                     for m in differ[differ].index[:5]]
    return problems
