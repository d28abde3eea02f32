"""Issue 10, the convert half: each failure found by trying to break the stage, reproduced on
tiny inputs, with the clear verdict it gets now and the good files of the same run converted.

Real processes where the failure is about processes: two `python -m pipeline convert` on one
folder, a worker killed by SIGKILL, a run killed while it finishes, the peak memory of a run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import PROJECT_ROOT
from helpers.files import labelme, labelme_doc, png_bytes, rect, voc_xml, write_json, write_text
from PIL import Image

from pipeline.convert.report import ConvertSummary
from pipeline.convert.stage import run_convert
from pipeline.params import load_params
from pipeline.storage.files import HOLDER_NAME
from pipeline.storage.masks import read_mask

CLASSES = ["background", "a"]


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project dir (cwd) with raw/, params.yaml and one good sample, raw/good.json."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    labelme(tmp_path / "raw" / "good.json", [rect("a", 1, 1, 4, 3)], 10, 8, png_bytes(10, 8))
    return tmp_path


def env() -> dict[str, str]:
    """The environment of a real process: this checkout first, this test's memo dir."""
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "DVC_NO_ANALYTICS": "1"}


def write_params(root: Path, name: str = "params.yaml", **convert: object) -> str:
    section = {"raw_dir": "raw", "out_dir": "prepared", "reports_dir": "reports",
               "max_error_fraction": 1.0, **convert}
    (root / name).write_text(yaml.safe_dump({"classes": CLASSES, "convert": section}))
    return name


def convert(root: Path, name: str = "params.yaml", jobs: int = 1) -> ConvertSummary:
    return run_convert(load_params(root / name), jobs=jobs, progress=False)


