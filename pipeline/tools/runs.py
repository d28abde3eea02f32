"""A run's committed results, read at a git revision or from the working tree, and checked.

`segpipe compare` and `segpipe history` read the same four files of a run: metrics.json
(evaluate), images.json (evaluate's per-image counts), data.json (convert) and splits.csv
(split). They are read from git without a checkout (`git cat-file --batch`: any number of
REV:PATH in one process) and parsed into frozen records; any file that is not what the
pipeline writes is a `BadRunFile` (exit 3) naming the file, the revision and every problem.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

_SHOWN = 5  # problems listed per file before "... and N more"


class BadRunFile(PipelineError):
    """A run's file is missing, unreadable or malformed, or git cannot be asked for it."""

    exit_code = 3


@dataclass(frozen=True)
class EvalScores:
    """One eval set's section of metrics.json (None = NaN/null or absent)."""

    miou: float | None
    miou_fg: float | None
    iou: Mapping[str, float | None]  # class -> IoU, in the file's order
    n_images: int | None
    eval_fingerprint: str | None


@dataclass(frozen=True)
class RunMetrics:
    val: EvalScores
    benchmark: EvalScores | None  # None when the run has no benchmark set

    def section(self, eval_set: str) -> EvalScores | None:
        return self.benchmark if eval_set == "benchmark" else self.val


@dataclass(frozen=True)
class FileCounts:
    """convert's file counts from data.json (None when the file does not say)."""

    seen: int | None
    converted: int | None
    rejected: int | None
    warnings: int | None


@dataclass(frozen=True)
class ImageCounts:
    """One eval set of images.json: per image its split group and per-class counts."""

    eval_fingerprint: str
    classes: tuple[str, ...]
    ids: tuple[str, ...]  # sorted
    groups: tuple[str, ...]
    intersection: np.ndarray  # (images, classes) int64: pixels predicted and annotated as it
    union: np.ndarray  # (images, classes) int64: pixels predicted or annotated as it


def where(rev: str | None, commit: str | None = None) -> str:
    """How messages name a side: "in the working tree" or "at HEAD (1a2b3c4)"."""
    if rev is None:
        return "in the working tree"
    return f"at {rev} ({commit})" if commit and commit != rev else f"at {rev}"


# ---------------------------------------------------------------- git


def git(args: Sequence[str], cwd: Path, what: str, stdin: bytes | None = None
        ) -> subprocess.CompletedProcess[bytes]:
    """Run git; `what` says what it was asked for, for the message when git is not there."""
    try:
        return subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True,
                              check=False)
    except FileNotFoundError:
        raise BadRunFile(f"cannot read {what}: git must be on PATH, got no `git` "
                         "executable (install git)") from None


def resolve_revision(rev: str, cwd: Path, what: str) -> str:
    """The short commit id of REV; BadRunFile when it is not a commit here."""
    done = git(["rev-parse", "--verify", "--quiet", "--short", f"{rev}^{{commit}}"], cwd,
               f"{what} at {rev}")
    if done.returncode != 0:
        inside = git(["rev-parse", "--is-inside-work-tree"], cwd, what).returncode == 0
        why = ("no such commit here (in CI, check out the full history: actions/checkout "
               "with fetch-depth: 0)") if inside else "not inside a git repository"
        raise BadRunFile(f"cannot read {what}: git revision {rev!r}: {why}")
    return done.stdout.decode().strip()


def read_blobs(specs: Sequence[tuple[str, str]], cwd: Path) -> list[bytes | None]:
    """The contents of (commit, path) pairs, paths relative to cwd; None where absent.

    One `git cat-file --batch` answers them all: reading 50 revisions costs one process, not
    150 `git show` calls, and nothing is checked out.
    """
    if not specs:
        return []
    prefix = git(["rev-parse", "--show-prefix"], cwd, f"{specs[0][1]} at {specs[0][0]}")
    if prefix.returncode != 0:
        raise BadRunFile(f"cannot read {specs[0][1]} at {specs[0][0]}: not inside a git "
                         "repository")
    base = prefix.stdout.decode().strip()
    query = "".join(f"{rev}:{base}{path}\n" for rev, path in specs).encode()
    done = git(["cat-file", "--batch"], cwd, f"{specs[0][1]} at {specs[0][0]}", stdin=query)
    out, pos, blobs = done.stdout, 0, []
    for rev, path in specs:
        end = out.find(b"\n", pos)
        if end < 0:
            raise BadRunFile(f"cannot read {path} at {rev}: git cat-file stopped early: "
                             f"{done.stderr.decode(errors='replace').strip()}")
        header = out[pos:end].split()
        pos = end + 1
        if len(header) != 3 or header[1] != b"blob":  # "<spec> missing", or not a file
            blobs.append(None)
            continue
        size = int(header[2])
        blobs.append(out[pos:pos + size])
        pos += size + 1  # the blob is followed by a newline
    return blobs


