"""One sample, in a worker process: read its annotation(s) and image, decide the frame,
check the shapes, draw the mask, write image + mask, and say what happened (an `Outcome`).

Never raises for bad data: a problem becomes an error Issue; an unexpected exception becomes
an "internal_error" Issue naming the file (and the sample is not cached, so it is retried on
the next run). Every file read must resolve inside the raw dir (formats.read_problem).
`run_tasks` runs many samples in worker processes (convert/pool.py): one whose worker dies
is an "internal_error" too, and the run goes on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.convert import formats, pool, raster, validate
from pipeline.convert.cache import MemoEntry, Outcome, SampleFiles, sample_key
from pipeline.convert.frame import ImageInfo, decide_frame, prepared_image, probe_image
from pipeline.convert.inputs import UNREADABLE, escaped, hash_input, is_text, remember
from pipeline.core.fingerprint import object_stats
from pipeline.core.hashing import content_hash
from pipeline.core.manifest import IGNORE_COLUMN, pixel_column
from pipeline.core.records import IGNORE, Issue, Record, is_error
from pipeline.params import ConvertParams, Labels
from pipeline.storage.files import read_stamped, replace_bytes
from pipeline.storage.images import ImageError
from pipeline.storage.masks import MaskInfo, inspect_mask, mask_png_bytes

#: Most samples a worker converts per message to and from the parent (each message costs
#: the parent's pool threads about half a millisecond of CPU).
MAX_CHUNK = 16
#: Most bytes a file name may have (Linux, macOS and Windows file systems alike).
NAME_MAX = 255

Write = Callable[[Path, bytes], object]


@dataclass(frozen=True)
class Task:
    """Everything a worker needs to convert one sample (picklable)."""

    sample: SampleFiles
    raw_dir: str
    out_dir: str
    labels: Labels
    cfg: ConvertParams
    pkey: str
    tree: str  # the raw dir's tree signature (see inputs.tree_signature)


def convert_sample(task: Task) -> Outcome:
    """Read, check, draw and write one sample (see the module docstring)."""
    try:
        return _convert_sample(task, replace_bytes)
    except Exception as exc:  # reported as an issue naming the file, never hidden
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


def resolve_jobs(jobs: int) -> int:
    """Worker count: `jobs`, or every core this process may use when `jobs` is 0."""
    if jobs == 0:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            (os.cpu_count() or 1)
    return jobs


def run_tasks(tasks: Sequence[Task], jobs: int) -> Iterator[Outcome]:
    """Convert the tasks in `jobs` worker processes; outcomes in completion order.

    Always in workers, never in this process, so a sample that crashes its process (see
    convert/pool.py) is an "internal_error" and the output is the same for any `jobs`.
    Tasks go out in chunks (`convert_chunk`): at most MAX_CHUNK, and small enough that each
    worker gets about 8 of them, so the last ones finish close together."""
    workers = max(1, min(jobs, len(tasks)))
    size = max(1, min(MAX_CHUNK, len(tasks) // (workers * 8)))
    chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
    yield from pool.run_chunks(convert_chunk, chunks, workers, worker_died)


def worker_died(task: Task, reason: str) -> Outcome:
    """The outcome of a sample whose worker process died converting it (not cached: the
    next run tries again)."""
    file = ";".join(task.sample.annotations)
    message = (f"converting {file} failed: {reason}; the run went on without it (a bug in "
               "segpipe or a library; please report it with this file)")
    return Outcome(task.sample.id, task.sample.annotations, "", {}, False,
                   (Issue(file, None, "internal_error", "error", message),), cacheable=False)


def bad_name(sample: SampleFiles) -> Outcome:
    """The outcome of a sample whose path is not valid UTF-8: never read (its id could not
    go into the manifest, the reports or the cache), reported with the name escaped."""
    files = [escaped(a) for a in sample.annotations]
    issues = tuple(Issue(f, None, "bad_filename", "error",
                         f"{f}: file and folder names must be valid UTF-8, got undecodable "
                         "bytes (shown as \\xNN); rename it") for f in files)
    return Outcome(sample.id, sample.annotations, "", {}, False, issues, cacheable=False)


# --------------------------------------------------------------------------------------------
# The steps


def _submit(writer: ThreadPoolExecutor, writes: list[Future[None]], path: Path,
            data: bytes) -> None:
    writes.append(writer.submit(replace_bytes, path, data))


def _internal_error(task: Task, exc: BaseException) -> Outcome:
    file = ";".join(task.sample.annotations)
    message = (f"converting {file} failed unexpectedly: {type(exc).__name__}: {exc} "
               "(a bug in segpipe; please report it with this file)")
    return Outcome(task.sample.id, task.sample.annotations, "", {}, False,
                   (Issue(file, None, "internal_error", "error", message),), cacheable=False)


def _convert_sample(task: Task, write: Write) -> Outcome:
    sample, raw_dir = task.sample, Path(task.raw_dir)
    deps: dict[str, str | None] = {}
    issues: list[Issue] = []
    stamps: dict[str, MemoEntry] = {}

    def rejected(depends_on_tree: bool) -> Outcome:
        key = sample_key(task.pkey, deps, task.tree if depends_on_tree else None)
        return Outcome(sample.id, sample.annotations, key, deps, depends_on_tree,
                       tuple(issues), stamps=stamps)

    # 1. read the annotation file(s) of the sample and merge them
    records: list[Record] = []
    for annotation in sample.annotations:
        deps[annotation] = hash_input(raw_dir, annotation, stamps)
        problem = formats.read_problem(raw_dir / annotation, raw_dir)
        if problem is not None:  # never handed to a reader: nothing of it is read or quoted
            issues.append(Issue(annotation, None, problem[0], "error",
                                f"{annotation} {problem[1]}"))
            continue
        record, found = formats.read_annotation(raw_dir / annotation, raw_dir, task.cfg.masks)
        issues += found
        if record is not None:
            records.append(record)
    if len(records) != len(sample.annotations):
        return rejected(True)  # a reader error (e.g. no image yet): recheck on new files
    record = formats.merge_records(records)
    declared = (record.width, record.height) if record.width and record.height else None

    # 2. the image: embedded data first, else the file
    loaded, image_issues, image_deps = _load_image(record, raw_dir, stamps)
    issues += image_issues
    deps.update(image_deps)
    if loaded is None:
        if declared is not None:  # still report the shapes' problems, against the declared size
            issues += validate.check_record(record, *declared, task.labels, task.cfg)[1]
        return rejected(not image_deps)
    data, info = loaded

    # 3. the frame the annotation was drawn in (EXIF), then the shapes checked against it
    frame, problem = decide_frame(declared, info, record.format, record.version)
    if frame is None:
        issues.append(Issue(record.annotation, None, "image_size", "error", str(problem)))
        if declared is not None:
            issues += validate.check_record(record, *declared, task.labels, task.cfg)[1]
        return rejected(False)
    pairs, check_issues = validate.check_record(record, frame.width, frame.height, task.labels,
                                                task.cfg)
    issues += check_issues
    if is_error(issues):
        return rejected(False)

    # 4. draw the mask, write image + mask, describe them for the manifest and the schemas
    mask = raster.rasterize(pairs, frame.width, frame.height, line_width=task.cfg.line_width,
                            point_radius=task.cfg.point_radius)
    mask_png = mask_png_bytes(mask)
    image_bytes, ext = prepared_image(data, info, frame.rotate)
    stored = info if image_bytes is data else probe_image(image_bytes)
    image_rel, mask_rel = f"images/{sample.id}.{ext}", f"masks/{sample.id}.png"
    longest = max((image_rel, mask_rel), key=lambda rel: len(os.fsencode(rel)))
    name_bytes = len(os.fsencode(longest.rpartition("/")[2]))
    if name_bytes > NAME_MAX:  # the annotation's own name fits; name + image suffix may not
        issues.append(Issue(record.annotation, None, "name_too_long", "error",
                            f"{record.annotation}: output file names must have at most "
                            f"{NAME_MAX} bytes, got {name_bytes} for {longest}; shorten the "
                            "annotation's name"))
        return rejected(False)
    # run_convert made the directories (make_dirs): one mkdir per directory, not per file
    out_dir = Path(task.out_dir)
    write(out_dir / image_rel, image_bytes)
    write(out_dir / mask_rel, mask_png)

    source_hash = next(iter(image_deps.values())) if image_deps else content_hash(data)
    facts = inspect_mask(mask_png, mask)
    key = sample_key(task.pkey, deps, None)
    row = _manifest_row(task, record, image_rel, mask_rel, (frame.width, frame.height),
                        len(pairs), source_hash if image_bytes is data
                        else content_hash(image_bytes), content_hash(mask_png), key, facts)
    mask_facts = _mask_facts(mask_rel, facts, stored, len(task.labels.classes))
    outputs = {image_rel: len(image_bytes), mask_rel: len(mask_png)}
    objects = {str(value): [s.objects, s.median_area, s.median_thickness]
               for value, s in object_stats(mask, len(task.labels.classes)).items()}
    return Outcome(sample.id, sample.annotations, key, deps, False, tuple(issues), row,
                   mask_facts, outputs, source_hash, objects, stamps=stamps)


def _manifest_row(task: Task, record: Record, image_rel: str, mask_rel: str,
                  size: tuple[int, int], n_shapes: int, image_hash: str, mask_hash: str,
                  key: str, facts: MaskInfo) -> dict[str, Any]:
    """The sample's manifest row (columns: core.manifest.manifest_columns) without `group`,
    which needs the whole dataset (duplicate images)."""
    counts = facts.counts or (0,) * 256
    return {
        "id": task.sample.id, "annotation": ";".join(task.sample.annotations),
        "image": image_rel, "mask": mask_rel, "format": record.format, "width": size[0],
        "height": size[1], "n_shapes": n_shapes, "image_hash": image_hash,
        "mask_hash": mask_hash, "key": key,
        **{pixel_column(c): counts[i] for i, c in enumerate(task.labels.classes)},
        IGNORE_COLUMN: counts[IGNORE],
    }


def _mask_facts(mask_rel: str, facts: MaskInfo, stored: ImageInfo, n_classes: int
                ) -> dict[str, Any]:
    """What the mask schema checks, read back from the mask's bytes."""
    counts = np.asarray(facts.counts or (0,) * 256)
    return {
        "mask": mask_rel, "mode": facts.mode, "dtype": facts.dtype, "channels": facts.channels,
        "width": facts.width, "height": facts.height,
        "image_width": stored.width, "image_height": stored.height,  # as read_rgb sees it
        "stray_pixels": int(counts[n_classes:IGNORE].sum() + counts[IGNORE + 1:].sum()),
    }


