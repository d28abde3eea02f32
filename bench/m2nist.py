"""Accuracy benchmark on real handwriting: M2NIST-style images out of scikit-learn's digits.

    .venv/bin/python bench/m2nist.py                       # the default pipeline on 2,000 images
    .venv/bin/python bench/m2nist.py --train 300 --val 100 --steps 200  # a quick look
    .venv/bin/python bench/m2nist.py --only-data --workdir /tmp/m2nist  # write the data only
    (bench/real.py runs it beside the real sets, against the old recipe)

The data: scikit-learn's bundled digits (1,797 real handwritten 8x8 digits, 0-16 grey levels)
are split BY SAMPLE first (80/20, stratified by digit, seeded), so the eval images are composed
only of digits never seen in training. Each digit is upscaled (bicubic) to 20-28 px and pasted
at a random place of a 64x84 image (M2NIST's size), one to three digits per image, never
overlapping. The annotation is what an annotator makes with Labelme: a polygon per digit traced
along its outline (the 40%-of-peak level of the upscaled digit, as pixel-edge outlines made
with shapely and simplified by half a pixel) and, for the holes of 0, 4, 6, 8 and 9, a polygon
labelled "background" drawn after it. 11 classes: background + "0".."9".

The run: in a temporary directory (outside any git repo) with its own params.yaml, the project's
stages run in order -- `segpipe convert`, `split`, `train`, `evaluate` -- with the unseen-digit
images as the fixed benchmark set (`split.benchmark`), so the figures printed are measured on
digits the model never saw: per-class IoU, mIoU, mIoU without background, and the wall time of
each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely
import yaml
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["background", *(str(d) for d in range(10))]
HEIGHT, WIDTH = 64, 84


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits  # bundled: no download

    digits = sk_load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(int)


def split_by_sample(labels: np.ndarray, val_fraction: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and val digits, stratified by digit, before any compositing."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_val = round(len(idx) * val_fraction)
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return np.array(sorted(train)), np.array(sorted(val))


def upscale(digit: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(digit, mode="F").resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(image), 0.0, 1.0)


def outline(mask: np.ndarray, dx: int, dy: int) -> list[tuple[list[tuple[float, float]], bool]]:
    """Polygons (points, is_hole) tracing a boolean mask, offset by (dx, dy), in Labelme's
    frame (pixel centres at integer coordinates): pixel-edge outlines, simplified."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return []
    boxes = shapely.box(cols - 0.5, rows - 0.5, cols + 0.5, rows + 0.5)
    shape = shapely.union_all(boxes).simplify(0.5, preserve_topology=True)
    polygons = list(shape.geoms) if isinstance(shape, MultiPolygon) else [shape]
    out = []
    for polygon in polygons:
        if not isinstance(polygon, Polygon) or polygon.area < 4:
            continue
        rings = [(polygon.exterior, False)] + [(r, True) for r in polygon.interiors
                                               if Polygon(r).area >= 2]
        for ring, hole in rings:
            # kept inside the image, as Labelme keeps clicks inside it
            points = [(round(min(max(x + dx, 0.0), WIDTH - 1.0), 2),
                       round(min(max(y + dy, 0.0), HEIGHT - 1.0), 2)) for x, y in ring.coords[:-1]]
            if len(points) >= 3:
                out.append((points, hole))
    return out


def compose(digits: np.ndarray, labels: np.ndarray, pool: np.ndarray, n_images: int,
            rng: np.random.Generator) -> list[tuple[np.ndarray, list[dict]]]:
    """n_images 64x84 grey images with 1-3 digits from `pool`, and their Labelme shapes."""
    out = []
    for _ in range(n_images):
        canvas = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
        taken = np.zeros((HEIGHT, WIDTH), dtype=bool)
        shapes: list[dict] = []
        for _ in range(int(rng.integers(1, 4))):
            index = int(rng.choice(pool))
            size = int(rng.integers(20, 29))
            digit = upscale(digits[index], size)
            for _attempt in range(20):
                y = int(rng.integers(0, HEIGHT - size + 1))
                x = int(rng.integers(0, WIDTH - size + 1))
                if not taken[y:y + size, x:x + size].any():
                    break
            else:
                continue  # no free place left: fewer digits in this image
            taken[y:y + size, x:x + size] = True
            canvas[y:y + size, x:x + size] = np.maximum(canvas[y:y + size, x:x + size], digit)
            mask = digit >= 0.4 * float(digit.max())
            for points, hole in outline(mask, x, y):
                shapes.append({"label": "background" if hole else str(labels[index]),
                               "points": [list(p) for p in points], "group_id": None,
                               "description": "", "shape_type": "polygon", "flags": {}})
        noise = rng.normal(0.0, 0.03, size=canvas.shape)
        pixels = np.clip(np.rint((canvas + noise) * 255), 0, 255).astype(np.uint8)
        out.append((pixels, shapes))
    return out


