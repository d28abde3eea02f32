"""Accuracy and cost of the default pipeline on real annotation sets, against today's recipe.

    .venv/bin/python bench/real.py                         # every set, both recipes, seed 0
    .venv/bin/python bench/real.py --sets cvficus nuts --recipes auto --seeds 0 1 2
    .venv/bin/python bench/real.py --list

For each set (from ../shared/realdata, read in place, never copied; M2NIST-style digits are
generated, see bench/m2nist.py) the project's own stages run in a scratch directory under
bench/.work/real/: `segpipe convert` and `split` once, then `train` and `evaluate` per recipe
and seed. The recipes:

- auto:   params.yaml's defaults with only `classes` set: the plan comes from the data.
- legacy: the recipe before the plan existed: every image letterboxed into 128 px, 40 epochs
          (40 x floor(train images / 8) steps) of batch 8, fp32, no class-aware crops, no EMA,
          no hue or blur, colour jitter 0.1.
- tuned:  the hand-tuned params the issue reports for 12 MP photos: a 512 px letterbox,
          240 steps of batch 4, bf16, otherwise as legacy.

Printed per set and recipe: the plan, optimiser steps, wall and CPU minutes of train +
evaluate, per-class IoU and mIoU on the val split (and on the benchmark set where there is one),
and with several seeds the spread (max - min). A JSON of everything lands beside the scratch
directories (bench/.work/real/results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
WORK = ROOT / "bench" / ".work" / "real"


@dataclass(frozen=True)
class DataSet:
    name: str
    source: str  # folder under ../shared/realdata, or "m2nist" (generated)
    classes: tuple[str, ...]
    what: str
    params: dict = field(default_factory=dict)  # extra params (aliases, convert options)


SETS = {s.name: s for s in (
    DataSet("cvficus", "cvficus-sample", ("_background_", "seed", "branch"),
            "Labelme 3.16 polygons on 12 MP phone photos (seeds ~110 px, small branches)"),
    DataSet("nuts", "tony607-nuts-labelme", ("background", "date", "hazelnut", "fig"),
            "Labelme 3.16 polygons, 18 photos, imageData embedded"),
    DataSet("raccoon", "raccoon-voc", ("background", "raccoon"),
            "LabelImg Pascal VOC boxes drawn as masks, 200 web photos of mixed sizes"),
    DataSet("uav75", "uav75-crack-masks", ("background", "crack", "planking"),
            "existing RGBA colour masks of drone photos, cracks 1 px wide",
            {"convert": {"masks": [{"masks": "*_lab", "images": "*_img", "values": {
                "0,0,0": "background", "255,255,255": "crack", "204,204,204": "planking"}}]}}),
    DataSet("squirrels", "pylabel-squirrels-yolo", ("background", "Squirrel", "Nut"),
            "YOLOv5 boxes drawn as masks (11 CCTV frames, small nuts)"),
    DataSet("coco8", "coco8-yolo", (), "Ultralytics YOLO boxes drawn as masks, 8 COCO photos, "
            "80 classes declared (12 present)"),
    DataSet("m2nist", "m2nist", ("background", *(str(d) for d in range(10))),
            "M2NIST-style digits (scikit-learn's real handwriting), unseen digits as benchmark",
            {"split": {"val_fraction": 0.1, "benchmark": "benchmark.txt"},
             # digits are not symmetric: no flips or 90-degree rotations
             "train": {"hflip": False, "vflip": False, "rot90": False}}),
)}

LEGACY = {"long_side": 128, "patch": 128, "batch_size": 8, "fg_share": 0.0, "ema": 0.0,
          "hue": 0.0, "blur": 0.0, "jitter": 0.1, "amp": "off", "channels_last": "off"}
TUNED = {**LEGACY, "long_side": 512, "patch": 512, "batch_size": 4, "steps": 240,
         "amp": "bf16", "channels_last": "on"}
RECIPES = ("auto", "legacy", "tuned")


def prepare(ds: DataSet, work: Path, m2nist: tuple[int, int]) -> None:
    """Scratch dir with params.yaml, then convert and split (once per set)."""
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw"
    if ds.source == "m2nist":
        if not raw.is_dir():
            sys.path.insert(0, str(ROOT / "bench"))
            from m2nist import write_dataset

            ids = write_dataset(raw, *m2nist, seed=0)
            (work / "benchmark.txt").write_text("\n".join(ids) + "\n")
    else:
        raw = REALDATA / ds.source
        if not raw.is_dir():
            raise SystemExit(f"{raw}: not found (the real data lives in ../shared/realdata)")
    classes = list(ds.classes) or coco_classes(raw)
    base = {"classes": classes,
            "convert": {"raw_dir": str(raw), "max_error_fraction": 1.0,
                        **ds.params.get("convert", {})},
            "split": {"val_fraction": 0.2, **ds.params.get("split", {})}}
    (work / "params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    if not (work / "data" / "splits" / "splits.csv").is_file():
        for stage in ("convert", "split"):
            run([stage], work)


def coco_classes(raw: Path) -> list[str]:
    """background + data.yaml's names, in class-id order."""
    names = yaml.safe_load((raw / "data.yaml").read_text(encoding="utf-8"))["names"]
    return ["background", *(names[i] for i in sorted(names))]