def _load_image(record: Record, raw_dir: Path, stamps: dict[str, MemoEntry]
                ) -> tuple[tuple[bytes, ImageInfo] | None, list[Issue], dict[str, str | None]]:
    """The sample's image: embedded data first, else the file. Returns ((bytes, info) or None,
    issues, {image file: hash} when a file was read); notes the file's stamp in `stamps`."""
    file = record.annotation
    failures: list[ImageError] = []
    if record.image_data is not None:
        try:
            return (record.image_data, probe_image(record.image_data)), [], {}
        except ImageError as exc:
            failures.append(exc)
    deps: dict[str, str | None] = {}
    if record.image_path is not None:
        problem = _image_problem(record.image_path, raw_dir)
        if problem is not None:
            deps[record.image_path] = UNREADABLE
            return None, [Issue(file, None, problem[0], "error",
                                f"image {escaped(record.image_path)} {problem[1]}")], deps
        try:
            data, stamp = read_stamped(raw_dir / record.image_path)
        except OSError as exc:
            deps[record.image_path] = None
            issue = Issue(file, None, "image_missing", "error",
                          f"image {record.image_path} must be a readable file, got "
                          f"{exc.strerror or exc}")
            return None, [issue], deps
        deps[record.image_path] = digest = content_hash(data)
        remember(stamps, record.image_path, stamp, digest)
        try:
            info = probe_image(data)
        except ImageError as exc:
            failures.append(ImageError(exc.check, f"image {record.image_path}: {exc}"))
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


def _image_problem(image_path: str, raw_dir: Path) -> tuple[str, str] | None:
    """Why the image named by the annotation must not be read (see formats.read_problem);
    a name that is not UTF-8 (from a JSON escape such as "\\udcff") is "bad_filename"."""
    if not is_text(image_path):
        return "bad_filename", ("must be named in valid UTF-8, got undecodable bytes (shown "
                                "as \\xNN); rename it")
    return formats.read_problem(raw_dir / image_path, raw_dir)
