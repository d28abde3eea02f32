"""Stage `convert`: annotations in `convert.raw_dir` -> images, masks, manifest and reports.

    segpipe convert [--params params.yaml] [-j N]

For every sample (the annotation files sharing one id, see convert/formats) it writes

    <out_dir>/images/<id>.<ext>     the image in the annotation frame (original bytes if possible)
    <out_dir>/masks/<id>.png        palette PNG, pixel = class index, 255 = ignore
    <out_dir>/manifest.csv          one row per converted sample (core/manifest.py)
    <reports_dir>/validation.json   every issue: file, shape, check, severity, message
    <reports_dir>/validation.md     the same, readable: counts, then issues grouped by file
    <reports_dir>/data.json         files seen/converted/rejected/warnings, per-class figures

A rejected sample is left out of the manifest and listed in the reports; it never stops the
others. The stage fails (exit 1, one screen, no traceback) only when `convert.strict` is set
and something was rejected, or when the rejected share exceeds `convert.max_error_fraction`.
Incremental (convert/cache.py): only new or changed samples are converted, in parallel.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from pipeline.convert import cache, formats, inputs, report
from pipeline.convert.cache import Entry, MemoEntry, Observation, Outcome, SampleFiles
from pipeline.convert.report import ConvertSummary
from pipeline.convert.sample import Task, bad_name, resolve_jobs, run_tasks
from pipeline.core.manifest import manifest_path
from pipeline.errors import InputError, StageFailed
from pipeline.params import Params, params_option
from pipeline.progress import Progress
from pipeline.storage.files import (
    folder_lock,
    make_dirs,
    remove_files,
    remove_temp_files,
    unowned_files,
    write_csv,
    write_json,
    write_text,
)

#: Least seconds between cache saves while converting (what a killed run can lose); more
#: when a save is slow, so that saving stays a small share of the run.
CACHE_SAVE_EVERY = 2.0


def run_convert(params: Params, *, jobs: int | None = None, progress: bool = True,
                on_outcome: Callable[[Outcome], None] | None = None,
                memo_path: Path | None = None) -> ConvertSummary:
    """The whole stage; raises StageFailed (after writing the reports) when it must fail, and
    FolderBusy when another run is converting into the same convert.out_dir.

    `memo_path`: the hash memo (see `inputs.default_memo_path`; `segpipe convert` uses it).
    With it, a re-run reads only the inputs whose stamp changed; without it, every input of
    a cached sample is read and hashed again. The outputs are the same either way."""
    cfg = params.convert
    raw_dir, out_dir = Path(cfg.raw_dir), Path(cfg.out_dir)
    if not raw_dir.is_dir():
        raise InputError(f"convert.raw_dir must be a directory of annotations, got {raw_dir!s} "
                         "(no such directory)")
    n_jobs = resolve_jobs(cfg.jobs if jobs is None else jobs)
    with folder_lock([out_dir], "convert"):  # two runs into one folder would corrupt it
        return _run_locked(params, n_jobs, progress, on_outcome, memo_path)


def _run_locked(params: Params, n_jobs: int, progress: bool,
                on_outcome: Callable[[Outcome], None] | None,
                memo_path: Path | None) -> ConvertSummary:
    cfg, labels = params.convert, params.labels
    raw_dir, out_dir, reports_dir = Path(cfg.raw_dir), Path(cfg.out_dir), Path(cfg.reports_dir)
    remove_temp_files(out_dir)  # under the lock: a temp file here is a killed run's
    if reports_dir.is_dir():  # other stages write reports too: only dead writers' files
        remove_temp_files(reports_dir, shared=True)

    # 1. find the samples (a name that is not UTF-8 is an error, never read); decide from
    # the cache which can be reused
    found = inputs.find_samples(raw_dir, cfg.masks)
    bad_names = {s.id: bad_name(s) for s in found
                 if not all(inputs.is_text(a) for a in s.annotations)}
    samples = [s for s in found if s.id not in bad_names]
    pkey, tree = cache.params_key(labels, cfg), inputs.tree_signature(raw_dir)
    cache_path = out_dir / cache.CACHE_FILE
    entries = cache.load_cache(cache_path)
    memo = inputs.load_memo(memo_path, raw_dir) if memo_path is not None else {}
    observed = _observe(samples, entries, raw_dir, out_dir, memo, n_jobs)
    plan = cache.plan(samples, entries, observed, pkey, tree)
    kept: dict[str, Entry] = {i: entries[i] for i in plan.reuse}  # what the cache will hold

    # 2. convert the rest in parallel, saving the cache every few seconds
    tasks = [Task(s, str(raw_dir), str(out_dir), labels, cfg, pkey, tree) for s in plan.convert]
    outcomes = {**plan.reuse, **bad_names,
                **_convert(tasks, n_jobs, cache_path, kept, progress, on_outcome)}
    if memo_path is not None:
        _save_memo(memo_path, raw_dir, outcomes.values(), memo)

    # 3. dataset-level checks: duplicate images, classes without samples
    ordered = [outcomes[s.id] for s in found]
    manifest = report.build_manifest(ordered, labels.classes)
    issues = report.sort_issues([*(i for o in ordered for i in o.issues),
                                 *formats.skipped_files(raw_dir, cfg.masks),
                                 *report.duplicate_image_issues(ordered),
                                 *report.empty_class_issues(manifest, labels.classes,
                                                            params.source)])

    # 4. the reports; the outputs of samples that are gone (or now rejected) are only listed
    stale = stale_outputs(out_dir, {rel for o in ordered if o.converted for rel in o.outputs})
    summary = report.summarize(ordered, issues, len(tasks) + len(bad_names), len(plan.reuse),
                               len(stale), cfg)
    write_json(reports_dir / "validation.json", [vars(i) for i in issues])
    write_text(reports_dir / "validation.md", report.validation_markdown(issues, summary))
    write_json(reports_dir / "data.json",
               report.data_metrics(summary, manifest, labels.classes, ordered))

    # 5. the new manifest replaces the old one; only then the stale outputs go, so a kill at
    # any moment leaves a manifest whose files are all there
    write_csv(manifest_path(out_dir), manifest)
    remove_files(out_dir, stale)

    # 6. the manifest and the masks against their schemas (and so the folder: one mask per
    # row); a manifest that fails them is removed again
    problems = _schema_problems(ordered, manifest, labels.classes, out_dir, kept)
    if problems:
        manifest_path(out_dir).unlink(missing_ok=True)  # never leave a failed manifest
        cache.save_cache(cache_path, kept)
        raise StageFailed("the converted data failed their schema checks (a bug, or files in "
                          f"{out_dir} changed by hand; delete {cache_path} to rebuild):\n"
                          + "\n".join(f"  {p}" for p in problems[:20]))
    passed = {o.id: cache.to_entry(o, checked=o.converted) for o in ordered if o.cacheable}
    if passed != entries:
        cache.save_cache(cache_path, passed)

    # 7. too many rejected files fail the stage (the good ones are written all the same)
    if summary.failure is not None:
        raise StageFailed(report.failure_screen(summary, issues, reports_dir / "validation.md"))
    return summary


def _observe(samples: Sequence[SampleFiles], entries: dict[str, Entry], raw_dir: Path,
             out_dir: Path, memo: dict[str, MemoEntry], jobs: int) -> dict[str, Observation]:
    """What is on disk for every cached sample: stat only where the memo vouches for the
    inputs, then the other inputs read and hashed in threads."""
    observed: dict[str, Observation] = {}
    unread: list[tuple[SampleFiles, list[str], list[str]]] = []
    for sample in samples:
        files = cache.entry_files(entries.get(sample.id), sample)
        if files is None:
            continue
        seen = inputs.observe(*files, raw_dir, out_dir, memo, read=False)
        if isinstance(seen, Observation):
            observed[sample.id] = seen
        else:
            unread.append((sample, *files))
    with ThreadPoolExecutor(max_workers=jobs) as threads:  # hashing reads in parallel
        seen_all = threads.map(lambda u: inputs.observe(u[1], u[2], raw_dir, out_dir, memo),
                               unread)
        for (sample, _, _), seen in zip(unread, seen_all, strict=True):
            if isinstance(seen, Observation):
                observed[sample.id] = seen
    return observed


def _convert(tasks: Sequence[Task], jobs: int, cache_path: Path, kept: dict[str, Entry],
             progress: bool, on_outcome: Callable[[Outcome], None] | None
             ) -> dict[str, Outcome]:
    """Run the tasks; every cacheable outcome joins `kept`, which is saved every few seconds
    (a killed run loses at most that much work)."""
    make_dirs(os.path.join(t.out_dir, sub, t.sample.id) for t in tasks
              for sub in ("images", "masks"))  # each output's directory, made once here
    outcomes: dict[str, Outcome] = {}
    last_save, save_cost = time.monotonic(), 0.0
    with Progress(len(tasks), "convert", "files", enabled=progress) as bar:
        for outcome in run_tasks(tasks, jobs):
            outcomes[outcome.id] = outcome
            if outcome.cacheable:
                kept[outcome.id] = cache.to_entry(outcome)
            bar.update()
            if on_outcome is not None:
                on_outcome(outcome)
            if time.monotonic() - last_save > max(CACHE_SAVE_EVERY, 20 * save_cost):
                save_cost = time.monotonic()  # saving may take at most ~5% of the run
                cache.save_cache(cache_path, kept)
                last_save = time.monotonic()
                save_cost = last_save - save_cost
    return outcomes


def _save_memo(path: Path, raw_dir: Path, outcomes: Iterable[Outcome],
               memo: dict[str, MemoEntry]) -> None:
    """Write what this run learned about its inputs' stamps, when it changed."""
    learned = {rel: e for o in outcomes for rel, e in o.stamps.items()}
    if learned == memo:
        return
    try:
        inputs.save_memo(path, raw_dir, learned)
    except OSError as exc:  # only the next run's speed depends on it: say so, go on
        print(f"warning: could not save the hash memo {path} ({exc}); the next run reads "
              "every input again", file=sys.stderr)


