"""Stage `convert`: annotations in `convert.raw_dir` -> images, masks, manifest and reports.

    segpipe convert [--params params.yaml] [-j N]

For every sample (the annotation files sharing one id, see pipeline/formats) the stage reads
and merges the annotations, loads the image (embedded data first, else the file), decides
the image frame (EXIF, see `decide_frame`), validates the shapes, rasterises them and writes

    <out_dir>/images/<id>.<ext>     the image in the annotation frame (original bytes if possible)
    <out_dir>/masks/<id>.png        palette PNG, pixel = class index, 255 = ignore
    <out_dir>/manifest.csv          one row per converted sample (columns: MANIFEST_COLUMNS)
    <reports_dir>/validation.json   every issue: file, shape, check, severity, message
    <reports_dir>/validation.md     the same, readable: counts, then issues grouped by file
    <reports_dir>/data.json         files seen/converted/rejected/warnings, per-class figures

A rejected sample is left out of the manifest and listed in the reports; it never stops the
others. The stage fails (exit 1, one screen, no traceback) only when `convert.strict` is set
and something was rejected, or when the rejected share exceeds `convert.max_error_fraction`.

Incremental: `<out_dir>/.convert-cache.json` keeps, per sample, the key (content hashes of its
annotation(s), its image and the params that change masks), its manifest row, its issues and
whether its row passed the schema checks, so rejected samples are remembered too. A sample
whose key and outputs are unchanged is reused; only new or changed samples are converted, in
parallel (`-j`), and only their rows get the per-row schema checks (the whole table gets the
table-wide ones). The hash memo (`default_memo_path`, outside the repo) maps each input's
stamp (size, mtime, ctime, inode) to its content hash, so a re-run reads only the inputs
whose stamp changed; the key stays the content hash. Outputs of samples that
are gone (or now rejected) are removed. Every write is atomic, and the cache is saved every
few seconds, so a killed run loses at most that much work and leaves no half-written file.
The output bytes do not depend on `-j` or on what was reused.
"""

from __future__ import annotations

import enum
import functools
import json
import multiprocessing
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import click
from tqdm import tqdm

from pipeline import formats, io, raster, validate
from pipeline.errors import InputError, ParamsError, StageFailed
from pipeline.params import ConvertParams, Labels, Params, load_params
from pipeline.records import Issue, Record, is_error

#: Bump when a change in this stage (or in formats/validate/raster) changes its outputs:
#: every cached sample is then converted again.
CODE_VERSION = "1"
CACHE_FILE = ".convert-cache.json"
#: Labelme annotates the EXIF-rotated image from this version on (older: the raw pixels).
LABELME_ROTATES_FROM = (3, 11)
#: Least seconds between cache saves while converting (what a killed run can lose); more
#: when a save is slow, so that saving stays a small share of the run.
CACHE_SAVE_EVERY = 2.0
#: An input changed less than this many seconds before it was read is not put in the hash
#: memo (a write within one tick of the file system's clock could repeat its stamp): for
#: whole-second timestamps, and for sub-second ones (see io.FileStamp.settled).
MEMO_SETTLE_S = 1.0
MEMO_SETTLE_FINE_S = 0.1
FIXED_COLUMNS = ("id", "annotation", "image", "mask", "format", "width", "height", "n_shapes",
                 "group", "image_hash", "mask_hash", "key")


def manifest_columns(classes: Sequence[str]) -> list[str]:
    """The manifest's columns, in order: FIXED_COLUMNS, px.<class> per class, px.ignore."""
    return [*FIXED_COLUMNS, *(f"px.{c}" for c in classes), "px.ignore"]


# --------------------------------------------------------------------------------------------
# Samples and keys


@dataclass(frozen=True)
class Sample:
    """The annotation files of one sample id (raw-dir-relative posix paths, sorted)."""

    id: str
    annotations: tuple[str, ...]


def find_samples(raw_dir: Path) -> list[Sample]:
    """Every annotation under `raw_dir`, grouped by sample id; sorted by id."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for rel in formats.find_annotation_paths(raw_dir):
        grouped[rel.rpartition(".")[0]].append(rel)  # the sample id: no extension
    return [Sample(i, tuple(sorted(grouped[i]))) for i in sorted(grouped)]


def params_key(labels: Labels, cfg: ConvertParams) -> str:
    """Hash of everything besides the input files that changes a sample's outputs or issues."""
    relevant = {
        "code": CODE_VERSION,
        "classes": list(labels.classes),
        "ignore_labels": list(labels.ignore_labels),
        "aliases": sorted(labels.aliases.items()),
        "line_width": cfg.line_width,
        "point_radius": cfg.point_radius,
        "max_repair_change": cfg.max_repair_change,
    }
    return io.content_hash(json.dumps(relevant, sort_keys=True).encode())


