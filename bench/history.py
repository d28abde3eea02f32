"""How long `segpipe history` takes over many committed data versions, and `segpipe compare`
with its bootstrap.

Builds a scratch git repository with N commits, each a data version as the pipeline commits it
(reports/metrics.json with val and benchmark sections, reports/data.json, a growing
data/splits/splits.csv, reports/images.json), then times `segpipe history` over all of them
(the command as a user runs it, a fresh process: interpreter start included) and
`segpipe compare --base HEAD~1` (its bootstrap over the images included). Prints the figures.

    python bench/history.py                  # 50 revisions, 5 classes
    python bench/history.py --revisions 200 --classes 20 --images 500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENV = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
       "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
       "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env=ENV, check=True, capture_output=True)


def write_version(repo: Path, k: int, classes: list[str], n_images: int,
                  rng: np.random.Generator) -> None:
    """Data version k: 300 + 20k samples, the val set grows every 10 versions."""
    samples = 300 + 20 * k
    val_images = n_images + 5 * (k // 10)
    inter = rng.integers(50, 90, (val_images, len(classes)))
    union = inter + rng.integers(5, 20, (val_images, len(classes)))
    iou = {c: float(inter[:, i].sum() / union[:, i].sum()) for i, c in enumerate(classes)}
    fp = f"val{k // 10:04d}"
    section = {"miou": float(np.mean(list(iou.values()))), "miou_fg": None, "iou": iou,
               "n_images": val_images, "eval_fingerprint": fp}
    metrics = {**section, "benchmark": {**section, "eval_fingerprint": "bench0"}}
    reports = repo / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (reports / "data.json").write_text(json.dumps(
        {"files": {"seen": samples + 5, "converted": samples, "rejected": 5, "warnings": 3}}))
    rows = [{"id": f"s{i:05d}", "group": f"g{i // 3:05d}", "intersection": inter[i].tolist(),
             "union": union[i].tolist()} for i in range(val_images)]
    images = {"classes": classes, "val": {"eval_fingerprint": fp, "images": rows},
              "benchmark": {"eval_fingerprint": "bench0", "images": rows}}
    (reports / "images.json").write_text(json.dumps(images))
    splits = repo / "data" / "splits" / "splits.csv"
    splits.parent.mkdir(parents=True, exist_ok=True)
    splits.write_text("id,group,split,version\n" + "".join(
        f"s{i:05d},g{i // 3:05d},{'val' if i < val_images else 'train'},1\n"
        for i in range(samples)))


def timed(repo: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=repo, env=ENV,
                          capture_output=True, text=True, check=False)
    return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--revisions", type=int, default=50)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--images", type=int, default=55, help="val images of version 0")
    args = parser.parse_args()
    classes = ["background", *(f"class{i}" for i in range(1, args.classes))]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        git(repo, "init", "-q", "-b", "main")
        (repo / "params.yaml").write_text(f"classes: {json.dumps(classes)}\n")
        start = time.perf_counter()
        for k in range(args.revisions):
            write_version(repo, k, classes, args.images, rng)
            git(repo, "add", ".")
            git(repo, "commit", "-qm", f"data version {k}")
        print(f"scratch repo: {args.revisions} commits in {time.perf_counter() - start:.1f} s")
        seconds, done = timed(repo, "history", "--md", "history.md", "--plot", "history.svg")
        rows = len(done.stdout.splitlines()) - 1
        print(f"segpipe history: {rows} rows over {args.revisions} revisions in {seconds:.2f} s "
              f"(exit {done.returncode}; a fresh process, interpreter start included)")
        seconds, done = timed(repo, "--help")
        print(f"  of which starting segpipe (`segpipe --help`): {seconds:.2f} s")
        write_version(repo, args.revisions, classes, args.images, rng)
        seconds, done = timed(repo, "compare", "--base", "HEAD", "--allow-different-eval")
        print(f"segpipe compare --base HEAD (bootstrap, 2000 resamples): {seconds:.2f} s "
              f"(exit {done.returncode})")


if __name__ == "__main__":
    main()
