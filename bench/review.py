"""Does `segpipe review` find planted annotation mistakes? Against cleanlab, on the same
out-of-fold probabilities.

    .venv/bin/python bench/review.py                   # the sample, then raccoon-voc
    .venv/bin/python bench/review.py --sets sample --share 0.08 --seed 1
    .venv/bin/python bench/review.py --reuse   # same planted files and fold models, scored again

For each set, in a scratch directory under bench/.work/review/: the raw files are copied (the
sample is generated), mistakes are planted in `--share` of the annotation files — a shape
deleted, a label swapped to another class, a shape shifted by a fifth of its size, a shape
shrunk or grown by a fifth — and recorded; then `segpipe convert`, `split` and `review` run.
Printed, per set: recall and precision of the planted files among the top k of the stage's
file ranking (images.csv; k = files planted), the average precision (AUPRC) of the ranking, the
share of planted shapes whose suspect names the right file and shape (for a deleted shape: a
*missing* suspect on its place), and how many planted and clean files have a row in
review.csv. The same figures for cleanlab's `segmentation.rank.get_label_quality_scores`
(softmin) on the very probabilities review computed. cleanlab is installed into
bench/.work/cleanlab only (not a project dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
WORK = ROOT / "bench" / ".work" / "review"
CLEANLAB = ROOT / "bench" / ".work" / "cleanlab"
sys.path.insert(0, str(ROOT))

KINDS = ("delete", "swap", "shift", "shrink", "grow")


@dataclass(frozen=True)
class Planted:
    file: str  # raw-relative annotation path
    shape: int  # index of the shape in the file (for a deletion: the index it had)
    kind: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the shape as it was


def _box(points: list[list[float]], kind: str) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if kind == "circle":
        (cx, cy), (px, py) = points
        r = ((cx - px) ** 2 + (cy - py) ** 2) ** 0.5
        return cx - r, cy - r, cx + r, cy + r
    return min(xs), min(ys), max(xs), max(ys)


def _moved(points: list[list[float]], kind: str, how: str) -> list[list[float]]:
    x0, y0, x1, y1 = _box(points, kind)
    cx, cy, size = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)
    if how == "shift":
        return [[x + size / 5, y + size / 10] for x, y in points]
    factor = 0.8 if how == "shrink" else 1.2
    return [[cx + (x - cx) * factor, cy + (y - cy) * factor] for x, y in points]


def plant_labelme(path: Path, rel: str, how: str, classes: list[str], rng: random.Random
                  ) -> Planted | None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    usable = [i for i, s in enumerate(doc["shapes"]) if s.get("shape_type", "polygon") in
              ("polygon", "rectangle", "circle") and s["label"] in classes[1:]]
    if not usable:
        return None
    i = rng.choice(usable)
    shape = doc["shapes"][i]
    box = _box(shape["points"], shape.get("shape_type", "polygon"))
    if how == "delete":
        del doc["shapes"][i]
    elif how == "swap":
        shape["label"] = rng.choice([c for c in classes[1:] if c != shape["label"]])
    else:
        shape["points"] = _moved(shape["points"], shape.get("shape_type", "polygon"), how)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return Planted(rel, i, how, box)


def plant_voc(path: Path, rel: str, how: str, classes: list[str], rng: random.Random
              ) -> Planted | None:
    tree = ElementTree.parse(path)
    objects = tree.getroot().findall("object")
    if not objects:
        return None
    i = rng.randrange(len(objects))
    obj = objects[i]
    bb = obj.find("bndbox")
    corners = [[float(bb.find(k).text) for k in ("xmin", "ymin")],
               [float(bb.find(k).text) for k in ("xmax", "ymax")]]
    box = _box(corners, "rectangle")
    if how == "delete":
        tree.getroot().remove(obj)
    elif how == "swap":
        obj.find("name").text = rng.choice([c for c in classes[1:] if c != obj.find("name").text])
    else:
        (a, b), (c, d) = _moved(corners, "rectangle", how)
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (a, b, c, d), strict=True):
            bb.find(key).text = str(max(1, round(value)))
    tree.write(path)
    return Planted(rel, i, how, box)


def plant(raw: Path, share: float, classes: list[str], seed: int) -> list[Planted]:
    rng = random.Random(seed)
    files = sorted(p for p in raw.rglob("*") if p.suffix in (".json", ".xml"))
    rng.shuffle(files)
    planted = []
    kinds = [k for k in KINDS if len(classes) > 2 or k != "swap"]
    for path in files:
        if len(planted) >= round(share * len(files)):
            break
        rel = path.relative_to(raw).as_posix()
        if path.with_suffix(".json" if path.suffix == ".xml" else ".xml").exists():
            continue  # one sample from two files: keep the bookkeeping simple
        how = kinds[len(planted) % len(kinds)]
        reader = plant_labelme if path.suffix == ".json" else plant_voc
        found = reader(path, rel, how, classes, rng)
        if found is not None:
            planted.append(found)
    return planted


def ensure_cleanlab() -> None:
    if not (CLEANLAB / "cleanlab").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(CLEANLAB), "cleanlab", "termcolor"], check=True)
    sys.path.insert(0, str(CLEANLAB))


def average_precision(ranked: list[str], positives: set[str]) -> float:
    hits, total = 0, 0.0
    for i, item in enumerate(ranked, start=1):
        if item in positives:
            hits += 1
            total += hits / i
    return total / max(1, len(positives))


def top_k(ranked: list[str], positives: set[str]) -> tuple[float, float]:
    k = len(positives)
    found = len(set(ranked[:k]) & positives)
    return found / max(1, k), found / max(1, min(k, len(ranked)))


def prepare(work: Path, name: str, share: float, seed: int) -> list[Planted]:
    """A fresh scratch set with mistakes planted, converted and split."""
    if work.exists():
        shutil.rmtree(work)
    raw = work / "raw"
    if name == "sample":
        from pipeline.tools import demo

        demo.write(raw, demo.build(n=300, seed=0, defects=False))
        classes = list(demo.CLASSES)
        params = {"classes": classes, "aliases": {"tri": "triangle", "box": "square"},
                  "split": {"group_pattern": r"(?P<group>scene\d+)_"}}
    else:
        shutil.copytree(REALDATA / "raccoon-voc", raw, ignore=shutil.ignore_patterns("*.csv"))
        classes = ["background", "raccoon"]
        params = {"classes": classes}
    planted = plant(raw, share, classes, seed)
    params["convert"] = {"raw_dir": "raw", "max_error_fraction": 1.0}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1"}
    for stage in ("convert", "split"):
        subprocess.run([sys.executable, "-m", "pipeline", stage], cwd=work, env=env, check=True,
                       capture_output=True)
    return planted


def run(name: str, share: float, seed: int, reuse: bool) -> dict:
    from pipeline.learn import review
    from pipeline.params import load_params

    work = WORK / name
    record = work / "planted.json"
    if reuse and record.is_file() and json.loads(record.read_text())["args"] == [share, seed]:
        planted = [Planted(p["file"], p["shape"], p["kind"], tuple(p["box"]))
                   for p in json.loads(record.read_text())["planted"]]
    else:
        planted = prepare(work, name, share, seed)
        record.write_text(json.dumps({"args": [share, seed],
                                      "planted": [p.__dict__ for p in planted]}))
    probabilities: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    os.chdir(work)
    results = review.run_review(load_params("params.yaml"), progress=False,
                                on_prediction=lambda row, p, m: probabilities.__setitem__(
                                    row.id, (p.astype(np.float16), m)))
    suspects = review.ranked(results)
    positives = {p.file.rpartition(".")[0] for p in planted}  # sample ids

    # ours: the stage's own file ranking (reports/review/images.csv)
    ours = [r.row.id for r in review.ranked_images(results)]
    listed = {s.id for s in suspects}  # files with a row in review.csv
    # cleanlab: the softmin image score on the same probabilities (lower = worse); it has no
    # ignore label: ignore pixels count as background for it
    ensure_cleanlab()
    from cleanlab.segmentation.rank import get_label_quality_scores

    theirs_score = {}
    for sample_id, (probs, mask) in probabilities.items():
        labels = np.where(mask == 255, 0, mask)[None].astype(np.int64)
        score, _ = get_label_quality_scores(labels, probs[None].astype(np.float32),
                                            method="softmin", verbose=False)
        theirs_score[sample_id] = float(score[0])
    theirs = sorted(theirs_score, key=lambda f: (theirs_score[f], f))

    named = 0
    for p in planted:
        for s in suspects:
            if s.annotation != p.file:
                continue
            if p.kind == "delete":
                x0, y0, x1, y1 = s.box
                inside = not (x1 < p.box[0] or x0 > p.box[2] or y1 < p.box[1] or y0 > p.box[3])
                if s.kind == "missing" and inside:
                    named += 1
                    break
            elif s.shape == p.shape:
                named += 1
                break
    out = {"set": name, "files": len(ours), "planted": len(planted),
           "ours": {"recall_at_k": top_k(ours, positives)[0],
                    "precision_at_k": top_k(ours, positives)[1],
                    "auprc": average_precision(ours, positives),
                    "named_right_shape": named / max(1, len(planted)),
                    "planted_files_in_review_csv": len(listed & positives) / max(1, len(positives)),
                    "clean_files_in_review_csv": len(listed - positives)},
           "cleanlab": {"recall_at_k": top_k(theirs, positives)[0],
                        "precision_at_k": top_k(theirs, positives)[1],
                        "auprc": average_precision(theirs, positives)},
           "by_kind": {k: sum(p.kind == k for p in planted) for k in KINDS}}
    os.chdir(ROOT)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["sample", "raccoon"],
                        choices=["sample", "raccoon"])
    parser.add_argument("--share", type=float, default=0.08, help="share of files planted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true",
                        help="keep a previous run's planted set and fold models (score again)")
    args = parser.parse_args()
    for name in args.sets:
        result = run(name, args.share, args.seed, args.reuse)
        print(json.dumps(result, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