def read_working(path: str, cwd: Path) -> bytes | None:
    """`path` (relative to cwd) in the working tree; None when absent."""
    file = cwd / path
    if not file.exists():
        return None
    try:
        return file.read_bytes()
    except OSError as exc:
        raise BadRunFile(f"cannot read {path} in the working tree: {exc}") from None


# ---------------------------------------------------------------- parsing


def _number(value: Any, name: str, problems: list[str]) -> float | None:
    """A score: a finite number, or None for null/NaN; anything else is a problem."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"{name} must be a number or null, got {_short(value)}")
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def _count(value: Any, name: str, problems: list[str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append(f"{name} must be a count (an integer >= 0), got {_short(value)}")
        return None
    return value


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _raise(problems: list[str], path: str, side: str) -> None:
    if problems:
        more = f"; ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise BadRunFile(f"{path} {side}: " + "; ".join(problems[:_SHOWN]) + more)


def load_json(data: bytes | None, path: str, side: str, hint: str) -> dict[str, Any]:
    """A JSON object; missing, invalid or not an object is a BadRunFile."""
    if data is None:
        raise BadRunFile(f"{path} is missing {side}: {hint}")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRunFile(f"{path} {side} must be valid JSON, got {exc}") from None
    if not isinstance(value, dict):
        raise BadRunFile(f"{path} {side} must be a JSON object, got {type(value).__name__}")
    return value


def _scores(raw: Mapping[str, Any], prefix: str, problems: list[str]) -> EvalScores:
    iou_raw = raw.get("iou")
    iou: dict[str, float | None] = {}
    if not isinstance(iou_raw, dict):
        problems.append(f"{prefix}iou must be an object of class -> IoU, got {_short(iou_raw)}")
    else:
        iou = {str(c): _number(v, f"{prefix}iou.{c}", problems) for c, v in iou_raw.items()}
    if "miou" not in raw:
        problems.append(f"{prefix}miou must be a number or null, got nothing")
    fingerprint = raw.get("eval_fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        problems.append(f"{prefix}eval_fingerprint must be a string, got {_short(fingerprint)}")
        fingerprint = None
    return EvalScores(miou=_number(raw.get("miou"), f"{prefix}miou", problems),
                      miou_fg=_number(raw.get("miou_fg"), f"{prefix}miou_fg", problems),
                      iou=iou, n_images=_count(raw.get("n_images"), f"{prefix}n_images",
                                               problems),
                      eval_fingerprint=fingerprint)


def parse_metrics(data: bytes | None, path: str, side: str) -> RunMetrics:
    """metrics.json as evaluate writes it; every wrong type is named."""
    raw = load_json(data, path, side, "run the pipeline (`dvc repro`) and commit its metrics")
    problems: list[str] = []
    val = _scores(raw, "", problems)
    bench_raw = raw.get("benchmark")
    bench = None
    if isinstance(bench_raw, dict):
        bench = _scores(bench_raw, "benchmark.", problems)
    elif bench_raw is not None:
        problems.append(f"benchmark must be an object or absent, got {_short(bench_raw)}")
    _raise(problems, path, side)
    return RunMetrics(val, bench)


def parse_data(data: bytes | None, path: str, side: str) -> FileCounts:
    """The file counts of convert's data.json."""
    raw = load_json(data, path, side, "run the pipeline (`dvc repro`) and commit its metrics")
    files = raw.get("files", {})
    problems: list[str] = []
    if not isinstance(files, dict):
        problems.append(f"files must be an object of counts, got {_short(files)}")
        files = {}
    counts = FileCounts(*(_count(files.get(k), f"files.{k}", problems)
                          for k in ("seen", "converted", "rejected", "warnings")))
    _raise(problems, path, side)
    return counts