def recipe_params(ds: DataSet, work: Path, recipe: str, seed: int) -> Path:
    """The params of one run: the set's, the recipe's, and paths of its own."""
    params = yaml.safe_load((work / "params.yaml").read_text())
    tag = f"{recipe}-s{seed}"
    out = work / tag
    train = {**ds.params.get("train", {}), "seed": seed,
             "model_path": f"{tag}/model.pt", "checkpoint_path": f"{tag}/checkpoint.pt",
             "cache_dir": f"cache-{recipe}", "log_dir": f"{tag}/train",
             "plan_path": f"{tag}/plan.json"}
    if recipe == "legacy":
        n_train = sum(1 for line in (work / "data/splits/splits.csv").read_text().splitlines()
                      if ",train," in line)
        # the old loader dropped the last partial batch (and refused fewer than 8 images)
        train.update(LEGACY, steps=40 * max(1, n_train // 8))
    elif recipe == "tuned":
        train.update(TUNED)
    params["train"] = train
    params["evaluate"] = {"metrics_path": f"{tag}/metrics.json", "out_dir": f"{tag}/eval",
                          "worst_k": 2}
    path = out / "params.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run(args: list[str], cwd: Path) -> float:
    """`segpipe ARGS` in cwd; returns its CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)
    (cwd / f"{args[0]}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"segpipe {' '.join(args)} failed in {cwd}:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def one_run(ds: DataSet, work: Path, recipe: str, seed: int) -> dict:
    params = recipe_params(ds, work, recipe, seed)
    start, cpu = time.perf_counter(), 0.0
    for stage in ("train", "evaluate"):
        cpu += run([stage, "--params", str(params)], work)
    wall = time.perf_counter() - start
    tag = params.parent
    metrics = json.loads((tag / "metrics.json").read_text())
    plan = json.loads((tag / "plan.json").read_text())
    return {"set": ds.name, "recipe": recipe, "seed": seed, "wall_min": wall / 60,
            "cpu_min": cpu / 60, "plan": plan["plan"], "amp": plan["amp"],
            "val": _scores(metrics), "benchmark": _scores(metrics.get("benchmark"))}


def _scores(m: dict | None) -> dict | None:
    if not m:
        return None
    return {"miou": m["miou"], "iou": m["iou"], "n_images": m["n_images"]}


def show(result: dict) -> None:
    p = result["plan"]
    mode = (f"long side {p['long_side']}" if p["scale_mode"] == "relative"
            else f"x{p['scale']:.3g}")
    print(f"  {result['recipe']:<7} seed {result['seed']}: scale {mode}, patch {p['patch']}, "
          f"batch {p['batch_size']}, {p['steps']} steps, "
          f"{'bf16' if result['amp'] else 'fp32'}; {result['wall_min']:.1f} wall-min, "
          f"{result['cpu_min']:.1f} CPU-min")
    for split in ("val", "benchmark"):
        s = result[split]
        if s:
            ious = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                             for k, v in s["iou"].items())
            print(f"    {split} ({s['n_images']} images): mIoU {s['miou']:.4f}  [{ious}]")


def spread(results: list[dict]) -> None:
    """Max - min over seeds of mIoU and of every class IoU, per set, recipe and split."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["set"], r["recipe"]), []).append(r)
    for (name, recipe), runs in groups.items():
        if len(runs) < 2:
            continue
        for split in ("val", "benchmark"):
            if not runs[0][split]:
                continue
            miou = [r[split]["miou"] for r in runs]
            per_class = {c: [r[split]["iou"][c] for r in runs if r[split]["iou"][c] is not None]
                         for c in runs[0][split]["iou"]}
            worst = max(((max(v) - min(v)), c) for c, v in per_class.items() if v)
            print(f"  spread over {len(runs)} seeds, {name} {recipe} {split}: mIoU "
                  f"{max(miou) - min(miou):.4f} (from {min(miou):.4f} to {max(miou):.4f}); "
                  f"largest class spread {worst[0]:.4f} ({worst[1]})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--recipes", nargs="+", default=["auto", "legacy"], choices=RECIPES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--m2nist", nargs=2, type=int, default=(1000, 200),
                        metavar=("TRAIN", "UNSEEN"), help="M2NIST-style images to generate")
    parser.add_argument("--list", action="store_true", help="list the sets and exit")
    args = parser.parse_args()
    if args.list:
        for ds in SETS.values():
            print(f"{ds.name:<10} {ds.what}")
        return 0
    results = []
    for name in args.sets:
        ds = SETS[name]
        work = WORK / name
        print(f"{name}: {ds.what}", flush=True)
        prepare(ds, work, tuple(args.m2nist))
        for recipe in args.recipes:
            for seed in args.seeds:
                results.append(one_run(ds, work, recipe, seed))
                show(results[-1])
                sys.stdout.flush()
    spread(results)
    (WORK / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
