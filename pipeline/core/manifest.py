"""The manifest and the split file: the one statement of their columns, and their one reader.

`convert` writes `<out_dir>/manifest.csv` (one row per converted sample, sorted by id); `split`
writes `splits.csv` (id, group, split, version). Every later stage reads them through
`read_manifest` and `read_splits` here, so a column is named in one place only.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.hashing import content_hash
from pipeline.errors import InputError

MANIFEST_NAME = "manifest.csv"
#: The manifest's columns before the per-class pixel counts.
FIXED_COLUMNS = ("id", "annotation", "image", "mask", "format", "width", "height", "n_shapes",
                 "group", "image_hash", "mask_hash", "key")
INT_COLUMNS = ("width", "height", "n_shapes")
IGNORE_COLUMN = "px.ignore"

SPLITS = ("train", "val", "benchmark")
SPLITS_COLUMNS = ("id", "group", "split", "version")


def pixel_column(class_name: str) -> str:
    """The manifest column counting a class's pixels in each mask."""
    return f"px.{class_name}"


def manifest_columns(classes: Sequence[str]) -> list[str]:
    """The manifest's columns, in order: FIXED_COLUMNS, px.<class> per class, px.ignore."""
    return [*FIXED_COLUMNS, *(pixel_column(c) for c in classes), IGNORE_COLUMN]


def manifest_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / MANIFEST_NAME


@dataclass(frozen=True)
class ManifestRow:
    """One converted sample. `image` and `mask` are relative to the manifest's folder."""

    id: str
    image: str
    mask: str
    width: int
    height: int
    image_hash: str
    mask_hash: str
    group: str
    pixels: tuple[int, ...]  # per class, in the classes' order
    fingerprint: str  # hash of the whole row as written: changes when anything about it does


@dataclass(frozen=True)
class Manifest:
    root: Path  # the manifest's folder
    classes: tuple[str, ...]
    rows: tuple[ManifestRow, ...]  # sorted by id

    def by_id(self) -> dict[str, ManifestRow]:
        return {row.id: row for row in self.rows}

    def pixel_counts(self) -> np.ndarray:
        """(samples, classes) int64 pixel counts; presence of a class = count > 0."""
        counts = np.array([row.pixels for row in self.rows], dtype=np.int64)
        return counts.reshape(len(self.rows), len(self.classes))


@dataclass(frozen=True)
class Splits:
    """A splits.csv: id -> split, and the `split.version` it was made with."""

    assignments: Mapping[str, str]
    version: int | None  # None: the file does not say
    groups: Mapping[str, str] = field(default_factory=dict)  # id -> split group, when given


def read_manifest(path: str | Path, classes: Sequence[str]) -> Manifest:
    """The manifest at `path`; a missing file, column or a bad count is an InputError."""
    path = Path(path)
    header, records = _read_csv(path, "run `segpipe convert` first")
    needed = ["id", "image", "mask", "width", "height", "image_hash", "mask_hash", "group",
              *(pixel_column(c) for c in classes)]
    missing = [c for c in needed if c not in header]
    if missing:
        raise InputError(f"{path}: must have the columns {missing} (one px.<class> per class "
                         "in params.yaml); re-run `segpipe convert` after changing classes")
    rows = []
    for record in records:
        try:
            pixels = tuple(int(record[pixel_column(c)]) for c in classes)
            width, height = int(record["width"]), int(record["height"])
        except ValueError:
            raise InputError(f"{path}: width, height and px.<class> must hold integers, got a "
                             f"row {record['id']!r} that does not") from None
        text = "\x1f".join(f"{k}={v}" for k, v in record.items())
        rows.append(ManifestRow(id=record["id"], image=record["image"], mask=record["mask"],
                                width=width, height=height,
                                image_hash=record["image_hash"], mask_hash=record["mask_hash"],
                                group=record["group"], pixels=pixels,
                                fingerprint=content_hash(text.encode())))
    rows.sort(key=lambda r: r.id)
    ids = [r.id for r in rows]
    repeated = sorted({a for a, b in itertools.pairwise(ids) if a == b})
    if repeated:
        raise InputError(f"{path}: ids must be unique, got {len(repeated)} repeated: "
                         f"{repeated[:3]}")
    return Manifest(root=path.parent, classes=tuple(classes), rows=tuple(rows))


def read_splits(path: str | Path) -> Splits | None:
    """splits.csv, or None when there is none yet (or it is empty)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        header, records = _read_csv(path, "")
    except InputError:
        return None  # an empty file: as if there were none
    missing = [c for c in ("id", "split") if c not in header]
    if missing:
        raise InputError(f"{path}: must have the columns id and split, missing {missing}; "
                         "delete it to split from scratch")
    bad = [f"line {i + 2}: {r['split']!r}" for i, r in enumerate(records)
           if r["split"] not in SPLITS]
    if bad:
        raise InputError(f"{path}: split must be one of {list(SPLITS)}, got {', '.join(bad[:3])}")
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        repeated = [i for i in ids if i in seen or seen.add(i)]
        raise InputError(f"{path}: ids must be unique, got repeated {repeated[:3]}")
    version = None
    if "version" in header and records:
        values = sorted({r["version"] for r in records})
        if len(values) != 1 or not values[0].lstrip("-").isdigit():
            raise InputError(f"{path}: version must be one integer on every row, got "
                             f"{values[:3]}")
        version = int(values[0])
    groups = {r["id"]: r["group"] for r in records} if "group" in header else {}
    return Splits(assignments={r["id"]: r["split"] for r in records}, version=version,
                  groups=groups)


def select(manifest: Manifest, splits: Splits, split: str, source: str = "splits.csv"
           ) -> list[ManifestRow]:
    """The manifest rows of one split, sorted by id. An id the manifest lacks is an error."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    rows = manifest.by_id()
    wanted = sorted(i for i, s in splits.assignments.items() if s == split)
    unknown = [i for i in wanted if i not in rows]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise InputError(f"{source}: {len(unknown)} ids of split {split!r} are not in the "
                         f"manifest ({shown}); run `segpipe split` again")
    return [rows[i] for i in wanted]


def data_fingerprint(manifest_csv: str | Path, splits_csv: str | Path) -> str:
    """Hash of the manifest and the split files: the data version a model was trained on."""
    parts = []
    for path in (Path(manifest_csv), Path(splits_csv)):
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        parts.append(content_hash(path.read_bytes()))
    return content_hash("\n".join(parts).encode())


def _read_csv(path: Path, hint: str) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise InputError(f"{path}: file not found" + (f"; {hint}" if hint else ""))
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise InputError(f"{path}: must be a CSV with a header row, got an empty file")
        return list(reader.fieldnames), list(reader)