def segpipe_convert(root: Path, *args: str, timeout: float = 120
                    ) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline convert ARGS` in a real process (a hang fails the test)."""
    return subprocess.run([sys.executable, "-m", "pipeline", "convert", *args], cwd=root,
                          env=env(), capture_output=True, text=True, timeout=timeout, check=False)


def verdicts(root: Path, reports: str = "reports") -> dict[str, list[tuple[str, str]]]:
    """file -> [(check, severity)] from validation.json (which must be valid UTF-8 JSON)."""
    found: dict[str, list[tuple[str, str]]] = {}
    raw = (root / reports / "validation.json").read_bytes().decode("utf-8")
    for issue in json.loads(raw):
        found.setdefault(issue["file"], []).append((issue["check"], issue["severity"]))
    return found


def message(root: Path, file: str, check: str) -> str:
    issues = json.loads((root / "reports" / "validation.json").read_text(encoding="utf-8"))
    return next(i["message"] for i in issues if i["file"] == file and i["check"] == check)


def manifest_ids(root: Path, out: str = "prepared") -> list[str]:
    with open(root / out / "manifest.csv", newline="", encoding="utf-8") as f:
        return [row["id"] for row in csv.DictReader(f)]


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


def make_samples(raw: Path, n: int, size: int = 256) -> None:
    for i in range(n):
        labelme(raw / f"s{i:03d}.json", [rect("a", 2, 2, 40 + i, 30)], size, size,
                png_bytes(size, size, (i, 2 * i % 256, 50)))


def peak_rss_mb(root: Path, *args: str, timeout: float = 120) -> tuple[int, float, str]:
    """Run `python -m pipeline convert ARGS` as the child of a small launcher; return its exit
    code, the peak resident memory of the largest of its processes (the stage and its
    workers; MB) and its stderr."""
    launcher = ("import resource, subprocess, sys\n"
                "run = subprocess.run([sys.executable, '-m', 'pipeline', 'convert', *sys.argv[1:]],"
                " capture_output=True, text=True)\n"
                "sys.stderr.write(run.stderr)\n"
                "print(run.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    done = subprocess.run([sys.executable, "-c", launcher, *args], cwd=root, env=env(),
                          capture_output=True, text=True, timeout=timeout, check=True)
    code, kb = done.stdout.split()
    return int(code), int(kb) / 1024, done.stderr


def wait_for(predicate, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


# ------------------------------------------------------------------------------ 1. two runs


def test_a_second_convert_on_the_same_folder_is_refused_naming_the_first(project: Path) -> None:
    make_samples(project / "raw", 40)
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "convert", "-j", "1"],
                             cwd=project, env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    holder = project / "prepared" / HOLDER_NAME
    wait_for(holder.exists, "the first run to take the lock")
    os.killpg(first.pid, signal.SIGSTOP)  # hold it there, mid-run, lock held
    try:
        masks = project / "prepared" / "masks"
        masks.mkdir(parents=True, exist_ok=True)
        theirs = masks / f".s039.png.{first.pid}-0123456789ab.tmp"  # as if mid-write
        theirs.write_bytes(b"half a png")
        second = segpipe_convert(project, "-j", "1")
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1  # one line, no traceback
        assert lines[0].startswith(f"error: convert: {project / 'prepared'} is in use by "
                                   f"another run (pid {first.pid} on ")
        assert "`python -m pipeline convert -j 1`, since " in lines[0]
        assert theirs.exists()  # the refused run touched nothing of the first one's
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "41 samples: 41 converted" in out
    assert not holder.exists()  # who held it is said only while it is held

    again = segpipe_convert(project, "-j", "2")
    assert again.returncode == 0, again.stderr
    assert "(0 processed, 41 reused" in again.stdout
    assert not theirs.exists()  # under the lock every stray temp file goes


def test_a_killed_convert_leaves_no_lock_and_the_next_run_completes(project: Path) -> None:
    make_samples(project / "raw", 40)
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "convert", "-j", "2"],
                             cwd=project, env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for((project / "prepared" / HOLDER_NAME).exists, "the first run to take the lock")
    os.killpg(first.pid, signal.SIGKILL)  # the run and its workers, no clean-up at all
    first.wait()
    second = segpipe_convert(project, "-j", "2")
    assert second.returncode == 0, second.stderr
    assert "41 samples: 41 converted" in second.stdout
    write_params(project, "clean.yaml", out_dir="clean", reports_dir="clean_reports")
    convert(project, "clean.yaml")
    assert tree(project / "prepared") == tree(project / "clean")


# ------------------------------------------------------------------------------ 2. symlinks


def test_links_out_of_the_raw_dir_are_never_read(project: Path, tmp_path: Path) -> None:
    raw, outside = project / "raw", tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    secret = png_bytes(10, 8, (255, 0, 0))
    (outside / "secret.png").write_bytes(secret)
    (outside / "dir" / "x.png").write_bytes(secret)
    (raw / "img.png").symlink_to(outside / "secret.png")  # an image linked from elsewhere
    write_json(raw / "link.json", labelme_doc([rect("a", 1, 1, 4, 3)], "img.png",
                                              imageWidth=10, imageHeight=8))
    (raw / "sub").symlink_to(outside / "dir")  # a linked directory
    write_json(raw / "viadir.json", labelme_doc([rect("a", 1, 1, 4, 3)], "sub/x.png",
                                                imageWidth=10, imageHeight=8))
    labelme(outside / "emb.json", [rect("a", 1, 1, 4, 3)], 10, 8, secret, embed=True)
    (raw / "emb.json").symlink_to(outside / "emb.json")  # a linked JSON with its image inside
    write_json(outside / "config.json", {"password": "hunter2", "api_key": "SECRET"})
    (raw / "cfg.json").symlink_to(outside / "config.json")  # not Labelme at all
    write_text(outside / "classes.txt", "a\n")
    (raw / "yolo").mkdir()
    (raw / "yolo" / "classes.txt").symlink_to(outside / "classes.txt")
    (raw / "yolo" / "y.png").write_bytes(png_bytes(10, 8))
    write_text(raw / "yolo" / "y.txt", "0 0.5 0.5 0.2 0.2\n")
    write_text(raw / "yolo2" / "classes.txt", "a\n")
    (raw / "yolo2" / "z.png").symlink_to(outside / "secret.png")  # a YOLO label's image
    write_text(raw / "yolo2" / "z.txt", "0 0.5 0.5 0.2 0.2\n")
    write_text(raw / "box.xml", voc_xml("img.png", [("a", 2, 2, 5, 5)], size=(10, 8)))
    (raw / "loop.json").symlink_to("loop.json")
    (raw / "dangling.json").symlink_to("nowhere.json")
    os.mkfifo(raw / "fifo.json")  # reading it would wait forever for a writer

    summary = convert(project, jobs=2)
    assert (summary.seen, summary.converted) == (11, 1)
    assert manifest_ids(project) == ["good"]
    found = verdicts(project)
    assert found["link.json"] == [("outside_raw", "error")]
    assert found["viadir.json"] == [("outside_raw", "error")]
    assert found["box.xml"] == [("outside_raw", "error")]
    assert found["emb.json"] == [("outside_raw", "error")]
    assert found["cfg.json"] == [("outside_raw", "error")]
    assert found["yolo/y.txt"] == [("outside_raw", "error")]  # its class list is a link out
    assert found["yolo2/z.txt"] == [("outside_raw", "error")]
    assert found["loop.json"] == [("read_error", "error")]
    assert found["dangling.json"] == [("read_error", "error")]
    assert found["fifo.json"] == [("read_error", "error")]
    assert message(project, "link.json", "outside_raw") == (
        f"image img.png must lie inside the raw dir (symlinks followed), got a link to "
        f"{outside / 'secret.png'}; it is not used")
    assert message(project, "loop.json", "read_error") == (
        "loop.json must be a readable file, got a symlink loop")
    assert [p.read_bytes() for p in (project / "prepared" / "images").iterdir()] == [
        (raw / "good.png").read_bytes()]  # nothing from outside was copied
    report = (project / "reports" / "validation.md").read_text(encoding="utf-8")
    for content in ("hunter2", "password", "api_key", "SECRET"):
        assert content not in report  # a file it did not accept is never quoted
    assert "internal_error" not in report
    again = convert(project, jobs=1)  # the verdicts are cached like any other
    assert (again.processed, again.reused) == (0, 11)


def test_links_inside_the_raw_dir_and_into_the_repos_dvc_cache_are_read(project: Path,
                                                                        tmp_path: Path) -> None:
    raw = project / "raw"
    (raw / "real").mkdir()
    (raw / "real" / "a.png").write_bytes(png_bytes(10, 8, (1, 2, 3)))
    (raw / "a.png").symlink_to(raw / "real" / "a.png")  # a link that stays inside
    write_json(raw / "a.json", labelme_doc([rect("a", 1, 1, 4, 3)], "a.png", imageWidth=10,
                                           imageHeight=8))
    cache = project / ".dvc" / "cache" / "files" / "md5" / "3f"
    cache.mkdir(parents=True)
    (cache / "9a2b").write_bytes(png_bytes(10, 8, (4, 5, 6)))
    (raw / "dvc.png").symlink_to(cache / "9a2b")  # DVC's symlink cache type
    write_json(raw / "dvc.json", labelme_doc([rect("a", 1, 1, 4, 3)], "dvc.png", imageWidth=10,
                                             imageHeight=8))
    other = tmp_path / "other_repo" / ".dvc" / "cache"
    other.mkdir(parents=True)
    (other / "f").write_bytes(png_bytes(10, 8))
    (raw / "other.png").symlink_to(other / "f")  # another repo's cache is outside
    write_json(raw / "other.json", labelme_doc([rect("a", 1, 1, 4, 3)], "other.png",
                                               imageWidth=10, imageHeight=8))

    summary = convert(project)
    assert manifest_ids(project) == ["a", "dvc", "good"]
    assert summary.rejected == 1
    assert verdicts(project)["other.json"] == [("outside_raw", "error")]
    assert (project / "prepared/images/dvc.png").read_bytes() == (cache / "9a2b").read_bytes()


# ------------------------------------------------------------------------------ 3. long names


def test_long_file_names_convert_or_get_a_verdict(project: Path) -> None:
    raw = project / "raw"
    for stem in ("L" * 240, "M" * 250):  # 245- and 255-byte annotation names
        labelme(raw / f"{stem}.json", [rect("a", 1, 1, 4, 3)], 10, 8, png_bytes(10, 8, (7, 7, 7)),
                image_path=f"{stem}.png")
    buffer = io.BytesIO()
    Image.new("RGB", (10, 8), (9, 9, 9)).save(buffer, "WEBP", lossless=True)
    (raw / "short.webp").write_bytes(buffer.getvalue())
    long_xml = "X" * 251 + ".xml"  # 255 bytes; its output image would be <id>.webp: 256
    write_text(raw / long_xml, voc_xml("short.webp", [("a", 2, 2, 5, 5)], size=(10, 8)))

    summary = convert(project, jobs=2)
    assert (summary.seen, summary.converted, summary.rejected) == (4, 3, 1)
    assert manifest_ids(project) == ["L" * 240, "M" * 250, "good"]
    for stem in ("L" * 240, "M" * 250):
        assert read_mask(project / "prepared" / "masks" / f"{stem}.png").shape == (8, 10)
    assert verdicts(project)[long_xml] == [("name_too_long", "error")]
    assert message(project, long_xml, "name_too_long") == (
        f"{long_xml}: output file names must have at most 255 bytes, got 256 for "
        f"images/{'X' * 251}.webp; shorten the annotation's name")
    assert not list(project.rglob("*.tmp"))


# ------------------------------------------------------------------------------ 4. encodings


def test_names_that_are_not_utf8_are_a_per_file_error_and_the_rest_converts(
        project: Path) -> None:
    raw = os.fsencode(project / "raw")
    doc = json.dumps(labelme_doc([rect("a", 1, 1, 4, 3)], "good.png", imageWidth=10,
                                 imageHeight=8))
    with open(raw + b"/bad\xff.json", "w") as f:  # Latin-1 bytes, not UTF-8
        f.write(doc)
    os.mkdir(raw + b"/lot\xe9")
    with open(raw + b"/lot\xe9/x.json", "w") as f:
        f.write(doc)
    with open(raw + b"/notes\xfe.txt", "w") as f:  # not even an annotation
        f.write("hello")
    with open(raw + b"/\xff.png", "wb") as f:
        f.write(png_bytes(10, 8))
    # a JSON escape naming that file ("\udcff" is how Python spells the byte 0xff)
    (project / "raw" / "escaped.json").write_text(json.dumps(  # ASCII JSON with \u escapes
        labelme_doc([rect("a", 1, 1, 4, 3)], "\udcff.png", imageWidth=10, imageHeight=8)))
    # a shape kind that is a lone surrogate ends up in a warning's text
    (project / "raw" / "kind.json").write_text(json.dumps(
        labelme_doc([rect("a", 1, 1, 4, 3), {"label": "a", "points": [[1, 1]],
                                             "shape_type": "\udcff"}], "good.png",
                    imageWidth=10, imageHeight=8)))

    summary = convert(project, jobs=2)
    assert (summary.seen, summary.converted, summary.rejected) == (5, 1, 4)
    assert manifest_ids(project) == ["good"]
    found = verdicts(project)
    assert found["bad\\xff.json"] == [("bad_filename", "error")]
    assert found["lot\\xe9/x.json"] == [("bad_filename", "error")]
    assert found["escaped.json"] == [("bad_filename", "error")]
    assert found["kind.json"] == [("unsupported_shape", "error")]  # convert.undrawable: error
    assert message(project, "kind.json", "unsupported_shape").startswith(
        "kind.json shape 1 (\udcff 'a'): kind must be one of")
    assert message(project, "bad\\xff.json", "bad_filename") == (
        "bad\\xff.json: file and folder names must be valid UTF-8, got undecodable bytes "
        "(shown as \\xNN); rename it")
    assert "### `bad\\xff.json`" in (project / "reports/validation.md").read_text("utf-8")
    again = convert(project, jobs=1)  # the cache of this run is valid JSON too
    assert (again.converted, again.reused, again.processed) == (1, 3, 2)  # names: judged anew


# ------------------------------------------------------------------------------ 7. geometry


def test_a_tangled_polygon_is_an_error_at_bounded_time_and_memory(project: Path) -> None:
    points = np.random.default_rng(0).uniform(0, 512, (2000, 2)).round(2).tolist()
    scribble = {"label": "a", "points": points, "shape_type": "polygon"}
    labelme(project / "raw" / "scribble.json", [scribble], 512, 512, png_bytes(512, 512))
    for repair in (0.05, 1.0):  # the default, and any repair accepted
        write_params(project, max_repair_change=repair)
        code, peak_mb, err = peak_rss_mb(project, "-j", "2")  # it hung forever with -j 2
        assert code == 0, err
        assert peak_mb < 1024  # it took 5.5 GB and segfaulted
        assert manifest_ids(project) == ["good"]
        assert verdicts(project)["scribble.json"] == [("invalid_polygon", "error")]
        text = message(project, "scribble.json", "invalid_polygon")
        assert text.startswith("scribble.json shape 0 (polygon 'a'): self-intersecting polygon "
                               "(Self-intersection[")
        assert text.endswith("too complex to check at a bounded cost: its edges cross or touch "
                             "more than 1000 times; redraw or simplify it; the file is left out "
                             "(convert.undrawable: ignore would mark the shape's bounding box "
                             "as ignore and convert the rest)")


# ------------------------------------------------------------------------------ 8. huge size


def test_a_huge_declared_size_is_image_size_with_small_memory(project: Path) -> None:
    for name, side in (("huge", 60000), ("huger", 100000)):
        labelme(project / "raw" / f"{name}.json", [rect("a", 0, 0, side - 1, side - 1)], side,
                side, png_bytes(16, 16))
    code, peak_mb, err = peak_rss_mb(project, "-j", "1")
    assert code == 0, err
    assert peak_mb < 1024  # a canvas of the declared size took 3.5 GB (100000^2: MemoryError)
    assert manifest_ids(project) == ["good"]
    found = verdicts(project)
    assert found["huge.json"] == [("image_size", "error")]
    assert found["huger.json"] == [("image_size", "error")]
    assert message(project, "huger.json", "image_size") == (
        "declared image size 100000x100000 must equal the image's real size 16x16")


# ------------------------------------------------------------------------------ dead worker

DYING = """
import os, signal, sys
from pipeline.convert import sample
from pipeline.cli import main
real = sample._convert_sample
def dying(task, write):
    if task.sample.id.endswith("die"):  # the special file: raw/die.json
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    return real(task, write)
sample._convert_sample = dying
sys.exit(main(["convert", "--params", sys.argv[1], "-j", sys.argv[2]]))
"""


def test_a_worker_that_dies_is_an_internal_error_and_the_run_finishes(project: Path) -> None:
    make_samples(project / "raw", 30, size=32)
    labelme(project / "raw" / "die.json", [rect("a", 1, 1, 4, 3)], 10, 8, png_bytes(10, 8))
    for jobs in ("1", "2"):
        name = write_params(project, f"j{jobs}.yaml", out_dir=f"out{jobs}",
                            reports_dir=f"rep{jobs}")
        run = subprocess.run([sys.executable, "-c", DYING, name, jobs], cwd=project, env=env(),
                             capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 0, run.stderr  # finished (it hung forever with a Pool)
        assert "32 samples: 31 converted, 1 rejected" in run.stdout
        assert verdicts(project, f"rep{jobs}")["die.json"] == [("internal_error", "error")]
    issues = json.loads((project / "rep2" / "validation.json").read_text())
    assert [i["message"] for i in issues if i["file"] == "die.json"] == [
        "converting die.json failed: its worker process was killed by SIGKILL (the "
        "out-of-memory killer sends it); the run went on without it (a bug in segpipe or a "
        "library; please report it with this file)"]
    assert tree(project / "out1") == tree(project / "out2")  # whatever -j
    assert tree(project / "rep1") == tree(project / "rep2")
    again = subprocess.run([sys.executable, "-m", "pipeline", "convert", "--params", "j2.yaml"],
                           cwd=project, env=env(), capture_output=True, text=True, timeout=120,
                           check=False)
    assert "(1 processed, 31 reused" in again.stdout  # not cached: tried again, converts now
    assert "32 converted" in again.stdout


# ------------------------------------------------------------------------------ 11. ordering

KILL_AT = """
import os, signal, sys
from pipeline.convert import stage
from pipeline.cli import main
calls = []
def killing(real):
    def call(*args, **kwargs):
        calls.append(real)
        if len(calls) == int(sys.argv[1]):
            os.killpg(os.getpgid(0), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
for name in ("write_json", "write_text", "write_csv", "remove_files", "prune_outputs"):
    if hasattr(stage, name):
        setattr(stage, name, killing(getattr(stage, name)))
sys.exit(main(["convert", "-j", "1"]))
"""


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5])
def test_a_kill_while_finishing_never_leaves_a_manifest_naming_a_missing_file(
        project: Path, kill_at: int) -> None:
    make_samples(project / "raw", 3, size=32)
    convert(project)
    assert manifest_ids(project) == ["good", "s000", "s001", "s002"]
    (project / "raw" / "s000.json").unlink()  # gone: its outputs are stale
    labelme(project / "raw" / "s001.json", [rect("hexagon", 1, 1, 4, 3)], 32, 32,
            png_bytes(32, 32))  # now rejected: its outputs are stale too
    killed = subprocess.run([sys.executable, "-c", KILL_AT, str(kill_at)], cwd=project,
                            env=env(), capture_output=True, text=True, timeout=120, check=False,
                            start_new_session=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    out = project / "prepared"
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            assert (out / row["image"]).is_file() and (out / row["mask"]).is_file(), row["id"]
    convert(project)
    assert manifest_ids(project) == ["good", "s002"]
    assert sorted(tree(out)) == [".convert-cache.json", "images/good.png", "images/s002.png",
                                 "manifest.csv", "masks/good.png", "masks/s002.png"]
