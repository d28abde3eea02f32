"""`segpipe history`: one row per committed data version, read from a real scratch git repo."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import Run, segpipe

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}


def git(repo: Path, *args: str, date: str = "2026-03-01T10:00:00") -> str:
    env = {**GIT_ENV, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True,
                          check=True).stdout


def metrics(miou: float | None, iou: dict[str, float | None], fp: str, n: int,
            bench: dict | None = None) -> dict:
    out = {"miou": miou, "miou_fg": None, "iou": iou, "n_images": n, "eval_fingerprint": fp}
    return {**out, "benchmark": bench} if bench else out


def commit_version(repo: Path, m: dict | str, rejected: int, samples: int, date: str,
                   message: str) -> str:
    reports = repo / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "metrics.json").write_text(m if isinstance(m, str) else json.dumps(m))
    (reports / "data.json").write_text(json.dumps(
        {"files": {"seen": samples + rejected, "converted": samples, "rejected": rejected,
                   "warnings": 0}}))
    splits = repo / "data" / "splits" / "splits.csv"
    splits.parent.mkdir(parents=True, exist_ok=True)
    splits.write_text("id,group,split\n" + "".join(f"s{i},s{i},{'val' if i % 4 else 'train'}\n"
                                                  for i in range(samples)))
    git(repo, "add", ".")
    git(repo, "commit", "-qm", message, date=date)
    return git(repo, "rev-parse", "--short", "HEAD").strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, list[str]]:
    """Three data versions; the third one has a new eval set (more val images); between the
    first and the second, a commit that does not touch the metrics."""
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "params.yaml").write_text("classes: [background, circle, square]\n")
    shas = [commit_version(tmp_path, metrics(0.8, {"background": 0.95, "circle": 0.8,
                                                  "square": 0.65}, "e1aaaaaaaaaa", 10),
                           3, 40, "2026-03-01T10:00:00", "data v1")]
    (tmp_path / "README").write_text("docs only\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "docs", date="2026-03-02T10:00:00")
    shas.append(commit_version(tmp_path, metrics(0.85, {"background": 0.96, "circle": 0.84,
                                                       "square": 0.75}, "e1aaaaaaaaaa", 10),
                               1, 52, "2026-03-05T10:00:00", "data v2: batch 2"))
    shas.append(commit_version(tmp_path, metrics(0.83, {"background": 0.96, "circle": 0.9,
                                                       "square": None}, "e2bbbbbbbbbb", 14),
                               2, 60, "2026-03-09T10:00:00", "data v3: batch 3"))
    return tmp_path, shas


def run(repo: Path, *args: str) -> Run:
    return segpipe("history", *args, cwd=repo)


def test_three_data_versions_give_three_rows_and_the_eval_change_is_marked(
        repo: tuple[Path, list[str]]) -> None:
    path, (v1, v2, v3) = repo
    result = run(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"""\
commit   date        samples  rejected  eval set              mIoU  background  circle  square
{v1}  2026-03-01       40         3  val e1aaaaaa (10)   0.8000      0.9500  0.8000  0.6500
{v2}  2026-03-05       52         1  val e1aaaaaa (10)   0.8500      0.9600  0.8400  0.7500
{v3}  2026-03-09       60         2  val e2bbbbbb (14)*  0.8300      0.9600  0.9000     n/a
* the eval set changed from the row above: scores before and after it were measured on \
different images
"""


def test_a_range_limits_the_rows_and_markdown_and_svg_are_written(
        repo: tuple[Path, list[str]]) -> None:
    path, (v1, v2, v3) = repo
    result = run(path, f"{v1}..HEAD", "--md", "out/history.md", "--plot", "out/history.svg")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:3]] == [v2, v3]
    md = (path / "out/history.md").read_text()
    assert md.startswith(f"""### segpipe history: mIoU across data versions

| commit | date | samples | rejected | eval set | mIoU | background | circle | square |
|---|---|---:|---:|---|---:|---:|---:|---:|
| {v2} | 2026-03-05 | 52 | 1 | val e1aaaaaa (10) | 0.8500 | 0.9600 | 0.8400 | 0.7500 |
| {v3} | 2026-03-09 | 60 | 2 | val e2bbbbbb (14)\\* | 0.8300 | 0.9600 | 0.9000 | n/a |

- \\* the eval set changed from the row above""")
    assert f"""```mermaid
xychart-beta
    title "IoU circle"
    x-axis ["{v2}", "{v3}"]
    y-axis "IoU" 0.82 --> 0.92
    line [0.8400, 0.9000]
```""" in md
    assert 'title "IoU square"' not in md  # one value only: no line to draw
    svg = ET.parse(path / "out/history.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    panels = svg.findall(f"{ns}svg")
    assert [p.get("aria-label") for p in panels] == ["mIoU", "IoU background", "IoU circle",
                                                     "IoU square"]
    assert len(panels[0].findall(f"{ns}polyline")) == 1
    assert len(panels[0].findall(f"{ns}line[@stroke-dasharray]")) == 1  # the eval change


def test_a_malformed_revision_keeps_its_row_with_a_note(repo: tuple[Path, list[str]]) -> None:
    path, (_, _, v3) = repo
    bad = commit_version(path, '{"miou": "abc", "iou": {}}', 0, 60, "2026-03-10T10:00:00",
                         "broken metrics")
    result = run(path, "-n", "2")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[1].startswith(f"{v3}  2026-03-09")
    assert lines[2] == (f"{bad}  2026-03-10       60         0  n/a                   n/a         "
                        "n/a     n/a     n/a")  # samples and rejected still shown
    assert lines[-1] == (f"note: reports/metrics.json at {bad}: miou must be a number or null, "
                         'got "abc"')


def test_the_working_tree_row_and_the_benchmark_set(repo: tuple[Path, list[str]]) -> None:
    path, _ = repo
    bench = metrics(0.7, {"background": 0.9, "circle": 0.6, "square": 0.6}, "b1cccccccc", 5)
    (path / "reports/metrics.json").write_text(json.dumps(
        metrics(0.9, {"background": 0.97, "circle": 0.9, "square": 0.83}, "e2bbbbbbbbbb", 14,
                bench)))
    result = run(path, "--with-working-tree")
    assert result.stdout.splitlines()[4] == (
        "working tree                   60         2  benchmark b1cccccc (5)*  0.7000      0.9000  "
        "0.6000  0.6000")
    on_val = run(path, "--with-working-tree", "--on", "val")
    assert on_val.stdout.splitlines()[4].endswith("val e2bbbbbb (14)   0.9000      0.9700  "
                                                  "0.9000  0.8300")


def test_an_unknown_revision_and_a_missing_git_are_exit_3(repo: tuple[Path, list[str]],
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    path, _ = repo
    unknown = run(path, "nosuchbranch")
    assert unknown.returncode == 3
    assert unknown.stderr.startswith("error: cannot read the history of reports/metrics.json "
                                     "in nosuchbranch: fatal: bad revision 'nosuchbranch'")
    monkeypatch.setenv("PATH", str(path / "nothing-here"))
    result = run(path)
    assert result.returncode == 3
    assert result.stderr == ("error: cannot read the history of reports/metrics.json: git must "
                             "be on PATH, got no `git` executable (install git)\n")
