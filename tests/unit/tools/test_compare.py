"""`segpipe compare`: the CI gate, run against real git repositories made in tmp_path."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers import Run, segpipe

from pipeline.params import GateParams
from pipeline.tools import compare as cmp
from pipeline.tools import runs
from pipeline.tools.bootstrap import Interval, bootstrap_change

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


def write(repo: Path, m: dict | None, d: dict | None, s: dict[str, str] | None,
          images: dict | None = None) -> None:
    for rel, text in (("reports/metrics.json", m and json.dumps(m)),
                      ("reports/data.json", d and json.dumps(d)),
                      ("data/splits/splits.csv", s and splits(s)),
                      ("reports/images.json", images and json.dumps(images))):
        path = repo / rel
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


PATHS = cmp.Paths("reports/metrics.json", "reports/images.json", "reports/data.json",
                  "data/splits/splits.csv")
FILES = runs.FileCounts(3, 3, 0, 0)


def parsed(m: dict) -> runs.RunMetrics:
    return runs.parse_metrics(json.dumps(m).encode(), "metrics.json", "")


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
    # runs without per-image counts (made before evaluate wrote images.json): no interval
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

note: no per-image counts of val at HEAD ({head}) and in the working tree: no interval
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
    head = git(repo, "rev-parse", "--short", "HEAD").strip()
    assert result.stderr.startswith(f"error: reports/data.json is missing at HEAD ({head}):")
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

- no per-image counts of val at HEAD ({head}) and in the working tree: no interval

**FAIL: IoU circle dropped 0.0600 > gate.max_class_drop 0.05 (gate: mIoU may drop 0.02, \
a class 0.05)**
"""


# ------------------------------------------------------- malformed inputs fail closed (exit 3)


def test_a_base_metrics_file_with_wrong_types_is_exit_3_naming_file_and_revision(
        repo: Path) -> None:
    write(repo, {**BASE, "iou": {**BASE["iou"], "circle": "abc"}, "n_images": "20"},
          data(7, 5, 2, 3), BASE_SPLITS)
    git(repo, "commit", "-qam", "metrics with wrong types")
    head = git(repo, "rev-parse", "--short", "HEAD").strip()
    write(repo, BASE, data(7, 5, 2, 3), BASE_SPLITS)
    result = run(repo, "--base", "HEAD")
    assert result.returncode == 3
    assert result.stderr == (
        f"error: reports/metrics.json at HEAD ({head}): iou.circle must be a number or null, "
        'got "abc"; n_images must be a count (an integer >= 0), got "20"\n')
    assert result.stdout == ""


def test_a_non_utf8_base_splits_csv_is_exit_3_naming_file_and_revision(repo: Path) -> None:
    (repo / "data/splits/splits.csv").write_bytes(b"id,group,split\ncaf\xe9,caf\xe9,train\n")
    git(repo, "commit", "-qam", "latin-1 splits")
    head = git(repo, "rev-parse", "--short", "HEAD").strip()
    write(repo, BASE, data(7, 5, 2, 3), BASE_SPLITS)
    result = run(repo, "--base", "HEAD")
    assert result.returncode == 3
    assert result.stderr == (f"error: data/splits/splits.csv at HEAD ({head}) must be UTF-8 "
                             "text, got byte 0xe9 at offset 18\n")


def test_no_git_on_path_is_exit_3_with_a_message(repo: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    empty = repo / "no-tools"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = run(repo, "--base", "HEAD", "--md", "summary.md")
    assert result.returncode == 3
    assert result.stderr == ("error: cannot read the base metrics (reports/metrics.json) at "
                             "HEAD: git must be on PATH, got no `git` executable (install git)\n")
    assert (repo / "summary.md").read_text().startswith("### ⚠️ segpipe compare: no verdict")


@pytest.mark.parametrize(("images", "problem"), [
    ("{not json", "must be valid JSON, got Expecting property name enclosed in double quotes: "
                  "line 1 column 2 (char 1)"),
    ('{"classes": "background", "val": {}}',
     ': classes must be a list of class names, got "background"'),
    ('{"classes": ["background", "circle", "square"], "val": {"eval_fingerprint": "e1", '
     '"images": [{"id": "a1", "group": "a", "intersection": [1, 2], "union": [3, 4, 5]}]}}',
     ": val.images[0] (a1): intersection and union must be 3 counts (integers >= 0), got "
     "[[1, 2], [3, 4, 5]]"),
    ('{"classes": ["background", "circle", "square"], "val": {"eval_fingerprint": "e1", '
     '"images": [{"id": "a1", "group": "a", "intersection": [9, 2, 3], "union": [3, 4, 5]}]}}',
     ": val.images[0] (a1): intersection must be <= union, got [[9, 2, 3], [3, 4, 5]]"),
])
def test_a_malformed_images_file_is_exit_3_naming_file_and_revision(
        repo: Path, images: str, problem: str) -> None:
    (repo / "reports/images.json").write_text(images)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "broken images.json")
    head = git(repo, "rev-parse", "--short", "HEAD").strip()
    result = run(repo, "--base", "HEAD")
    assert result.returncode == 3
    sep = "" if problem.startswith(":") else " "
    assert result.stderr == f"error: reports/images.json at HEAD ({head}){sep}{problem}\n"


