"""End to end with real git, real DVC and real (tiny) training: the annotator's loop and the gate.

In a temporary git repository holding the project's dvc.yaml and pipeline code, with a local
directory DVC remote and a tiny params.yaml:

1. demo data + `dvc add data/raw`, `dvc repro` end to end, commit, `dvc push`;
2. `dvc repro` again does nothing and `dvc status` is clean;
3. annotators drop new files into data/raw: a batch that helps (correct Labelme/VOC files) and a
   batch that hurts (two taggers' LabelImg files over copies of the frames, one box over each
   whole frame named "square": every background pixel labelled square); `dvc repro` converts
   only the new files, the split stays sticky, the model retrains, and
   `segpipe compare --base HEAD` fails the gate (exit 1) naming the background;
4. `git checkout` of the first commit + `dvc checkout` restores that version's raw data, masks and
   model byte for byte, and the gate now passes against the bad version.

Runs `segpipe` and `dvc` from the interpreter's environment (the project's .venv). A few
minutes on 2 cores; marked slow, and run by `make test` / CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT

from pipeline.core.hashing import content_hash
from pipeline.tools import demo

BIN = Path(sys.executable).parent
N_BASE, N_HELP = 40, 10
TINY_PARAMS = """\
classes: [background, circle, square, triangle, star]
ignore_labels: [__ignore__]
aliases: {tri: triangle, box: square}
convert:
  jobs: 2
split:
  benchmark: data/benchmark.txt
train:
  patch: 64
  depth: 3
  base_width: 8
  steps: 150
  batch_size: 8
  lr: 0.01
  threads: 2
evaluate:
  worst_k: 2
  overlay_size: 64
review:
  folds: 2
  steps: 40
  top: 3
gate:
  max_drop: 0.02
  max_class_drop: 0.05
report:
  thumbnails: 10
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("git") is None, reason="git not installed"),
    pytest.mark.skipif(not (BIN / "dvc").exists() or not (BIN / "segpipe").exists(),
                       reason="dvc / segpipe not installed beside this interpreter"),
]


class Repo:
    """A scratch git + DVC repository; every command runs in it and must succeed unless told."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "e2e",
                    "GIT_AUTHOR_EMAIL": "e2e@example.invalid", "GIT_COMMITTER_NAME": "e2e",
                    "GIT_COMMITTER_EMAIL": "e2e@example.invalid", "PYTHONUNBUFFERED": "1"}

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(args, cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=1800, check=False)
        if ok and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}\n"
                                 f"--- stdout\n{done.stdout[-4000:]}\n"
                                 f"--- stderr\n{done.stderr[-4000:]}")
        return done

    def commit(self, message: str) -> str:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)
        return self.run("git", "rev-parse", "HEAD").stdout.strip()

    def hashes(self, *paths: str) -> dict[str, str]:
        out = {}
        for rel in paths:
            path = self.root / rel
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                out[file.relative_to(self.root).as_posix()] = content_hash(file.read_bytes())
        return out

    def status_clean(self) -> bool:
        return json.loads(self.run("dvc", "status", "--json").stdout) == {}


def make_repo(root: Path) -> Repo:
    repo = Repo(root)
    root.mkdir()
    repo.run("git", "init", "-q", "-b", "main")
    repo.run("dvc", "init", "-q")
    shutil.copytree(PROJECT_ROOT / "pipeline", root / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / ".gitignore", root / ".gitignore")
    if (PROJECT_ROOT / ".dvc" / "plots").is_dir():
        shutil.copytree(PROJECT_ROOT / ".dvc" / "plots", root / ".dvc" / "plots")
    # the project's own dvc.yaml (its split stage depends on data/benchmark.txt)
    text = (PROJECT_ROOT / "dvc.yaml").read_text()
    assert "      - data/benchmark.txt\n" in text
    (root / "dvc.yaml").write_text(text)
    (root / "params.yaml").write_text(TINY_PARAMS)
    repo.run("dvc", "remote", "add", "-q", "-d", "local", str(root.parent / "remote"))
    return repo


def tag_whole_frames(raw: Path, batch: demo.DemoSummary, tagger: str) -> list[str]:
    """The hurting batch: a tagger ran LabelImg over copies of the frames and drew one box over
    each whole frame, named "square": every background pixel of those frames becomes square."""
    ids = []
    for sample_id, frame in batch.frames.items():
        image = f"{sample_id}.{frame.ext}"
        if image not in batch.files:
            continue
        name = Path(sample_id).name
        folder = raw / "tagged" / tagger
        folder.mkdir(parents=True, exist_ok=True)
        tagged = demo.DemoFrame(f"tagged/{tagger}/{name}", frame.scene, frame.width,
                                frame.height, frame.ext, "voc", False, frame.version, ())
        whole = demo.DemoShape("square", "square", "box",
                               ((1.0, 1.0), (float(frame.width), float(frame.height))), (0, 0, 0))
        (folder / f"{name}.{frame.ext}").write_bytes(batch.files[image])
        (folder / f"{name}.xml").write_bytes(demo.voc_xml(tagged, [whole]))
        ids.append(tagged.id)
    return ids


def convert_counts(output: str) -> tuple[int, int, int]:
    """(samples seen, processed, reused) from convert's summary line."""
    match = re.search(r"convert: (\d+) samples: .*?\((\d+) processed, (\d+) reused", output)
    assert match, output
    return int(match[1]), int(match[2]), int(match[3])


def splits(repo: Repo) -> dict[str, str]:
    lines = (repo.root / "data/splits/splits.csv").read_text().splitlines()
    header = lines[0].split(",")
    i_id, i_split = header.index("id"), header.index("split")
    return {row.split(",")[i_id]: row.split(",")[i_split] for row in lines[1:]}