def write_dataset(raw: Path, n_train: int, n_val: int, seed: int) -> list[str]:
    """Write the Labelme files + PNGs; returns the ids of the unseen-digit (benchmark) images."""
    digits, labels = load_digits()
    train_pool, val_pool = split_by_sample(labels, 0.2, seed)
    rng = np.random.default_rng(seed)
    benchmark = []
    for part, pool, count in (("train", train_pool, n_train), ("unseen", val_pool, n_val)):
        for i, (pixels, shapes) in enumerate(compose(digits, labels, pool, count, rng)):
            name = f"{part}/{i:05d}"
            (raw / part).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(raw / f"{name}.png")
            doc = {"version": "5.4.1", "flags": {}, "shapes": shapes,
                   "imagePath": f"{i:05d}.png", "imageData": None,
                   "imageHeight": HEIGHT, "imageWidth": WIDTH}
            (raw / f"{name}.json").write_text(json.dumps(doc, indent=2))
            if part == "unseen":
                benchmark.append(name)
    return benchmark


def params(args: argparse.Namespace) -> dict:
    return {
        "classes": CLASSES,
        "convert": {"jobs": args.jobs},
        "split": {"val_fraction": 0.1, "benchmark": "benchmark.txt"},
        "train": {"steps": args.steps, "device": args.device, "threads": args.threads,
                  # digits are not symmetric: no flips or 90-degree rotations
                  "hflip": False, "vflip": False, "rot90": False},
        "evaluate": {"worst_k": 4, "device": args.device},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--val", type=int, default=400, help="unseen-digit (benchmark) images")
    parser.add_argument("--steps", default="auto", type=lambda v: v if v == "auto" else int(v),
                        help="optimiser steps (default: planned)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    parser.add_argument("--only-data", action="store_true", help="write the data, do not train")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="m2nist-"))
    if work.exists() and any(work.iterdir()):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    benchmark = write_dataset(work / "data" / "raw", args.train, args.val, args.seed)
    (work / "benchmark.txt").write_text("\n".join(benchmark) + "\n")
    (work / "params.yaml").write_text(yaml.safe_dump(params(args), sort_keys=False))
    times = {"data": time.perf_counter() - t0}
    print(f"m2nist: {args.train} train + {args.val} unseen-digit images in {work} "
          f"({times['data']:.1f} s)", flush=True)
    if args.only_data:
        return 0

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    segpipe = [sys.executable, "-m", "pipeline"]
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    for stage in ("convert", "split", "train", "evaluate"):
        t = time.perf_counter()
        done = subprocess.run([*segpipe, stage], cwd=work, env=env, check=False)
        times[stage] = time.perf_counter() - t
        if done.returncode != 0:
            print(f"m2nist: stage {stage} failed with exit {done.returncode}", file=sys.stderr)
            return done.returncode
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    bench = metrics.get("benchmark", metrics)
    print(f"\nper-class IoU on {bench['n_images']} images of unseen digits "
          f"(val: {metrics['n_images']} images of seen digits):")
    for name in CLASSES:
        iou = bench["iou"].get(name)
        print(f"  {name:<10} {'n/a' if iou is None else f'{iou:.4f}'}")
    print(f"mIoU {bench['miou']:.4f}   mIoU without background {bench['miou_fg']:.4f}   "
          f"(val mIoU {metrics['miou']:.4f})")
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
          + f"; total {sum(times.values()):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