def test_images_that_do_not_match_the_metrics_are_exit_3(repo: Path) -> None:
    m, images = counted(IMAGES)
    write(repo, {**m, "iou": {**m["iou"], "circle": 0.5}}, data(7, 5, 2, 3), BASE_SPLITS,
          images)
    result = run(repo, "--base", "HEAD")
    assert result.returncode == 3
    assert result.stderr == (
        "error: reports/images.json in the working tree does not match reports/metrics.json "
        "(a stale file? re-run `segpipe evaluate`): IoU circle from the counts must equal "
        f"reports/metrics.json's 0.5, got {m['iou']['circle']}\n")


# ------------------------------------------------------- NaN/null scores fail the gate


def test_a_new_run_with_null_miou_and_ious_fails_with_no_valid_miou(repo: Path) -> None:
    write(repo, metrics(None, None, {"background": None, "circle": None, "square": None}),
          data(7, 5, 2, 3), BASE_SPLITS)
    result = run(repo, "--base", "HEAD")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        "FAIL: no valid mIoU in the new run (NaN/null: nothing could be scored); no valid IoU "
        "background in the new run (NaN/null; base 0.9800); no valid IoU circle in the new run "
        "(NaN/null; base 0.9000); no valid IoU square in the new run (NaN/null; base 0.8200) "
        "(gate: mIoU may drop 0.02, a class 0.05)")


def test_a_class_nan_in_both_runs_is_not_a_failure_but_nan_in_the_new_run_only_is() -> None:
    base = cmp.Snapshot("b", parsed(metrics(0.9, 0.85, {"background": 0.98, "circle": 0.9,
                                                        "square": None})), FILES, None)
    both = cmp.Snapshot("n", parsed(metrics(0.9, 0.85, {"background": 0.98, "circle": 0.9,
                                                        "square": None})), FILES, None)
    result = cmp.compare(base, both, GateParams())
    assert result.exit_code == 0
    assert {r.name: cmp._cells(r)[1:4] for r in result.metric_rows}["IoU square"] == (
        "n/a", "n/a", "n/a")
    only_new = cmp.Snapshot("n", parsed(metrics(0.9, 0.85, {"background": 0.98, "circle": None,
                                                            "square": 0.7})), FILES, None)
    result = cmp.compare(base, only_new, GateParams())
    assert result.exit_code == 1
    assert result.regressions == ("no valid IoU circle in the new run (NaN/null; base 0.9000)",)
    assert result.notes == ("no per-image counts of val in the working tree and in the working "
                            "tree: no interval",
                            "splits.csv missing in a run: samples added/removed not shown")


# ------------------------------------------------------- the bootstrap interval


def counted(per_image: dict[str, tuple[str, list[int], list[int]]], fp: str = "e1"
            ) -> tuple[dict, dict]:
    """metrics.json (val) and images.json of a run, both from per-image counts
    {id: (group, intersection per class, union per class)}, as evaluate writes them."""
    classes = ["background", "circle", "square"]
    inter = [sum(v[1][c] for v in per_image.values()) for c in range(3)]
    union = [sum(v[2][c] for v in per_image.values()) for c in range(3)]
    iou = {name: inter[c] / union[c] if union[c] else None for c, name in enumerate(classes)}
    valid = [v for v in iou.values() if v is not None]
    fg = [v for k, v in iou.items() if v is not None and k != "background"]
    m = metrics(sum(valid) / len(valid), sum(fg) / len(fg), iou, fp=fp, n=len(per_image))
    rows = [{"id": i, "group": g, "intersection": a, "union": b}
            for i, (g, a, b) in sorted(per_image.items())]
    return m, {"classes": classes, "val": {"eval_fingerprint": fp, "images": rows}}