def test_annotators_loop_data_versions_and_the_gate(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    raw = repo.root / "data" / "raw"

    # -- version 1: the sample with its planted defects, a fixed benchmark set
    base = demo.build(n=N_BASE, seed=0)
    demo.write(raw, base)
    rejected = {i for d, i in base.defects.items() if demo.DEFECTS[d][0] == "error"}
    good = sorted(set(base.samples) - rejected)
    benchmark = good[::4]
    (repo.root / "data" / "benchmark.txt").write_text("\n".join(benchmark) + "\n")
    repo.run("dvc", "add", "-q", "data/raw")
    repo.commit("pipeline, params and raw data")  # DVCLive needs a commit to exist
    first = repo.run("dvc", "repro")
    out = first.stdout + first.stderr
    for stage in ("convert", "split", "train", "evaluate", "review", "report"):
        assert f"Running stage '{stage}'" in out
    page = (repo.root / "reports/report.html").read_text()
    assert '<h2 id="review">Label review</h2>' in page and "No label-review queue" not in page
    assert all(f'<tr data-file="{i}.json">' in page for i in rejected)  # with their problems
    assert convert_counts(out) == (N_BASE, N_BASE, 0)
    data_v1 = json.loads((repo.root / "reports/data.json").read_text())
    assert data_v1["files"]["converted"] == N_BASE - len(rejected)
    assert data_v1["files"]["rejected"] == len(rejected) == 5
    split_v1 = splits(repo)
    assert sorted(i for i, s in split_v1.items() if s == "benchmark") == benchmark
    v1 = repo.commit("data v1: trained and evaluated")
    repo.run("dvc", "push", "-q")
    outputs_v1 = repo.hashes("data/raw", "data/prepared/masks", "models/model.pt")

    # -- nothing changed: nothing runs, nothing to commit
    again = repo.run("dvc", "repro")
    assert "Running stage" not in again.stdout + again.stderr
    assert repo.status_clean()
    assert repo.run("git", "status", "--porcelain").stdout == ""
    same = repo.run("segpipe", "compare", "--base", "HEAD")
    assert same.stdout.splitlines()[-1] == "PASS (gate: mIoU may drop 0.02, a class 0.05)"

    # -- version 2: a helping batch and a hurting batch dropped into data/raw
    helping = demo.build(n=N_HELP, seed=0, first_scene=30, defects=False)
    demo.write(raw, helping)
    # two taggers each tagged a copy of every frame: 2 wrong labels for each right one, on the
    # very scenes the benchmark frames come from
    hurting = tag_whole_frames(raw, base, "anna") + tag_whole_frames(raw, base, "ben")
    n_hurt = len(hurting)
    second = repo.run("dvc", "repro")
    out = second.stdout + second.stderr
    # only the new files are converted; the old ones are reused from convert's own cache,
    # except the two rejected for a read error (corrupt JSON, missing image): convert checks
    # those again whenever files are added, in case the missing file has arrived
    read_errors = {base.defects["corrupt_json"], base.defects["missing_image"]}
    assert convert_counts(out) == (N_BASE + N_HELP + n_hurt, N_HELP + n_hurt + len(read_errors),
                                   N_BASE - len(read_errors))
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    assert repo.status_clean()
    # sticky split: every sample of version 1 keeps its split
    split_v2 = splits(repo)
    assert {i: split_v2[i] for i in split_v1} == split_v1
    assert set(split_v2) - set(split_v1) == set(helping.samples) | set(hurting)
    # the gate: same benchmark images, the background (and mIoU) dropped -> exit 1
    gate = repo.run("segpipe", "compare", "--base", "HEAD", "--md", "summary.md", ok=False)
    assert gate.returncode == 1, gate.stdout + gate.stderr
    lines = gate.stdout.splitlines()
    assert lines[0].endswith("eval set: benchmark (same images)")
    added = N_HELP + n_hurt
    assert re.fullmatch(rf"samples added\s+{added}", _row(lines, "samples added"))
    assert re.fullmatch(r"samples removed\s+0", _row(lines, "samples removed"))
    assert re.fullmatch(r"samples moved split\s+0", _row(lines, "samples moved split"))
    assert re.fullmatch(rf"files seen\s+40\s+{40 + added}\s+\+{added}", _row(lines, "files seen"))
    assert re.fullmatch(r"files rejected\s+5\s+5\s+\+0", _row(lines, "files rejected"))
    assert lines[-1].startswith("FAIL: ")
    assert "IoU background dropped" in lines[-1]
    assert "| IoU background |" in (repo.root / "summary.md").read_text()
    metrics_v2 = json.loads((repo.root / "reports/metrics.json").read_text())
    (repo.root / "summary.md").unlink()
    v2 = repo.commit("data v2: tagged frames added")
    repo.run("dvc", "push", "-q")

    # -- back to version 1: git checkout + dvc checkout restore its data, masks and model
    repo.run("git", "checkout", "-q", v1)
    repo.run("dvc", "checkout", "-q")
    assert repo.hashes("data/raw", "data/prepared/masks", "models/model.pt") == outputs_v1
    assert repo.status_clean()
    assert json.loads((repo.root / "reports/metrics.json").read_text()) != metrics_v2
    # measured against the bad version, going back is an improvement: the gate passes
    back = repo.run("segpipe", "compare", "--base", v2, ok=False)
    assert back.returncode == 0, back.stdout + back.stderr
    assert re.fullmatch(rf"samples removed\s+{added}",
                        _row(back.stdout.splitlines(), "samples removed"))


def _row(lines: list[str], name: str) -> str:
    found = [line for line in lines if line.startswith(name + " ")]
    assert len(found) == 1, (name, lines)
    return found[0].rstrip()