def parse_splits(data: bytes | None, path: str, side: str) -> dict[str, str] | None:
    """splits.csv: id -> split; None when the file is absent."""
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRunFile(f"{path} {side} must be UTF-8 text, got byte 0x{data[exc.start]:02x} "
                         f"at offset {exc.start}") from None
    try:
        rows = csv.DictReader(io.StringIO(text))
        fields = rows.fieldnames or []
        if not {"id", "split"} <= set(fields):
            raise BadRunFile(f"{path} {side} must have the columns id and split, got {fields}")
        return {row["id"]: row["split"] for row in rows}
    except csv.Error as exc:
        raise BadRunFile(f"{path} {side} must be a CSV file, got {exc}") from None


def parse_images(data: bytes | None, path: str, side: str) -> dict[str, ImageCounts] | None:
    """images.json: eval set -> ImageCounts; None when the file is absent (a run made before
    evaluate wrote it)."""
    if data is None:
        return None
    raw = load_json(data, path, side, "")
    problems: list[str] = []
    classes = raw.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        _raise([f"classes must be a list of class names, got {_short(classes)}"], path, side)
    out = {}
    for name, section in raw.items():
        if name == "classes":
            continue
        counts = _image_section(section, name, tuple(classes), problems)
        if counts is not None:
            out[name] = counts
    _raise(problems, path, side)
    return out


def _image_section(section: Any, name: str, classes: tuple[str, ...], problems: list[str]
                   ) -> ImageCounts | None:
    if not isinstance(section, dict) or not isinstance(section.get("images"), list):
        problems.append(f"{name} must be an object with an images list, got {_short(section)}")
        return None
    fingerprint = section.get("eval_fingerprint")
    if not isinstance(fingerprint, str):
        problems.append(f"{name}.eval_fingerprint must be a string, got {_short(fingerprint)}")
    ids, groups, inter, union = [], [], [], []
    for k, row in enumerate(section["images"]):
        at = f"{name}.images[{k}]"
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) \
                or not isinstance(row.get("group"), str):
            problems.append(f"{at} must be an object with string id and group, got "
                            f"{_short(row)}")
            continue
        pair = [row.get("intersection"), row.get("union")]
        if not all(isinstance(v, list) and len(v) == len(classes)
                   and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
                   for v in pair):
            problems.append(f"{at} ({row['id']}): intersection and union must be "
                            f"{len(classes)} counts (integers >= 0), got {_short(pair)}")
            continue
        if any(i > u for i, u in zip(*pair, strict=True)):
            problems.append(f"{at} ({row['id']}): intersection must be <= union, got "
                            f"{_short(pair)}")
            continue
        ids.append(row["id"])
        groups.append(row["group"])
        inter.append(pair[0])
        union.append(pair[1])
    if len(set(ids)) != len(ids):
        problems.append(f"{name}: image ids must be unique")
    if problems:
        return None
    order = sorted(range(len(ids)), key=ids.__getitem__)  # by id, as evaluate writes them
    shape = (len(ids), len(classes))
    return ImageCounts(eval_fingerprint=str(fingerprint), classes=classes,
                       ids=tuple(ids[i] for i in order), groups=tuple(groups[i] for i in order),
                       intersection=np.array(inter, dtype=np.int64).reshape(shape)[order],
                       union=np.array(union, dtype=np.int64).reshape(shape)[order])


def check_counts(counts: ImageCounts, scores: EvalScores, images_path: str, metrics_path: str,
                 side: str) -> None:
    """images.json must describe the same evaluation as metrics.json (a stale or edited file
    would give intervals around other numbers): same images, and the counts summed over the
    images give metrics.json's IoU of every class."""
    problems = []
    if counts.eval_fingerprint != scores.eval_fingerprint:
        problems.append(f"eval_fingerprint {counts.eval_fingerprint} must equal "
                        f"{metrics_path}'s {scores.eval_fingerprint}")
    inter, union = counts.intersection.sum(axis=0), counts.union.sum(axis=0)
    for c, name in enumerate(counts.classes):
        summed = float(inter[c] / union[c]) if union[c] > 0 else None
        expected = scores.iou.get(name)
        if (summed is None) != (expected is None) or (
                summed is not None and expected is not None and abs(summed - expected) > 1e-9):
            problems.append(f"IoU {name} from the counts must equal {metrics_path}'s "
                            f"{expected}, got {summed}")
    if problems:
        raise BadRunFile(f"{images_path} {side} does not match {metrics_path} (a stale file? "
                         f"re-run `segpipe evaluate`): " + "; ".join(problems[:_SHOWN]))