#: 12 images in 6 split groups whose scores differ from image to image
IMAGES = {f"s{k // 2}_{k}": (f"s{k // 2}", [900 + 7 * k, 80 + (k * 5) % 17, 60 + (k * 3) % 13],
                             [1000, 100, 90]) for k in range(12)}


def with_circle(per_image: dict, change: dict[str, int]) -> dict:
    """The same images with circle's intersection changed by `change[id]` pixels."""
    return {i: (g, [a[0], a[1] + change.get(i, 0), a[2]], b) for i, (g, a, b) in per_image.items()}


def commit_run(repo: Path, per_image: dict, fp: str = "e1") -> None:
    m, images = counted(per_image, fp)
    write(repo, m, data(7, 5, 2, 3), BASE_SPLITS, images)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "run with per-image counts")


def significant(repo: Path, value: bool = True, seed: int = 0) -> None:
    (repo / "params.yaml").write_text(PARAMS + f"  significant: {str(value).lower()}\n"
                                      f"  seed: {seed}\n")


def test_identical_runs_give_an_interval_of_zero_and_pass(repo: Path) -> None:
    commit_run(repo, IMAGES)
    significant(repo)
    result = run(repo, "--base", "HEAD")
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[2:5] == [
        "metric                   base       new     delta        95% interval",
        "mIoU                   0.8483    0.8483   +0.0000  [+0.0000, +0.0000]",
        "mIoU fg                0.8031    0.8031   +0.0000  [+0.0000, +0.0000]"]
    assert counted(IMAGES)[0]["miou"] == pytest.approx(0.8483, abs=5e-5)
    assert ("note: 95% interval: paired bootstrap over 6 split groups (12 images), 2000 "
            "resamples, seed 0") in lines
    assert lines[-1] == ("PASS (gate: mIoU may drop 0.02, a class 0.05, failing only where the "
                         "interval excludes 0)")


def test_a_planted_large_drop_of_one_class_excludes_zero_and_fails(repo: Path) -> None:
    commit_run(repo, IMAGES)
    significant(repo)
    # circle loses 20, 27 or 34 of its 100 px in every image: 324 px of 1200
    lost = {i: -(20 + (7 * k) % 21) for k, i in enumerate(IMAGES)}
    assert sum(lost.values()) == -324
    m, images = counted(with_circle(IMAGES, lost))
    write(repo, m, data(7, 5, 2, 3), BASE_SPLITS, images)
    result = run(repo, "--base", "HEAD")
    assert result.returncode == 1
    c = cmp.compare(cmp.read_snapshot("HEAD", PATHS, repo), cmp.read_snapshot(None, PATHS, repo),
                    GateParams(significant=True))
    circle = next(r for r in c.metric_rows if r.name == "IoU circle")
    assert circle.delta == pytest.approx(-324 / 1200)
    assert circle.interval is not None
    assert circle.interval.low <= circle.delta <= circle.interval.high < 0  # excludes zero
    assert circle.interval.low < circle.interval.high  # the images differ: a real width
    assert re.fullmatch(
        r"FAIL: mIoU dropped 0\.0900 > gate\.max_drop 0\.02 and its interval \[-0\.\d{4}, "
        r"-0\.\d{4}\] excludes 0; IoU circle dropped 0\.2700 > gate\.max_class_drop 0\.05 and "
        r"its interval \[-0\.\d{4}, -0\.\d{4}\] excludes 0 \(gate: mIoU may drop 0\.02, a "
        r"class 0\.05, failing only where the interval excludes 0\)",
        result.stdout.splitlines()[-1])


