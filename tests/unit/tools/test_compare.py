"""`segpipe compare`: the CI gate, run against real git repositories made in tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import Run, segpipe

from pipeline.params import GateParams
from pipeline.tools import compare as cmp

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
PARAMS = "classes: [background, circle, square]\ngate:\n  max_drop: 0.02\n  max_class_drop: 0.05\n"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, env=GIT_ENV, capture_output=True,
                          text=True, check=True)
    return done.stdout


def metrics(miou: float, fg: float, iou: dict[str, float | None], fp: str = "e1",
            n: int = 20, **extra: object) -> dict[str, object]:
    return {"miou": miou, "miou_fg": fg, "aacc": 0.95, "iou": iou, "n_images": n,
            "eval_fingerprint": fp, "data_fingerprint": "d", "split": "val", **extra}


def data(seen: int, converted: int, rejected: int, warnings: int) -> dict[str, object]:
    return {"files": {"seen": seen, "converted": converted, "rejected": rejected,
                      "warnings": warnings}, "classes": {}}


def splits(rows: dict[str, str]) -> str:
    return "id,group,split\n" + "".join(f"{i},{i},{s}\n" for i, s in sorted(rows.items()))


def write(repo: Path, m: dict | None, d: dict | None, s: dict[str, str] | None) -> None:
    for rel, text in (("reports/metrics.json", m and json.dumps(m)),
                      ("reports/data.json", d and json.dumps(d)),
                      ("data/splits/splits.csv", s and splits(s))):
        path = repo / rel
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


BASE_SPLITS = {"a1": "train", "a2": "train", "a3": "val", "b1": "train", "b2": "val"}
BASE = metrics(0.9000, 0.8600, {"background": 0.98, "circle": 0.90, "square": 0.82})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repo whose HEAD commits a base run (metrics, data.json, splits.csv)."""
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "params.yaml").write_text(PARAMS)
    write(tmp_path, BASE, data(7, 5, 2, 3), BASE_SPLITS)
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "base run")
    return tmp_path


def run(repo: Path, *args: str) -> Run:
    return segpipe("compare", *args, cwd=repo)


def test_improvement_with_new_data_passes_with_the_full_table(repo: Path) -> None:
    new_splits = {**BASE_SPLITS, "c1": "train", "c2": "val"}
    del new_splits["b1"]
    write(repo, metrics(0.9150, 0.8700, {"background": 0.985, "circle": 0.92, "square": 0.81}),
          data(8, 6, 2, 4), new_splits)
    result = run(repo, "--base", "HEAD")
    head = git(repo, "rev-parse", "--short", "HEAD").strip()
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"""compare HEAD ({head}) -> working tree; eval set: val (same images)

metric                   base       new     delta
mIoU                   0.9000    0.9150   +0.0150
mIoU fg                0.8600    0.8700   +0.0100
IoU background         0.9800    0.9850   +0.0050
IoU circle             0.9000    0.9200   +0.0200
IoU square             0.8200    0.8100   -0.0100
eval images                20        20        +0

data                     base       new     delta
samples                     5         6        +1
samples added                         2
samples removed                       1
samples moved split                   0
samples in train            3         3        +0
samples in val              2         3        +1
files seen                  7         8        +1
files converted             5         6        +1
files rejected              2         2        +0
files warnings              3         4        +1

PASS (gate: mIoU may drop 0.02, a class 0.05)
"""


def test_a_class_that_drops_too_much_fails_and_is_named(repo: Path) -> None:
    write(repo, metrics(0.8900, 0.8450, {"background": 0.99, "circle": 0.84, "square": 0.85}),
          data(7, 5, 2, 3), BASE_SPLITS)
    result = run(repo, "--base", "HEAD")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        "FAIL: IoU circle dropped 0.0600 > gate.max_class_drop 0.05 "
        "(gate: mIoU may drop 0.02, a class 0.05)")


def test_an_miou_drop_fails_and_a_drop_equal_to_the_limit_passes(repo: Path) -> None:
    write(repo, metrics(0.8790, 0.8400, {"background": 0.97, "circle": 0.87, "square": 0.79}),
          data(7, 5, 2, 3), BASE_SPLITS)
    result = run(repo, "--base", "HEAD")
    assert result.returncode == 1
    assert "FAIL: mIoU dropped 0.0210 > gate.max_drop 0.02" in result.stdout
    write(repo, metrics(0.8800, 0.8400, {"background": 0.97, "circle": 0.85, "square": 0.79}),
          data(7, 5, 2, 3), BASE_SPLITS)
    assert run(repo, "--base", "HEAD").returncode == 0  # 0.02 and 0.05: exactly the limits


def test_different_eval_sets_exit_2_unless_allowed(repo: Path) -> None:
    write(repo, metrics(0.9100, 0.8700, {"background": 0.98, "circle": 0.91, "square": 0.83},
                        fp="e2", n=24), data(9, 7, 2, 3), {**BASE_SPLITS, "c1": "val"})
    result = run(repo, "--base", "HEAD")
    assert result.returncode == 2
    assert "eval set: val (DIFFERENT images)" in result.stdout
    assert "note: eval sets differ: e1 -> e2 (20 -> 24 images)" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("DIFFERENT EVAL SETS:")
    allowed = run(repo, "--base", "HEAD", "--allow-different-eval")
    assert allowed.returncode == 0
    assert allowed.stdout.splitlines()[-1] == "PASS (gate: mIoU may drop 0.02, a class 0.05)"


