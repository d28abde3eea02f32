"""A tiny prepared dataset as convert writes it (images with coloured squares and discs,
class-index masks, manifest.csv, splits.csv) and params to train on it in seconds."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core.fingerprint import fingerprint, object_stats
from pipeline.core.hashing import content_hash
from pipeline.core.manifest import IGNORE_COLUMN, pixel_column, read_manifest
from pipeline.core.records import IGNORE
from pipeline.learn.plan import Plan
from pipeline.storage.masks import read_mask, write_mask

CLASSES = ("background", "square", "disc")
COLOURS = {1: (220, 40, 40), 2: (40, 60, 220)}


def make_dataset(root: Path, n: int = 12, n_val: int = 4, size: tuple[int, int] = (32, 32),
                 seed: int = 0) -> tuple[Path, Path]:
    """n samples (every 3rd one 40x28, every 5th a JPEG) under root/prepared; returns
    (manifest_csv, splits_csv). Masks: 0 background, 1 square, 2 disc, 255 a corner patch."""
    rng = np.random.default_rng(seed)
    out = root / "prepared"
    rows, split_rows = [], []
    for i in range(n):
        w, h = (40, 28) if i % 3 == 2 else size
        image = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        x0, y0 = rng.integers(2, w // 2), rng.integers(2, h // 2)
        side = int(rng.integers(6, 12))
        square = (xx >= x0) & (xx < x0 + side) & (yy >= y0) & (yy < y0 + side)
        cx, cy, r = rng.integers(w // 2, w - 4), rng.integers(h // 2, h - 4), rng.integers(3, 7)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        for value, region in ((1, square), (2, disc)):
            mask[region] = value
            image[region] = COLOURS[value]
        if i % 4 == 1:
            mask[:3, :3] = IGNORE
        sample_id = f"batch{i % 2}/img_{i:03d}"
        ext = "jpg" if i % 5 == 4 else "png"
        image_path = out / "images" / f"{sample_id}.{ext}"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(image_path, quality=95)
        rows.append(manifest_row(out, sample_id, f"images/{sample_id}.{ext}", mask, CLASSES))
        split_rows.append({"id": sample_id, "group": sample_id,
                           "split": "val" if i >= n - n_val else "train"})
    manifest_csv = out / "manifest.csv"
    splits_csv = root / "splits" / "splits.csv"
    splits_csv.parent.mkdir(parents=True, exist_ok=True)
    write_table(manifest_csv, rows)
    write_table(splits_csv, split_rows)
    write_fingerprint(root, manifest_csv)
    return manifest_csv, splits_csv


def manifest_row(prepared: Path, sample_id: str, image: str, mask: np.ndarray,
                 classes: tuple[str, ...]) -> dict[str, Any]:
    """The manifest row convert would write for an image (already at prepared/image) and its
    mask, which is written to prepared/masks/<id>.png here."""
    mask_rel = f"masks/{sample_id}.png"
    write_mask(prepared / mask_rel, mask)
    counts = np.bincount(mask.ravel(), minlength=256)
    return {"id": sample_id, "annotation": f"{sample_id}.json", "image": image,
            "mask": mask_rel, "format": "labelme", "width": mask.shape[1],
            "height": mask.shape[0], "n_shapes": 2, "group": sample_id,
            "image_hash": content_hash((prepared / image).read_bytes()),
            "mask_hash": content_hash((prepared / mask_rel).read_bytes()),
            "key": content_hash(sample_id.encode()),
            **{pixel_column(c): int(counts[k]) for k, c in enumerate(classes)},
            IGNORE_COLUMN: int(counts[IGNORE])}


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV, sorted by id (as convert and split write their tables)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r["id"])
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def tiny_params(root: Path, **train: Any) -> dict[str, Any]:
    """params.yaml content for the tiny dataset under root (paths relative to root): a plan
    of 12 steps of 4 crops of 16 px, validated every 4 steps, on a 2-level U-Net of width 4."""
    section = {"patch": 16, "depth": 2, "base_width": 4, "steps": 12, "batch_size": 4,
               "val_every": 4, "lr": 0.01, "threads": 1, "seed": 0,
               "model_path": "models/model.pt", "checkpoint_path": "models/checkpoint.pt",
               "cache_dir": "cache", "log_dir": "reports/train", "plan_path": "reports/plan.json"}
    section.update(train)
    return {"classes": list(CLASSES),
            "convert": {"out_dir": str(root / "prepared"), "reports_dir": str(root / "reports")},
            "split": {"splits_path": str(root / "splits" / "splits.csv")},
            "train": {k: str(root / v) if k.endswith(("_path", "_dir")) else v
                      for k, v in section.items()}}


def tiny_plan(**overrides: Any) -> Plan:
    """A plan for the tiny dataset: its own size, 16 px patches, 4 crops per step."""
    values: dict[str, Any] = {
        "scale_mode": "absolute", "scale": 1.0, "long_side": 32, "patch": 16, "batch_size": 4,
        "steps": 12, "depth": 2, "base_width": 4, "fg_share": 0.33,
        "class_weights": (0.0, 1.0, 1.0), "lr": 0.01, "warmup_steps": 1, "ema_decay": 0.9,
        "val_every": 4}
    values.update(overrides)
    return Plan(**values)


def write_fingerprint(root: Path, manifest_csv: Path) -> None:
    """reports/data.json with the fingerprint of the dataset (what convert writes)."""
    manifest = read_manifest(manifest_csv, CLASSES)
    sizes, stats = [], []
    for row in manifest.rows:
        sizes.append((row.width, row.height))
        stats.append(object_stats(read_mask(manifest.root / row.mask), len(CLASSES)))
    pixels = dict(zip(CLASSES, manifest.pixel_counts().sum(axis=0).tolist(), strict=True))
    path = root / "reports" / "data.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": fingerprint(sizes, stats, pixels,
                                                           CLASSES).to_dict()}))
