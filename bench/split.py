"""Benchmark the split stage against iterative-stratification; prints figures.

    .venv/bin/python bench/split.py [--n 100000] [--classes 20]

A synthetic manifest of N samples (frames of videos, `v000123_f004`) with a long-tailed class
distribution; times a full `segpipe split` (the stage: read the manifest, split, write
splits.csv + report) and an incremental one after +1% new samples (30% of them new frames of
known videos), both without groups (each sample its own group: the setting
iterative-stratification also has) and with `group_pattern` (frames of a video together).
Reports the worst per-class deviation of the val image share from val_fraction and the share of
old samples that move when the 1% arrive, next to iterative-stratification's
MultilabelStratifiedShuffleSplit on the same labels (re-split with the same seed after growth).

iterative-stratification is never a project dependency: it runs in its own venv,
    python3 -m venv bench/.work/venv-iterstrat
    bench/.work/venv-iterstrat/bin/pip install iterative-stratification
and is skipped (with that hint) when that venv is absent. Scratch files go to bench/.work/split.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.split import run_split

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "split"
ITERSTRAT_PY = ROOT / "bench" / ".work" / "venv-iterstrat" / "bin" / "python"
VAL_FRACTION = 0.2
PATTERN = r"^(?P<group>v\d+)_"

ITERSTRAT_SCRIPT = """
import json, sys, time
import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit
out = {}
for name in ("base", "grown"):
    y = np.load(sys.argv[1] + f"/y_{name}.npy")
    start = time.perf_counter()
    split = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=float(sys.argv[2]),
                                             random_state=0)
    _, test = next(split.split(np.zeros(len(y)), y))
    out[name] = time.perf_counter() - start
    val = np.zeros(len(y), dtype=bool)
    val[test] = True
    np.save(sys.argv[1] + f"/val_{name}.npy", val)
print(json.dumps(out))
"""


def synthetic(n: int, n_classes: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(base manifest of n samples, grown manifest with +1%), long-tailed classes.

    A video has a class set drawn from the long-tailed prior; each frame shows each of its
    video's classes with p=0.8 and any class with a tenth of the prior (so frames of one video
    look alike, as they do)."""
    rng = np.random.default_rng(seed)
    prior = 0.5 * np.exp(-0.33 * np.arange(n_classes - 1))  # 0.5 ... ~0.001
    extra = n // 100
    sizes = rng.geometric(1 / 4, size=n)  # frames per video, mean 4
    video = np.repeat(np.arange(len(sizes)), sizes)[:n]
    n_videos = int(video[-1]) + 1
    known = rng.integers(0, n_videos, size=int(extra * 0.3))  # new frames of known videos
    new_sizes = rng.geometric(1 / 4, size=extra)
    new = n_videos + np.repeat(np.arange(extra), new_sizes)[:extra - len(known)]
    video = np.concatenate([video, known, new])
    total = len(video)
    frame = pd.Series(video).groupby(video).cumcount().to_numpy()
    video_has = rng.random((int(video.max()) + 1, n_classes - 1)) < prior
    present = ((video_has[video] & (rng.random((total, n_classes - 1)) < 0.8))
               | (rng.random((total, n_classes - 1)) < prior / 10))
    pixels = np.where(present, rng.lognormal(7, 1.5, size=present.shape).astype(np.int64) + 1, 0)
    background = np.maximum(200_000 - pixels.sum(axis=1), 0)
    ids = [f"v{v:06d}_f{f:03d}" for v, f in zip(video.tolist(), frame.tolist(), strict=True)]
    table = pd.DataFrame({"id": ids, "group": ids, "px.background": background,
                          **{f"px.c{c:02d}": pixels[:, c - 1] for c in range(1, n_classes)}})
    return table.iloc[:n].sort_values("id"), table.sort_values("id")


def write_params(path: Path, n_classes: int, group_pattern: str | None) -> None:
    classes = ["background", *(f"c{c:02d}" for c in range(1, n_classes))]
    pattern = f"'{group_pattern}'" if group_pattern else "null"
    path.write_text(f"classes: {classes}\nconvert:\n  out_dir: prep\nsplit:\n"
                    f"  splits_path: splits.csv\n  report_path: split.json\n"
                    f"  val_fraction: {VAL_FRACTION}\n  group_pattern: {pattern}\n",
                    encoding="utf-8")


def deviations(present: np.ndarray, val: np.ndarray) -> tuple[float, float, float]:
    """Over the foreground classes: the largest and the mean |val image share -
    val_fraction|, and the largest |val images - val_fraction * images| (in images)."""
    in_val = (present & val[:, None]).sum(axis=0)
    total = present.sum(axis=0)
    share = np.abs(in_val / total - VAL_FRACTION)
    off = np.abs(in_val - VAL_FRACTION * total)
    return float(share.max()), float(share.mean()), float(off.max())


def straddling(ids: pd.Series, val: np.ndarray) -> int:
    videos = ids.str.slice(0, 7)
    return int((pd.Series(val).groupby(videos.to_numpy()).nunique() > 1).sum())