def test_a_drop_within_the_noise_fails_only_without_gate_significant(repo: Path) -> None:
    # 4 groups of one image: circle collapses in one image and improves a little in three,
    # a drop of 0.1125 overall that one unlucky group explains
    four = {f"g{k}": (f"g{k}", [900, 80, 60], [1000, 100, 90]) for k in range(4)}
    commit_run(repo, four)
    m, images = counted(with_circle(four, {"g0": -60, "g1": 5, "g2": 5, "g3": 5}))
    write(repo, m, data(7, 5, 2, 3), BASE_SPLITS, images)
    significant(repo, False)
    strict = run(repo, "--base", "HEAD")
    assert strict.returncode == 1
    assert "FAIL: mIoU dropped 0.0375 > gate.max_drop 0.02; IoU circle dropped 0.1125" in \
        strict.stdout
    significant(repo, True)
    noisy = run(repo, "--base", "HEAD")
    assert noisy.returncode == 0, noisy.stdout
    notes = [line for line in noisy.stdout.splitlines() if line.startswith(("note", "warn"))]
    assert notes[0].startswith("note: mIoU dropped 0.0375 > gate.max_drop 0.02, but its "
                               "interval [-")
    assert notes[0].endswith("] contains 0: within the noise, passed")
    assert notes[1].startswith("note: IoU circle dropped 0.1125 > gate.max_class_drop 0.05, "
                               "but its interval [-")
    # too few images to tell a drop of the configured size from noise: said so
    assert notes[3].startswith("warning: the eval set is too small to detect an mIoU drop of "
                               "gate.max_drop 0.02: its 95% interval is +-")
    assert notes[3].endswith("(4 images in 4 groups); add images or raise the threshold")
    assert notes[4].startswith("warning: the eval set is too small to detect a class drop of "
                               "gate.max_class_drop 0.05 for: circle +-")


def test_one_group_gives_the_observed_change_exactly() -> None:
    one = {f"a{k}": ("a", [900, 80 - 3 * k, 60], [1000, 100, 90]) for k in range(3)}
    base = runs.parse_images(json.dumps(counted(one)[1]).encode(), "i", "")["val"]
    new = runs.parse_images(json.dumps(counted(with_circle(one, {"a0": -9}))[1]).encode(), "i",
                            "")["val"]
    result = bootstrap_change(base, new, resamples=300)
    assert result.paired and result.groups == 1 and result.images == 3
    # every resample is the whole set: the interval is the observed change
    assert result.iou["circle"] == Interval(pytest.approx(-9 / 300), pytest.approx(-9 / 300))
    assert result.iou["background"] == Interval(0.0, 0.0)


def test_the_interval_is_deterministic_for_a_seed_and_depends_on_it(repo: Path) -> None:
    commit_run(repo, IMAGES)
    m, images = counted(with_circle(IMAGES, {i: 3 if k % 4 < 2 else -2
                                             for k, i in enumerate(IMAGES)}))
    write(repo, m, data(7, 5, 2, 3), BASE_SPLITS, images)
    first, again = run(repo, "--base", "HEAD"), run(repo, "--base", "HEAD")
    assert first.returncode == 0
    assert first.stdout == again.stdout
    base, new = cmp.read_snapshot("HEAD", PATHS, repo), cmp.read_snapshot(None, PATHS, repo)
    seeds = [cmp.compare(base, new, GateParams(seed=seed)).bootstrap for seed in (0, 0, 1)]
    assert seeds[0] is not None and seeds[0] == seeds[1]
    assert seeds[0] != seeds[2]  # another seed, other resamples
    # groups change circle by +6 or -4 px of 200: every resample lies in [-0.02, +0.03], and
    # the interval holds the observed +0.005 (3 groups of each)
    circle = seeds[0].iou["circle"]
    assert circle is not None and -0.02 < circle.low < 0.005 < circle.high < 0.03


def test_different_images_give_an_unpaired_interval(repo: Path) -> None:
    commit_run(repo, IMAGES)
    grown = {**IMAGES, "s6_12": ("s6", [950, 85, 61], [1000, 100, 90])}
    m, images = counted(grown, fp="e2")
    write(repo, m, data(8, 6, 2, 3), {**BASE_SPLITS, "s6_12": "val"}, images)
    result = run(repo, "--base", "HEAD", "--allow-different-eval")
    assert result.returncode == 0
    assert ("note: 95% interval: unpaired (different images) bootstrap over 7 split groups "
            "(13 images), 2000 resamples, seed 0") in result.stdout.splitlines()
    miou = next(line for line in result.stdout.splitlines() if line.startswith("mIoU  "))
    low, high = (float(v) for v in miou.split("[")[1].rstrip("]").split(", "))
    assert low < 0 < high  # the images differ: the interval has a width around the change


def test_markdown_has_the_interval_column(repo: Path) -> None:
    commit_run(repo, IMAGES)
    result = run(repo, "--base", "HEAD", "--md", "summary.md")
    md = (repo / "summary.md").read_text().splitlines()
    assert result.returncode == 0
    assert md[4:6] == ["| metric | base | new | Δ | 95% interval |", "|---|---:|---:|---:|---:|"]
    assert md[7].startswith("| mIoU fg | ") and md[7].endswith(" | +0.0000 | [+0.0000, +0.0000] |")
    assert "| files rejected | 2 | 2 | +0 |" in md  # the data table keeps four columns