def _schema_problems(ordered: Sequence[Outcome], manifest: object, classes: Sequence[str],
                     out_dir: Path, kept: dict[str, Entry]) -> list[str]:
    """The schema checks of the manifest and the masks. Rows that passed them in an earlier
    run, unchanged since, only take part in the checks of the whole table."""
    from pipeline.core import schemas  # pandera: imported only when a run gets this far

    checked = [o for o in ordered if o.converted and kept.get(o.id, {}).get("checked") is True]
    masks = report.mask_table([o for o in ordered if o.converted])
    return (schemas.check_manifest(manifest, classes, out_dir, {o.id for o in checked})
            + schemas.check_masks(masks, manifest, len(classes),
                                  {o.mask["mask"] for o in checked if o.mask is not None}))


def stale_outputs(out_dir: Path, keep: set[str]) -> list[str]:
    """The files under out_dir/images and out_dir/masks that no converted sample owns
    (samples removed from the raw dir, or now rejected), as out-relative paths, sorted."""
    stale = []
    for sub in ("images", "masks"):
        owned = {rel.partition("/")[2] for rel in keep if rel.startswith(sub + "/")}
        stale += [f"{sub}/{rel}" for rel in unowned_files(out_dir / sub, owned)]
    return stale


@click.command(name="convert")
@params_option
@click.option("-j", "--jobs", type=click.IntRange(min=0), default=None,
              help="Worker processes; 0 = all cores. Default: convert.jobs. The output is "
                   "byte-identical for any value.")
def command(params: Params, jobs: int | None) -> None:
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
    summary = run_convert(params, jobs=jobs,
                          memo_path=inputs.default_memo_path(Path(params.convert.raw_dir)))
    report_path = Path(params.convert.reports_dir) / "validation.md"
    click.echo(summary.line(params.convert.out_dir, str(report_path)))