def tree_signature(raw_dir: Path) -> str:
    """Hash of the names of all (non-hidden) files under `raw_dir`.

    A sample whose image could not be found depends on it: adding the missing image (under
    any name the readers would look for) makes it convert again.
    """
    names = []
    for dirpath, dirnames, filenames in os.walk(raw_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(raw_dir).as_posix()
        names += [f"{rel}/{n}" for n in filenames if not n.startswith(".")]
    return io.content_hash("\n".join(sorted(names)).encode())


def sample_key(pkey: str, deps: dict[str, str | None], tree: str | None) -> str:
    """The cache key of a sample: params key + content hash of each input (None = absent)."""
    return io.content_hash(json.dumps([pkey, sorted(deps.items()), tree]).encode())


# --------------------------------------------------------------------------------------------
# The image frame


@dataclass(frozen=True)
class Frame:
    """The frame the annotation was drawn in: the mask size, and whether to rotate pixels."""

    width: int
    height: int
    rotate: bool  # True: the annotation is in the EXIF-rotated frame


def tool_rotates(fmt: str, version: str | None) -> bool:
    """Whether the tool showed the annotator the EXIF-rotated image.

    Labelme >= 3.11 does (older versions, or files with no version, do not); LabelImg does
    for VOC and YOLO (from 1.8.4; its files carry no version). A merged sample follows its
    Labelme file.
    """
    if "labelme" not in fmt.split("+"):
        return True
    parts = []
    for text in (version or "").split(".")[:2]:
        digits = "".join(ch for ch in text if ch.isdigit())
        if not digits:
            return False
        parts.append(int(digits))
    return tuple(parts) >= LABELME_ROTATES_FROM


def decide_frame(declared: tuple[int, int] | None, image: io.ImageInfo, fmt: str,
                 version: str | None) -> tuple[Frame | None, str | None]:
    """Compare the declared size with the raw and the EXIF-rotated size; never rotate blindly.

    Returns (frame, None), or (None, message) when the declared size matches neither.
    - no EXIF orientation: the raw frame; the declared size (if any) must equal the image's.
    - declared equals the raw size only: raw frame; the rotated size only: rotated frame.
    - both (a square image, or a flip/180 degree orientation) or no declared size: the frame
      the tool showed (`tool_rotates`).
    """
    raw = (image.width, image.height)
    rotated = image.rotated_size
    if image.orientation == 1:
        if declared is None or declared == raw:
            return Frame(*raw, rotate=False), None
        return None, (f"declared image size {_size(declared)} must equal the image's real size "
                      f"{_size(raw)}")
    if declared is None or (declared == raw and declared == rotated):
        rotate = tool_rotates(fmt, version)
    elif declared == rotated:
        rotate = True
    elif declared == raw:
        rotate = False
    else:
        return None, (f"declared image size {_size(declared)} must equal the image's real size, "
                      f"got {_size(raw)} as stored and {_size(rotated)} after EXIF rotation "
                      f"(orientation {image.orientation})")
    return (Frame(*rotated, rotate=True) if rotate else Frame(*raw, rotate=False)), None


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# --------------------------------------------------------------------------------------------
# One sample (runs in a worker process)


@dataclass(frozen=True)
class Task:
    """Everything a worker needs to convert one sample (picklable)."""

    sample: Sample
    raw_dir: str
    out_dir: str
    labels: Labels
    cfg: ConvertParams
    pkey: str
    tree: str


@dataclass(frozen=True)
class Outcome:
    """The result of one sample: what the manifest, the reports and the cache need."""

    id: str
    annotations: tuple[str, ...]
    key: str
    deps: dict[str, str | None]  # raw-relative input path -> content hash (None: absent)
    tree: bool  # the key includes the raw dir's tree signature (the image was not found)
    issues: tuple[Issue, ...]
    row: dict[str, Any] | None = None  # manifest row without `group`; None when rejected
    mask: dict[str, Any] | None = None  # facts read back from the mask file (mask schema)
    outputs: dict[str, int] = field(default_factory=dict)  # out-relative path -> size
    source_hash: str | None = None  # hash of the image bytes as given (duplicate detection)
    cacheable: bool = True
    #: inputs this run read, with their stamps: what the hash memo learns (not cached)
    stamps: dict[str, MemoEntry] = field(default_factory=dict)

    @property
    def converted(self) -> bool:
        return self.row is not None


def convert_sample(task: Task) -> Outcome:
    """Read, check, draw and write one sample. Never raises for bad data: a problem becomes
    an error Issue; an unexpected exception becomes an "internal_error" Issue naming the file
    (and the sample is not cached, so it is retried on the next run)."""
    try:
        return _convert_sample(task, io.replace_bytes)
    except Exception as exc:  # reported below as an issue naming the file, never hidden
        return _internal_error(task, exc)


def convert_chunk(tasks: Sequence[Task]) -> list[Outcome]:
    """`convert_sample` for each task, in order, with the output files written by a helper
    thread: creating files can block for milliseconds on a busy disk, and meanwhile this
    process already decodes and draws the next sample. Returns when every file is written
    (an outcome never names a file that is not there yet); a failed write makes its sample
    an "internal_error", as in `convert_sample`."""
    done: list[tuple[Task, Outcome, list[Future[None]]]] = []
    with ThreadPoolExecutor(max_workers=1) as writer:
        for task in tasks:
            writes: list[Future[None]] = []
            try:
                outcome = _convert_sample(task, functools.partial(_submit, writer, writes))
            except Exception as exc:  # as in convert_sample: an issue naming the file
                outcome = _internal_error(task, exc)
            done.append((task, outcome, writes))
    outcomes = []
    for task, outcome, writes in done:
        failed = next((f.exception() for f in writes if f.exception() is not None), None)
        outcomes.append(outcome if failed is None else _internal_error(task, failed))
    return outcomes


def _submit(writer: ThreadPoolExecutor, writes: list[Future[None]], path: Path,
            data: bytes) -> None:
    writes.append(writer.submit(io.replace_bytes, path, data))


def _internal_error(task: Task, exc: BaseException) -> Outcome:
    file = ";".join(task.sample.annotations)
    message = (f"converting {file} failed unexpectedly: {type(exc).__name__}: {exc} "
               "(a bug in segpipe; please report it with this file)")
    return Outcome(task.sample.id, task.sample.annotations, "", {}, False,
                   (Issue(file, None, "internal_error", "error", message),), cacheable=False)


def _convert_sample(task: Task, write: Callable[[Path, bytes], object]) -> Outcome:
    sample, raw_dir, out_dir = task.sample, Path(task.raw_dir), Path(task.out_dir)
    deps: dict[str, str | None] = {}
    issues: list[Issue] = []
    records: list[Record] = []
    stamps: dict[str, MemoEntry] = {}
    for annotation in sample.annotations:
        deps[annotation] = _hash_input(raw_dir, annotation, stamps)
        record, found = formats.read_annotation(raw_dir / annotation, raw_dir)
        issues += found
        if record is not None:
            records.append(record)

    def rejected(tree: bool) -> Outcome:
        key = sample_key(task.pkey, deps, task.tree if tree else None)
        return Outcome(sample.id, sample.annotations, key, deps, tree, tuple(issues),
                       stamps=stamps)

    if len(records) != len(sample.annotations):
        return rejected(tree=True)  # a reader error (e.g. no image yet): recheck on new files
    record = formats.merge_records(records)
    declared = (record.width, record.height) if record.width and record.height else None

    loaded, image_issues, image_deps = _load_image(record, raw_dir, stamps)
    issues += image_issues
    deps.update(image_deps)
    if loaded is None:
        if declared is not None:  # still report the shapes' problems, against the declared size
            issues += validate.check_record(record, *declared, task.labels, task.cfg)[1]
        return rejected(tree=not image_deps)
    data, info = loaded
    source_hash = next(iter(image_deps.values())) if image_deps else io.content_hash(data)
    frame, problem = decide_frame(declared, info, record.format, record.version)
    if frame is None:
        issues.append(Issue(record.annotation, None, "image_size", "error", str(problem)))
        if declared is not None:
            issues += validate.check_record(record, *declared, task.labels, task.cfg)[1]
        return rejected(tree=False)
    pairs, check_issues = validate.check_record(record, frame.width, frame.height, task.labels,
                                                task.cfg)
    issues += check_issues
    if is_error(issues):
        return rejected(tree=False)

    key = sample_key(task.pkey, deps, None)
    mask = raster.rasterize(pairs, frame.width, frame.height, line_width=task.cfg.line_width,
                            point_radius=task.cfg.point_radius)
    mask_png = io.mask_png_bytes(mask)
    image_bytes, ext = io.prepared_image(data, info, frame.rotate)
    stored = info if image_bytes is data else io.probe_image(image_bytes)
    image_rel, mask_rel = f"images/{sample.id}.{ext}", f"masks/{sample.id}.png"
    # run_convert made the directories (io.make_dirs): one mkdir per directory, not per file
    write(out_dir / image_rel, image_bytes)
    write(out_dir / mask_rel, mask_png)

    facts = io.inspect_mask(mask_png, mask)
    n_classes = len(task.labels.classes)
    counts = facts.counts or (0,) * 256
    row: dict[str, Any] = {
        "id": sample.id, "annotation": ";".join(sample.annotations), "image": image_rel,
        "mask": mask_rel, "format": record.format, "width": frame.width,
        "height": frame.height, "n_shapes": len(pairs),
        "image_hash": source_hash if image_bytes is data else io.content_hash(image_bytes),
        "mask_hash": io.content_hash(mask_png),
        "key": key,
        **{f"px.{c}": counts[i] for i, c in enumerate(task.labels.classes)},
        "px.ignore": counts[io.IGNORE],
    }
    mask_facts = {
        "mask": mask_rel, "mode": facts.mode, "dtype": facts.dtype, "channels": facts.channels,
        "width": facts.width, "height": facts.height,
        "image_width": stored.width, "image_height": stored.height,  # as read_rgb sees it
        "stray_pixels": sum(counts[n_classes:io.IGNORE]) + sum(counts[io.IGNORE + 1:]),
    }
    outputs = {image_rel: len(image_bytes), mask_rel: len(mask_png)}
    return Outcome(sample.id, sample.annotations, key, deps, False, tuple(issues), row,
                   mask_facts, outputs, source_hash, stamps=stamps)


def _hash_input(raw_dir: Path, rel: str, stamps: dict[str, MemoEntry]) -> str | None:
    """io.file_hash of an input file, noting its stamp in `stamps` (when settled)."""
    try:
        data, stamp = io.read_stamped(raw_dir / rel)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    digest = io.content_hash(data)
    if stamp.settled(time.time_ns(), MEMO_SETTLE_S, MEMO_SETTLE_FINE_S):
        stamps[rel] = MemoEntry(stamp, digest)
    return digest


def _load_image(record: Record, raw_dir: Path, stamps: dict[str, MemoEntry]
                ) -> tuple[tuple[bytes, io.ImageInfo] | None, list[Issue], dict[str, str | None]]:
    """The sample's image: embedded data first, else the file. Returns ((bytes, info) or None,
    issues, {image file: hash} when a file was read); notes the file's stamp in `stamps`."""
    file = record.annotation
    failures: list[io.ImageError] = []
    if record.image_data is not None:
        try:
            return (record.image_data, io.probe_image(record.image_data)), [], {}
        except io.ImageError as exc:
            failures.append(exc)
    deps: dict[str, str | None] = {}
    if record.image_path is not None:
        path = raw_dir / record.image_path
        try:
            data, stamp = io.read_stamped(path)
        except OSError as exc:
            deps[record.image_path] = None
            issue = Issue(file, None, "image_missing", "error",
                          f"image {record.image_path} must be a readable file, got "
                          f"{exc.strerror or exc}")
            return None, [issue], deps
        deps[record.image_path] = digest = io.content_hash(data)
        if stamp.settled(time.time_ns(), MEMO_SETTLE_S, MEMO_SETTLE_FINE_S):
            stamps[record.image_path] = MemoEntry(stamp, digest)
        try:
            info = io.probe_image(data)
        except io.ImageError as exc:
            failures.append(io.ImageError(exc.check, f"image {record.image_path}: {exc}"))
        else:
            issues = []
            if failures:
                issues.append(Issue(file, None, "image_data_unreadable", "warning",
                                    f"embedded imageData: {failures[0]}; used "
                                    f"{record.image_path} instead"))
            return (data, info), issues, deps
    if not failures:
        return None, [Issue(file, None, "image_missing", "error",
                            "the annotation must name an image or embed imageData, got neither"
                            )], deps
    first = failures[0]
    where = "" if record.image_path is not None or record.image_data is None else \
        "embedded imageData: "
    return None, [Issue(file, None, first.check, "error", f"{where}{first}")], deps


# --------------------------------------------------------------------------------------------
# The cache


def load_cache(path: Path) -> dict[str, dict[str, Any]]:
    """Cached outcomes by id; an unreadable cache is simply empty (everything converts)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("code") != CODE_VERSION:
        return {}
    entries = raw.get("entries")
    return entries if isinstance(entries, dict) else {}


def save_cache(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Write the cache (entries by id, sorted: the file is deterministic)."""
    text = json.dumps({"code": CODE_VERSION, "entries": dict(sorted(entries.items()))},
                      ensure_ascii=False, separators=(",", ":"))
    io.write_text(path, text + "\n")


def to_entry(outcome: Outcome) -> dict[str, Any]:
    """An outcome as a JSON-able cache entry (shallow; cheap enough to do per sample)."""
    return {"annotations": list(outcome.annotations), "key": outcome.key, "deps": outcome.deps,
            "tree": outcome.tree, "issues": [dict(vars(i)) for i in outcome.issues],
            "row": outcome.row, "mask": outcome.mask, "outputs": outcome.outputs,
            "source_hash": outcome.source_hash}


def _from_entry(sample_id: str, entry: dict[str, Any],
                stamps: dict[str, MemoEntry] | None = None) -> Outcome:
    return Outcome(
        id=sample_id, annotations=tuple(entry["annotations"]), key=entry["key"],
        deps=dict(entry["deps"]), tree=bool(entry["tree"]),
        issues=tuple(Issue(**i) for i in entry["issues"]), row=entry["row"],
        mask=entry["mask"], outputs=dict(entry["outputs"]), source_hash=entry["source_hash"],
        stamps=stamps or {})


def reusable(sample: Sample, entry: dict[str, Any] | None, raw_dir: Path, out_dir: Path,
             pkey: str, tree: str, memo: dict[str, MemoEntry] | None = None,
             read: bool = True) -> Outcome | NeedsRead | None:
    """The cached outcome of `sample` when its key still holds and its outputs are in place.

    The key is made of content hashes; `memo` gives the hash of an input whose stamp is
    unchanged without reading it. With `read=False`, an input the memo cannot vouch for
    gives NEEDS_READ instead of being read (the caller reads those in threads). The inputs
    hashed (or confirmed through the memo) go to the returned outcome's `stamps`."""
    if entry is None:
        return None
    try:  # a malformed entry (a cache from another version, edited by hand) is not reused
        if tuple(entry["annotations"]) != sample.annotations:
            return None
        cached_deps, key, outputs = dict(entry["deps"]), entry["key"], dict(entry["outputs"])
        with_tree = bool(entry["tree"])
    except (KeyError, TypeError, ValueError):
        return None
    raw, out = os.fspath(raw_dir), os.fspath(out_dir)  # os.path: this runs per sample
    deps: dict[str, str | None] = {}
    stamps: dict[str, MemoEntry] = {}
    for path in cached_deps:
        known = memo.get(path) if memo else None
        if known is not None and io.file_stamp(os.path.join(raw, path)) == known.stamp:
            deps[path] = known.hash
            stamps[path] = known
        elif not read:
            return NEEDS_READ
        else:
            deps[path] = _hash_input(raw_dir, path, stamps)
    if sample_key(pkey, deps, tree if with_tree else None) != key:
        return None
    for rel, size in outputs.items():
        try:
            if os.stat(os.path.join(out, rel)).st_size != size:
                return None
        except OSError:
            return None
    try:
        return _from_entry(sample.id, entry, stamps)
    except (KeyError, TypeError, ValueError):
        return None


class NeedsRead(enum.Enum):
    """`reusable(read=False)` could not decide without reading an input."""

    NEEDS_READ = "needs read"


NEEDS_READ = NeedsRead.NEEDS_READ


# --------------------------------------------------------------------------------------------
# The hash memo: input stamp -> content hash, so a re-run need not read unchanged inputs


class MemoEntry(NamedTuple):
    """The content hash of an input file as it was when it had this stamp (a tuple: the
    memo holds one per input file and is read on every run)."""

    stamp: io.FileStamp
    hash: str


def default_memo_path(raw_dir: Path) -> Path:
    """Where `segpipe convert` keeps the hash memo of `raw_dir`: the user's cache dir
    ($XDG_CACHE_HOME, else ~/.cache) under segpipe/, one file per raw dir (by its absolute
    path). Outside the repo on purpose: neither git nor DVC sees it, and the DVC outputs
    stay a function of the inputs alone."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = io.content_hash(os.path.abspath(raw_dir).encode())[:16]
    return root / "segpipe" / f"convert-hashes-{name}.json"


def load_memo(path: Path, raw_dir: Path) -> dict[str, MemoEntry]:
    """The memo of `raw_dir` (raw-relative path -> entry); empty when missing, unreadable,
    of another version or another raw dir (then every input is read and hashed)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("code") != CODE_VERSION or raw.get("raw_dir") != os.path.abspath(raw_dir):
            return {}
        return {rel: MemoEntry(io.FileStamp(*v[:5]), v[5]) for rel, v in raw["files"].items()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError, IndexError):
        return {}


def save_memo(path: Path, raw_dir: Path, memo: dict[str, MemoEntry]) -> None:
    """Write the memo (atomic). A memo that cannot be written only costs the next run time:
    the OSError is left to the caller."""
    files = {rel: [*e.stamp, e.hash] for rel, e in sorted(memo.items())}
    io.write_text(path, json.dumps({"code": CODE_VERSION, "raw_dir": os.path.abspath(raw_dir),
                                    "files": files}, separators=(",", ":")) + "\n")


# --------------------------------------------------------------------------------------------
# Running over all samples


def resolve_jobs(jobs: int) -> int:
    """Worker count: `jobs`, or every core this process may use when `jobs` is 0."""
    if jobs < 0:
        raise ParamsError(f"convert.jobs must be 0 (all cores) or a positive count, got {jobs}")
    if jobs == 0:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            (os.cpu_count() or 1)
    return jobs


#: Most samples a worker converts per message to and from the parent (each message costs
#: the parent's pool threads about half a millisecond of CPU).
MAX_CHUNK = 16


def run_tasks(tasks: Sequence[Task], jobs: int) -> Iterator[Outcome]:
    """Convert the tasks, in this process (1 job) or a pool; outcomes in completion order.

    Tasks go out in chunks (`convert_chunk`): at most MAX_CHUNK, and small enough that each
    worker gets about 8 of them, so the last ones finish close together."""
    workers = max(1, min(jobs, len(tasks)))
    size = max(1, min(MAX_CHUNK, len(tasks) // (workers * 8)))
    chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
    if workers == 1:
        for chunk in chunks:
            yield from convert_chunk(chunk)
        return
    with multiprocessing.get_context().Pool(workers) as pool:
        for outcomes in pool.imap_unordered(convert_chunk, chunks):
            yield from outcomes


@dataclass(frozen=True)
class ConvertSummary:
    """Counts of one run (also what `segpipe convert` prints)."""

    seen: int  # samples found (annotation files sharing an id count once)
    converted: int  # samples in the manifest
    rejected: int
    warned: int  # converted samples with at least one warning
    errors: int  # error issues
    warnings: int  # warning issues (dataset-level ones included)
    processed: int  # samples converted (or rejected) by this run
    reused: int  # samples taken from the cache
    removed: int  # output files removed (samples gone or now rejected)
    failure: str | None = None  # why the stage fails, None when it passes

    def line(self, out_dir: str, report: str) -> str:
        return (f"convert: {self.seen} samples: {self.converted} converted, {self.rejected} "
                f"rejected, {self.warned} with warnings ({self.processed} processed, "
                f"{self.reused} reused, {self.removed} stale outputs removed) -> {out_dir}; "
                f"report: {report}")


def run_convert(params: Params, *, jobs: int | None = None, params_path: str = "params.yaml",
                progress: bool | None = None,
                on_outcome: Callable[[Outcome], None] | None = None,
                memo_path: Path | None = None) -> ConvertSummary:
    """The whole stage; raises StageFailed (after writing the reports) when it must fail.

    `memo_path`: the hash memo (see `default_memo_path`; `segpipe convert` uses it). With
    it, a re-run reads only the inputs whose stamp changed; without it, every input of a
    cached sample is read and hashed again. The outputs are the same either way."""
    cfg, labels = params.convert, params.labels
    raw_dir, out_dir, reports_dir = Path(cfg.raw_dir), Path(cfg.out_dir), Path(cfg.reports_dir)
    if not raw_dir.is_dir():
        raise InputError(f"convert.raw_dir must be a directory of annotations, got {raw_dir!s} "
                         "(no such directory)")
    n_jobs = resolve_jobs(cfg.jobs if jobs is None else jobs)
    for root in (out_dir, reports_dir):
        if root.is_dir():
            io.remove_temp_files(root)

    samples = find_samples(raw_dir)
    pkey, tree = params_key(labels, cfg), tree_signature(raw_dir)
    cache_path = out_dir / CACHE_FILE
    cache = load_cache(cache_path)
    memo = load_memo(memo_path, raw_dir) if memo_path is not None else {}
    outcomes: dict[str, Outcome] = {}
    entries: dict[str, dict[str, Any]] = {}  # what the cache file will hold
    tasks = []
    found = [reusable(s, cache.get(s.id), raw_dir, out_dir, pkey, tree, memo, read=False)
             for s in samples]  # stat only: the memo vouches for unchanged inputs
    unread = [i for i, f in enumerate(found) if f is NEEDS_READ]
    if unread:
        with ThreadPoolExecutor(max_workers=n_jobs) as threads:  # hashing reads in parallel
            for i, cached in zip(unread, threads.map(
                    lambda s: reusable(s, cache.get(s.id), raw_dir, out_dir, pkey, tree, memo),
                    [samples[i] for i in unread]), strict=True):
                found[i] = cached
    for sample, cached in zip(samples, found, strict=True):
        if isinstance(cached, Outcome):
            outcomes[sample.id] = cached
            entries[sample.id] = cache[sample.id]
        else:
            tasks.append(Task(sample, str(raw_dir), str(out_dir), labels, cfg, pkey, tree))
    reused = len(outcomes)
    processed_ids = {t.sample.id for t in tasks}
    io.make_dirs(os.path.join(out_dir, sub, t.sample.id) for t in tasks
                 for sub in ("images", "masks"))  # each output's directory, made once here

    last_save, save_cost = time.monotonic(), 0.0
    bar = tqdm(total=len(tasks), desc="convert", unit="file", file=sys.stderr,
               disable=(None if progress is None else not progress))
    with bar:
        for outcome in run_tasks(tasks, n_jobs):
            outcomes[outcome.id] = outcome
            if outcome.cacheable:
                entries[outcome.id] = to_entry(outcome)
            bar.update()
            if on_outcome is not None:
                on_outcome(outcome)
            if time.monotonic() - last_save > max(CACHE_SAVE_EVERY, 20 * save_cost):
                save_cost = time.monotonic()  # saving may take at most ~5% of the run
                save_cache(cache_path, entries)
                last_save = time.monotonic()
                save_cost = last_save - save_cost
    if memo_path is not None:
        learned = {rel: e for o in outcomes.values() for rel, e in o.stamps.items()}
        if learned != memo:
            try:
                save_memo(memo_path, raw_dir, learned)
            except OSError as exc:  # only the next run's speed depends on it: say so, go on
                print(f"warning: could not save the hash memo {memo_path} ({exc}); the next "
                      "run reads every input again", file=sys.stderr)

    ordered = [outcomes[s.id] for s in samples]
    issues = [i for o in ordered for i in o.issues]
    issues += duplicate_image_issues(ordered)
    manifest = build_manifest(ordered, labels.classes)
    issues += empty_class_issues(manifest, labels.classes, params_path)
    issues = sort_issues(issues)

    removed = prune_outputs(out_dir, {rel for o in ordered if o.converted for rel in o.outputs})

    summary = summarize(ordered, issues, len(tasks), reused, len(removed), cfg)
    io.write_json(reports_dir / "validation.json", [vars(i) for i in issues])
    io.write_text(reports_dir / "validation.md", validation_markdown(issues, summary))
    io.write_json(reports_dir / "data.json", data_metrics(summary, manifest, labels.classes))

    from pipeline import schemas

    masks = mask_table([o for o in ordered if o.converted])
    # rows that passed the schemas in an earlier run, unchanged since: only the checks of
    # the whole table look at them again (see schemas.check_manifest)
    checked = [o for o in ordered if o.converted and o.id not in processed_ids
               and entries.get(o.id, {}).get("checked") is True]
    problems = schemas.check_manifest(manifest, labels.classes, out_dir,
                                      {o.id for o in checked}) + \
        schemas.check_masks(masks, manifest, len(labels.classes),
                            {o.mask["mask"] for o in checked if o.mask is not None})
    marked = 0
    if not problems:
        for o in ordered:
            entry = entries.get(o.id)
            if o.converted and entry is not None and entry.get("checked") is not True:
                entries[o.id] = {**entry, "checked": True}
                marked += 1
    if tasks or marked or entries.keys() != cache.keys():
        save_cache(cache_path, entries)
    if problems:
        (out_dir / "manifest.csv").unlink(missing_ok=True)  # never leave a stale manifest
        raise StageFailed("the converted data failed their schema checks (a bug, or files in "
                          f"{out_dir} changed by hand; delete {cache_path} to rebuild):\n"
                          + "\n".join(f"  {p}" for p in problems[:20]))
    io.write_csv(out_dir / "manifest.csv", manifest)
    if summary.failure is not None:
        raise StageFailed(failure_screen(summary, issues, reports_dir / "validation.md"))
    return summary


def prune_outputs(out_dir: Path, keep: set[str]) -> list[str]:
    """Remove files under out_dir/images and out_dir/masks that no converted sample owns
    (samples removed from the raw dir, or now rejected). Returns their out-relative paths."""
    removed = []
    for sub in ("images", "masks"):
        if (out_dir / sub).is_dir():
            owned = {rel.partition("/")[2] for rel in keep if rel.startswith(sub + "/")}
            removed += [f"{sub}/{rel}" for rel in io.prune_files(out_dir / sub, owned)]
    return removed


# --------------------------------------------------------------------------------------------
# Dataset-level checks, tables and reports (pure)


def duplicate_image_issues(outcomes: Sequence[Outcome]) -> list[Issue]:
    """A warning on every converted sample whose image bytes another converted sample has."""
    by_hash: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if o.converted and o.source_hash is not None:
            by_hash[o.source_hash].append(o)
    issues = []
    for same in by_hash.values():
        if len(same) < 2:
            continue
        for o in same:
            others = [x.id for x in same if x.id != o.id]
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5
                                             else "")
            issues.append(Issue(";".join(o.annotations), None, "duplicate_image", "warning",
                                f"same image bytes as {shown}; they stay in one split group "
                                f"({min(x.id for x in same)})"))
    return issues


def duplicate_groups(outcomes: Sequence[Outcome]) -> dict[str, str]:
    """id -> the smallest id with the same image bytes (itself when unique), converted only."""
    first: dict[str, str] = {}
    groups = {}
    for o in sorted((o for o in outcomes if o.converted), key=lambda o: o.id):
        group = first.setdefault(o.source_hash or o.id, o.id)
        groups[o.id] = group
    return groups


def build_manifest(outcomes: Sequence[Outcome], classes: Sequence[str]) -> Any:
    """The manifest table (pandas DataFrame) of the converted samples, sorted by id."""
    import pandas as pd

    groups = duplicate_groups(outcomes)
    rows = [{**o.row, "group": groups[o.id]} for o in sorted(outcomes, key=lambda o: o.id)
            if o.row is not None]
    columns = manifest_columns(classes)
    # column lists, not a list of row dicts: the same table, several times faster to build
    frame = pd.DataFrame({c: [r.get(c) for r in rows] for c in columns}, columns=columns,
                         dtype=object)
    ints = {"width", "height", "n_shapes", *columns[len(FIXED_COLUMNS):]}
    return frame.astype({c: "int64" if c in ints else "str" for c in columns})


def mask_table(outcomes: Sequence[Outcome]) -> Any:
    """One row of mask facts per converted sample (what the mask schema checks)."""
    import pandas as pd

    columns = ["mask", "mode", "dtype", "channels", "width", "height", "image_width",
               "image_height", "stray_pixels"]
    frame = pd.DataFrame([o.mask for o in outcomes if o.mask is not None], columns=columns)
    return frame.astype({c: "str" if i < 3 else "int64" for i, c in enumerate(columns)})


def empty_class_issues(manifest: Any, classes: Sequence[str], params_path: str) -> list[Issue]:
    """A warning for each declared class that no converted mask contains."""
    if manifest.empty:
        return []
    return [Issue(params_path, None, "class_without_samples", "warning",
                  f"class {c!r} (value {i}) must appear in at least one converted mask, "
                  "got none")
            for i, c in enumerate(classes) if int((manifest[f"px.{c}"] > 0).sum()) == 0]


def sort_issues(issues: Iterable[Issue]) -> list[Issue]:
    """Sorted by file, then shape (file-level issues first); stable otherwise."""
    return sorted(issues, key=lambda i: (i.file, -1 if i.shape is None else i.shape))


def summarize(outcomes: Sequence[Outcome], issues: Sequence[Issue], processed: int,
              reused: int, removed: int, cfg: ConvertParams) -> ConvertSummary:
    seen = len(outcomes)
    rejected = sum(not o.converted for o in outcomes)
    warned_files = {i.file for i in issues if i.severity == "warning"}
    warned = sum(o.converted and bool(warned_files.intersection(
        (*o.annotations, ";".join(o.annotations)))) for o in outcomes)
    failure = None
    if cfg.strict and rejected:
        failure = f"convert.strict is set and {rejected} of {seen} samples were rejected"
    elif seen and rejected / seen > cfg.max_error_fraction:
        failure = (f"{rejected} of {seen} samples were rejected ({rejected / seen:.1%}), more "
                   f"than convert.max_error_fraction = {cfg.max_error_fraction:.1%}")
    return ConvertSummary(
        seen=seen, converted=seen - rejected, rejected=rejected, warned=warned,
        errors=sum(i.severity == "error" for i in issues),
        warnings=sum(i.severity == "warning" for i in issues),
        processed=processed, reused=reused, removed=removed, failure=failure)


def data_metrics(summary: ConvertSummary, manifest: Any, classes: Sequence[str]
                 ) -> dict[str, Any]:
    """reports/data.json: file counts and, per class, images containing it and pixel share
    (of all labelled, i.e. non-ignore, pixels)."""
    totals = {c: int(manifest[f"px.{c}"].sum()) for c in classes}
    labelled = sum(totals.values())
    return {
        "files": {"seen": summary.seen, "converted": summary.converted,
                  "rejected": summary.rejected, "warnings": summary.warned},
        "classes": {c: {"images": int((manifest[f"px.{c}"] > 0).sum()),
                        "pixel_share": round(totals[c] / labelled, 6) if labelled else 0.0}
                    for c in classes},
    }


def validation_markdown(issues: Sequence[Issue], summary: ConvertSummary) -> str:
    """The readable report: counts, then errors and warnings, each grouped by file."""
    lines = ["# Validation report", "",
             "| samples | count |", "|---|---:|",
             f"| seen | {summary.seen} |", f"| converted | {summary.converted} |",
             f"| rejected | {summary.rejected} |",
             f"| converted with warnings | {summary.warned} |", "",
             f"{summary.errors} errors, {summary.warnings} warnings. A sample with an error is "
             "left out of the manifest; warnings are converted anyway.", ""]
    if summary.failure:
        lines += [f"**The stage failed:** {summary.failure}.", ""]
    for severity, title in (("error", "Errors"), ("warning", "Warnings")):
        chosen = [i for i in issues if i.severity == severity]
        lines += [f"## {title} ({len(chosen)})", ""]
        if not chosen:
            lines += ["None.", ""]
        by_file: dict[str, list[Issue]] = defaultdict(list)
        for issue in chosen:
            by_file[issue.file].append(issue)
        for file, found in by_file.items():
            lines.append(f"### `{file}`")
            lines += [f"- {'file' if i.shape is None else f'shape {i.shape}'} · `{i.check}`: "
                      f"{i.message}" for i in found]
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def failure_screen(summary: ConvertSummary, issues: Sequence[Issue], report: Path,
                   limit: int = 10) -> str:
    """The one-screen explanation of a failed stage: counts, the first reasons, the report."""
    errors = [i for i in issues if i.severity == "error"]
    lines = [f"convert failed: {summary.failure}",
             f"  {summary.seen} samples: {summary.converted} converted, {summary.rejected} "
             f"rejected; {summary.errors} errors, {summary.warnings} warnings",
             f"first {min(limit, len(errors))} of {len(errors)} errors:"]
    for issue in errors[:limit]:
        where = issue.file if issue.shape is None else f"{issue.file} shape {issue.shape}"
        text = f"  {where}: {issue.check}: {issue.message}"
        lines.append(text if len(text) <= 200 else text[:197] + "...")
    lines.append(f"full report: {report} (and {report.with_suffix('.json')}); the converted "
                 "files were written all the same")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The command


@click.command(name="convert")
@click.option("--params", "params_path", default="params.yaml", show_default=True,
              type=click.Path(dir_okay=False),
              help="params.yaml to read: classes, ignore_labels, aliases and the convert "
                   "section (paths in it are relative to the current directory).")
@click.option("-j", "--jobs", type=click.IntRange(min=0), default=None,
              help="Worker processes; 0 = all cores. Default: convert.jobs. The output is "
                   "byte-identical for any value.")
def command(params_path: str, jobs: int | None) -> None:
    """Convert annotations in convert.raw_dir into images, masks and a manifest.

    Reads every Labelme JSON, Pascal VOC XML and YOLO txt (with classes.txt) under
    convert.raw_dir; writes images/<id>.<ext>, masks/<id>.png and manifest.csv under
    convert.out_dir, and validation.json, validation.md and data.json under
    convert.reports_dir. A bad file is reported and left out; it never stops the others.
    Only new or changed files are converted again (the cache lives in convert.out_dir; a
    memo of the inputs' content hashes, in ~/.cache/segpipe, spares re-reading them).
    Fails (exit 1) when convert.strict is set and a file was rejected, or when more than
    convert.max_error_fraction of the files were rejected.
    """
    params = load_params(params_path)
    summary = run_convert(params, jobs=jobs, params_path=params_path,
                          memo_path=default_memo_path(Path(params.convert.raw_dir)))
    report = Path(params.convert.reports_dir) / "validation.md"
    click.echo(summary.line(params.convert.out_dir, str(report)))