def test_the_benchmark_set_is_compared_when_both_runs_have_one(repo: Path) -> None:
    bench = metrics(0.80, 0.75, {"background": 0.95, "circle": 0.80, "square": 0.70}, fp="b1")
    write(repo, {**BASE, "benchmark": bench}, data(7, 5, 2, 3), BASE_SPLITS)
    git(repo, "commit", "-qam", "with benchmark")
    # val grew (other fingerprint) but the benchmark set is the same images: comparable
    worse = metrics(0.80, 0.75, {"background": 0.95, "circle": 0.74, "square": 0.71}, fp="b1")
    write(repo, {**metrics(0.95, 0.9, {"background": 0.99, "circle": 0.95, "square": 0.9},
                           fp="e9"), "benchmark": worse}, data(7, 5, 2, 3), BASE_SPLITS)
    result = run(repo, "--base", "HEAD")
    assert result.returncode == 1
    assert "eval set: benchmark (same images)" in result.stdout
    assert "FAIL: IoU circle dropped 0.0600" in result.stdout
    on_val = run(repo, "--base", "HEAD", "--on", "val")
    assert on_val.returncode == 2


def test_missing_metrics_exit_3_and_say_which(repo: Path) -> None:
    (repo / "reports/metrics.json").unlink()
    result = run(repo, "--base", "HEAD")
    assert result.returncode == 3
    assert result.stderr == ("error: reports/metrics.json is missing in the working tree: run "
                             "the pipeline (`dvc repro`) and commit its metrics\n")
    assert result.stdout == ""
    write(repo, BASE, data(7, 5, 2, 3), BASE_SPLITS)
    git(repo, "rm", "-q", "--cached", "reports/data.json")
    git(repo, "commit", "-qm", "drop data.json")
    result = run(repo, "--base", "HEAD", "--md", "summary.md")
    assert result.returncode == 3
    assert result.stderr.startswith("error: reports/data.json is missing at HEAD:")
    assert (repo / "summary.md").read_text().startswith("### ⚠️ segpipe compare: no verdict")
    unknown = run(repo, "--base", "origin/main")
    assert unknown.returncode == 3
    assert "git revision 'origin/main': no such commit here" in unknown.stderr


def test_markdown_is_the_same_table(repo: Path) -> None:
    write(repo, metrics(0.8900, 0.8450, {"background": 0.99, "circle": 0.84, "square": 0.85}),
          data(7, 5, 2, 3), {**BASE_SPLITS, "a3": "train"})
    result = run(repo, "--base", "HEAD", "--md", "out/summary.md")
    assert result.returncode == 1
    md = (repo / "out/summary.md").read_text()
    head = git(repo, "rev-parse", "--short", "HEAD").strip()
    assert md == f"""### ❌ segpipe compare: `HEAD ({head})` → working tree

Eval set: **val** (same images)

| metric | base | new | Δ |
|---|---:|---:|---:|
| mIoU | 0.9000 | 0.8900 | -0.0100 |
| mIoU fg | 0.8600 | 0.8450 | -0.0150 |
| IoU background | 0.9800 | 0.9900 | +0.0100 |
| IoU circle | 0.9000 | 0.8400 | -0.0600 |
| IoU square | 0.8200 | 0.8500 | +0.0300 |
| eval images | 20 | 20 | +0 |

| data | base | new | Δ |
|---|---:|---:|---:|
| samples | 5 | 5 | +0 |
| samples added |  | 0 |  |
| samples removed |  | 0 |  |
| samples moved split |  | 1 |  |
| samples in train | 3 | 4 | +1 |
| samples in val | 2 | 1 | -1 |
| files seen | 7 | 7 | +0 |
| files converted | 5 | 5 | +0 |
| files rejected | 2 | 2 | +0 |
| files warnings | 3 | 3 | +0 |

**FAIL: IoU circle dropped 0.0600 > gate.max_class_drop 0.05 (gate: mIoU may drop 0.02, \
a class 0.05)**
"""


def test_null_ious_and_missing_splits_are_shown_not_gated() -> None:
    base = cmp.Snapshot("b", metrics(0.9, 0.85, {"background": 0.98, "circle": 0.9,
                                                 "square": None}), data(3, 3, 0, 0), None)
    new = cmp.Snapshot("n", metrics(0.9, 0.85, {"background": 0.98, "circle": None,
                                                "square": 0.7}), data(3, 3, 0, 0), None)
    result = cmp.compare(base, new, GateParams())
    assert result.exit_code == 0
    rows = {r.name: cmp._cells(r) for r in result.metric_rows}
    assert rows["IoU circle"] == ("IoU circle", "0.9000", "n/a", "n/a")
    assert rows["IoU square"] == ("IoU square", "n/a", "0.7000", "n/a")
    assert result.notes == (
        "class circle has no IoU in the new run (absent from its eval set)",
        "splits.csv missing in a run: samples added/removed not shown")