def run_ours(base: pd.DataFrame, grown: pd.DataFrame, n_classes: int, pattern: str | None,
             label: str) -> dict[str, float]:
    work = WORK / label
    (work / "prep").mkdir(parents=True, exist_ok=True)
    (work / "splits.csv").unlink(missing_ok=True)
    write_params(work / "params.yaml", n_classes, pattern)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        base.to_csv("prep/manifest.csv", index=False)
        start = time.perf_counter()
        first = run_split("params.yaml")
        full_s = time.perf_counter() - start
        grown.to_csv("prep/manifest.csv", index=False)
        start = time.perf_counter()
        second = run_split("params.yaml")
        incr_s = time.perf_counter() - start
    finally:
        os.chdir(cwd)
    old = pd.Series(first.splits, index=first.ids)
    new = pd.Series(second.splits, index=second.ids)
    dev = deviations(base.filter(like="px.c").to_numpy() > 0,
                     (old[base["id"]] == "val").to_numpy())
    dev_grown = deviations(grown.filter(like="px.c").to_numpy() > 0,
                           (new[grown["id"]] == "val").to_numpy())
    return {"full_s": full_s, "incr_s": incr_s, "dev": dev, "dev_grown": dev_grown,
            "moved": float((new[old.index] != old).mean()),
            "straddling": straddling(grown["id"], (new[grown["id"]] == "val").to_numpy())}


def run_iterstrat(base: pd.DataFrame, grown: pd.DataFrame) -> dict[str, float] | None:
    if not ITERSTRAT_PY.exists():
        print("iterative-stratification: skipped (not installed). To compare, run\n"
              "  python3 -m venv bench/.work/venv-iterstrat && "
              "bench/.work/venv-iterstrat/bin/pip install iterative-stratification")
        return None
    WORK.mkdir(parents=True, exist_ok=True)
    y_base = (base.filter(like="px.c").to_numpy() > 0).astype(np.int8)
    y_grown = (grown.filter(like="px.c").to_numpy() > 0).astype(np.int8)
    np.save(WORK / "y_base.npy", y_base)
    np.save(WORK / "y_grown.npy", y_grown)
    done = subprocess.run([str(ITERSTRAT_PY), "-c", ITERSTRAT_SCRIPT, str(WORK),
                           str(VAL_FRACTION)], capture_output=True, text=True, check=True)
    seconds = json.loads(done.stdout)
    val_base = np.load(WORK / "val_base.npy")
    val_grown = np.load(WORK / "val_grown.npy")
    old = pd.Series(val_base, index=base["id"].to_numpy())
    new = pd.Series(val_grown, index=grown["id"].to_numpy())
    return {"full_s": seconds["base"], "incr_s": seconds["grown"],
            "dev": deviations(y_base > 0, val_base),
            "dev_grown": deviations(y_grown > 0, val_grown),
            "moved": float((new[old.index] != old).mean()),
            "straddling": straddling(grown["id"], new[grown["id"]].to_numpy())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="samples before growth")
    parser.add_argument("--classes", type=int, default=20, help="classes incl. background")
    args = parser.parse_args()
    base, grown = synthetic(args.n, args.classes)
    present = base.filter(like="px.c").to_numpy() > 0
    per_class = present.sum(axis=0)
    print(f"synthetic manifest: {len(base)} samples (+{len(grown) - len(base)} = +1%), "
          f"{args.classes} classes, images per foreground class {per_class.max()} .. "
          f"{per_class.min()}, {base['id'].str.slice(0, 7).nunique()} videos")
    rows = {"ours, no groups": run_ours(base, grown, args.classes, None, "flat"),
            "ours, group_pattern": run_ours(base, grown, args.classes, PATTERN, "grouped")}
    theirs = run_iterstrat(base, grown)
    if theirs is not None:
        rows["iterstrat MSSS (no groups)"] = theirs
    print(f"\n{'method':27} {'full s':>6} {'+1% s':>6} {'worst dev':>9} {'mean dev':>8} "
          f"{'worst img':>9} {'+1%: worst':>10} {'mean':>7} {'img':>5} {'old moved':>9} "
          f"{'videos split':>12}")
    for name, r in rows.items():
        (w, m, i), (gw, gm, gi) = r["dev"], r["dev_grown"]
        print(f"{name:27} {r['full_s']:6.2f} {r['incr_s']:6.2f} {w:9.4f} {m:8.4f} {i:9.1f} "
              f"{gw:10.4f} {gm:7.4f} {gi:5.1f} {r['moved']:9.2%} {r['straddling']:12d}")
    print("\nours: time = the whole stage (read manifest, split, write splits.csv + report); "
          "iterstrat: the split call only.\nworst/mean dev = max/mean over the foreground "
          f"classes of |val image share - {VAL_FRACTION}|; worst img = max |val images - "
          f"{VAL_FRACTION} x images| of a class;\n+1%: the same after growth (ours: sticky "
          "incremental run; iterstrat: re-split with the same seed); videos split = videos with "
          "frames in both splits.")


if __name__ == "__main__":
    main()
