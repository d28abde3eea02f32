"""Stage `split`: a sticky, stratified, group-aware train/val split (+ a fixed benchmark set).

`segpipe split` reads `<convert.out_dir>/manifest.csv` (core/manifest.py) and writes
`split.splits_path` (csv: id, group, split, version; sorted by id) and `split.report_path`
(a DVC metric).
`assign_splits` is the pure algorithm; the functions below it do the IO.

How samples are placed
----------------------
1. **Groups.** Two samples are in one group when `split.group_pattern` (a regex with a named
   group `group`, searched in the id) gives them the same key, or when they are duplicate images
   (the manifest's `group` column); the union of both relations, transitively. An id the pattern
   does not match (or matches with an empty key) is a group of its own. A group is named after
   its smallest regex key, else its smallest id. A group never straddles splits.
2. **Fixed samples.** Ids in the `split.benchmark` list are split "benchmark" (never train); the
   rest of their group goes to val, so nothing leaks into training. A sample already in
   splits.csv (written with the same `split.version`) keeps its split, and a new sample of a
   known group inherits the group's split. Only when new data join two old groups that sit in
   different splits must some old samples move: the side with more old samples wins (ties: the
   side of the smallest id) and a warning says so. Samples no longer in the manifest drop out.
   A splits.csv with another version is ignored: bumping `split.version` reshuffles everything.
3. **New groups**, one pass per foreground class, rarest class first (fewest groups): the
   unplaced groups showing the class are sorted by the class's pixels per image (ties: a hash of
   seed, version and group name) and a systematic sample of them goes to val, as many images as
   bring the class's val image count (old + new) to round(val_fraction * images of the class);
   single groups are then flipped until that count is met as closely as group sizes allow.
   Sorting by pixels spreads small and large objects evenly (the pixel-share tie-break). All
   groups with a class are placed in its pass, so later passes cannot disturb it. A class with
   two or more groups always gets at least one group on each side. Groups with no foreground
   class are placed last, to bring the total image count to its target.
   Background (class index 0, in nearly every image) is not stratified; it is reported.

Everything is derived from the sorted ids, `split.seed` and `split.version` (blake2b hashes; no
random state), so the result does not depend on the manifest's row order.

Tolerance (`split.tolerance`, default 0.05): a foreground class's val image share
(val / (train + val) images showing the class; benchmark excluded) should lie within
val_fraction +- max(tolerance, largest group's images of the class / images of the class): a
class too small for the tolerance can miss it by at most one group. The report lists each
class's deviation and allowance and warns when a class is outside it, or missing from a split.
"""

from __future__ import annotations

import difflib
import io
import math
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

from pipeline.core.hashing import content_hash
from pipeline.core.manifest import (
    SPLITS,
    SPLITS_COLUMNS,
    Splits,
    manifest_path,
    read_manifest,
    read_splits,
)
from pipeline.errors import InputError
from pipeline.params import Params, SplitParams, params_option
from pipeline.storage.files import folder_lock, write_json, write_text

TRAIN, VAL, BENCH, NONE = 0, 1, 2, -1
_CODE = {name: code for code, name in enumerate(SPLITS)}
_FLIP_STEPS = 64  # single-group flips per pass after the bulk fill (|residual| shrinks each)


@dataclass(frozen=True)
class SplitInput:
    """What the split needs from the manifest: one row per sample, any order."""

    ids: np.ndarray  # (N,) str
    duplicate_groups: np.ndarray  # (N,) str: the manifest's `group` (same image bytes)
    pixels: np.ndarray  # (N, C) int64: pixels of each class; presence = pixels > 0
    classes: tuple[str, ...]


@dataclass(frozen=True)
class SplitResult:
    ids: np.ndarray  # (N,) str, sorted
    groups: np.ndarray  # (N,) str: the group name of each sample
    splits: np.ndarray  # (N,) str: train / val / benchmark
    report: dict[str, Any]
    warnings: tuple[str, ...]
    notes: tuple[str, ...]  # informational lines (e.g. a deliberate reshuffle)


# ------------------------------------------------------------------------------------------
# pure core


def group_regex(cfg: SplitParams) -> re.Pattern[str] | None:
    """The compiled `split.group_pattern` (params.py checked it), None when unset."""
    return None if cfg.group_pattern is None else re.compile(cfg.group_pattern)


def assign_splits(samples: SplitInput, cfg: SplitParams, *, previous: Splits | None = None,
                  benchmark: Collection[str] = (),
                  benchmark_source: str = "split.benchmark") -> SplitResult:
    """Place every sample in train, val or benchmark (see the module docstring)."""
    # 1. the samples sorted by id (the result never depends on the manifest's row order)
    order = np.argsort(samples.ids, kind="stable")
    ids = np.asarray(samples.ids, dtype=str)[order]
    classes = samples.classes
    pixels = np.asarray(samples.pixels, dtype=np.int64)
    if pixels.shape != (len(ids), len(classes)):
        raise ValueError(f"pixels must be (samples, classes) = {(len(ids), len(classes))}, "
                         f"got {pixels.shape}")
    pixels = pixels[order]
    repeated = np.unique(ids[1:][ids[1:] == ids[:-1]])
    if len(repeated):
        raise InputError(f"manifest: ids must be unique, got {len(repeated)} repeated: "
                         f"{_examples(repeated)}")
    bench = _benchmark_mask(ids, benchmark, benchmark_source)

    # 2. groups: regex keys + duplicate images
    warnings: list[str] = []
    notes: list[str] = []
    comp, names, unmatched = _groups(ids, np.asarray(samples.duplicate_groups, dtype=str)[order],
                                     group_regex(cfg))
    if len(unmatched):
        warnings.append(f"{len(unmatched)} id(s) do not match split.group_pattern "
                        f"{cfg.group_pattern!r}; each is a group of its own: "
                        f"{_examples(unmatched)}")

    # 3. what is fixed already: previous assignments (unless the version changed), the
    # benchmark list (its rows are free again: the list decides them)
    prev_code = _previous_codes(ids, previous)
    prior = prev_code.copy()
    if previous is not None and previous.version is not None and previous.version != cfg.version:
        notes.append(f"split.version changed from {previous.version} to {cfg.version}: "
                     f"all samples reshuffled")
        prior[:] = NONE
    prior[prior == BENCH] = NONE
    group_split = _fixed_groups(comp, len(names), prior, bench)

    # 4. the new groups, one pass per class (rarest first), then the rest by image count
    counts, pix, images = _group_counts(comp, len(names), pixels, bench)
    group_hash = _hash_names(names, cfg.seed, cfg.version)
    groups_with = (counts > 0).sum(axis=0)
    for c in sorted(range(1, len(classes)), key=lambda c: (groups_with[c], c)):
        per_image = np.divide(pix[:, c], counts[:, c], out=np.zeros(len(names)),
                              where=counts[:, c] > 0)
        _place(group_split, counts[:, c], per_image, group_hash, cfg.val_fraction,
               _fraction(cfg.seed, cfg.version, classes[c]), both_sides=True)
    _place(group_split, images, np.zeros(len(names)), group_hash, cfg.val_fraction,
           _fraction(cfg.seed, cfg.version, "\x00all"), both_sides=False)
    group_split[group_split == NONE] = TRAIN  # only groups made of benchmark ids are left

    # 5. groups -> samples, and what moved
    split_code = group_split[comp].astype(np.int8)
    split_code[bench] = BENCH
    moved = (prior != NONE) & (split_code != prior)
    if moved.any():
        warnings.append(f"{int(moved.sum())} previously assigned sample(s) changed split to "
                        f"keep their group together (new duplicates or group members, or "
                        f"the benchmark list): {_examples(ids[moved])}")
    report = _report(cfg, classes, split_code, comp, counts, pixels, bench, group_split,
                     prev_code, previous, warnings)
    return SplitResult(ids=ids, groups=names[comp], splits=np.asarray(SPLITS)[split_code],
                       report=report, warnings=tuple(warnings), notes=tuple(notes))


def _fixed_groups(comp: np.ndarray, n_groups: int, prior: np.ndarray, bench: np.ndarray
                  ) -> np.ndarray:
    """Each group's split from its previously placed samples (NONE when it has none). A group
    whose old samples sit on both sides (new data joined them) goes to the side with more of
    them (ties: the side of its smallest id); a group with a benchmark id goes to val."""
    group_split = np.full(n_groups, NONE, dtype=np.int8)
    old_train = np.bincount(comp[prior == TRAIN], minlength=n_groups)
    old_val = np.bincount(comp[prior == VAL], minlength=n_groups)
    group_split[(old_train > 0) & (old_val == 0)] = TRAIN
    group_split[(old_val > 0) & (old_train == 0)] = VAL
    conflict = np.flatnonzero((old_train > 0) & (old_val > 0))
    if len(conflict):
        first_old = np.full(n_groups, len(prior))
        has_prior = np.flatnonzero(prior != NONE)
        np.minimum.at(first_old, comp[has_prior], has_prior)
        tie_side = prior[np.minimum(first_old, len(prior) - 1)]
        side = np.where(old_val > old_train, VAL, np.where(old_train > old_val, TRAIN, tie_side))
        group_split[conflict] = side[conflict]
    group_split[np.bincount(comp[bench], minlength=n_groups) > 0] = VAL
    return group_split


def _group_counts(comp: np.ndarray, n_groups: int, pixels: np.ndarray, bench: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group, over its train/val candidates (benchmark samples excluded): images showing
    each class (groups x classes), pixels of each class, and images."""
    n_classes = pixels.shape[1]
    keep = ~bench
    present = (pixels > 0) & keep[:, None]
    images = np.bincount(comp, weights=keep, minlength=n_groups)
    if not n_groups:
        return np.zeros((0, n_classes)), np.zeros((0, n_classes)), images
    counts = np.stack([np.bincount(comp, weights=present[:, c], minlength=n_groups)
                       for c in range(n_classes)], axis=1)
    pix = np.stack([np.bincount(comp, weights=pixels[:, c] * keep, minlength=n_groups)
                    for c in range(n_classes)], axis=1)
    return counts, pix, images


def _benchmark_mask(ids: np.ndarray, benchmark: Collection[str], source: str) -> np.ndarray:
    wanted = np.unique(np.asarray(list(benchmark), dtype=str))
    if not len(wanted):
        return np.zeros(len(ids), dtype=bool)
    known = np.isin(wanted, ids)
    if not known.all():
        unknown = wanted[~known]
        hints = []
        for name in unknown[:5]:
            close = difflib.get_close_matches(str(name), ids.tolist(), n=1)
            hints.append(repr(str(name)) + (f" (did you mean {close[0]!r}?)" if close else ""))
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise InputError(f"{source}: every id must be a sample id in the manifest (annotation "
                         f"path below the raw dir, no extension), got {len(unknown)} unknown: "
                         f"{', '.join(hints)}{more}")
    return np.isin(ids, wanted)


def _groups(ids: np.ndarray, dups: np.ndarray, pattern: re.Pattern[str] | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of "same regex key" + "same duplicate group".

    Returns (component index per sample, name per component, ids the pattern missed)."""
    n = len(ids)
    keys = np.full(n, "", dtype=object)
    dup_codes = pd.factorize(dups)[0]
    dup_codes[dups == ""] = -1  # no duplicate group given: no relation
    relations = [dup_codes]
    unmatched = ids[:0]
    if pattern is not None:
        extracted = pd.Series(ids, dtype=object).str.extract(pattern)["group"]
        matched = extracted.notna().to_numpy() & (extracted.fillna("").to_numpy() != "")
        keys[matched] = extracted.to_numpy()[matched]
        codes = np.full(n, -1, dtype=np.int64)
        codes[matched] = pd.factorize(keys[matched])[0]
        relations.append(codes)
        unmatched = ids[~matched]
    root = np.arange(n)
    while True:
        before = root.copy()
        for codes in relations:
            valid = np.flatnonzero(codes >= 0)
            low = np.full(int(codes.max(initial=-1)) + 1, n)
            np.minimum.at(low, codes[valid], root[valid])
            root[valid] = low[codes[valid]]
            root = root[root]
        if np.array_equal(root, before):
            break
    comp, uniques = pd.factorize(root)  # root = smallest member index = smallest id
    names = ids[uniques].astype(object)
    if pattern is not None and n:
        has_key = np.flatnonzero(keys != "")
        smallest = pd.Series(keys[has_key]).groupby(comp[has_key]).min()
        names[smallest.index.to_numpy()] = smallest.to_numpy()
        by_id = np.ones(len(names), dtype=bool)
        by_id[smallest.index.to_numpy()] = False
        taken = pd.Series(names).duplicated(keep=False).to_numpy() & by_id
        names[taken] = [f"{name}#" for name in names[taken]]  # an id equal to another's key
    return comp.astype(np.int64), names.astype(str), unmatched


def _previous_codes(ids: np.ndarray, previous: Splits | None) -> np.ndarray:
    codes = np.full(len(ids), NONE, dtype=np.int8)
    if previous is None or not previous.assignments:
        return codes
    prev_ids = pd.Index(list(previous.assignments))
    prev_codes = np.array([_CODE[s] for s in previous.assignments.values()], dtype=np.int8)
    where = prev_ids.get_indexer(ids)
    found = where >= 0
    codes[found] = prev_codes[where[found]]
    return codes


def _place(group_split: np.ndarray, counts: np.ndarray, key: np.ndarray, group_hash: np.ndarray,
           fraction: float, offset: float, *, both_sides: bool) -> None:
    """Place the unplaced groups with counts > 0 so that val holds `fraction` of the counts."""
    candidates = np.flatnonzero((group_split == NONE) & (counts > 0))
    if not len(candidates):
        return
    total = counts.sum()
    in_val = counts[group_split == VAL].sum()
    in_train = counts[group_split == TRAIN].sum()
    candidates = candidates[np.lexsort((group_hash[candidates], key[candidates]))]
    sizes = counts[candidates]
    target = min(max(math.floor(fraction * total - in_val + 0.5), 0), int(sizes.sum()))
    rate = target / sizes.sum()
    steps = np.floor(rate * np.arange(len(candidates) + 1) + offset)
    chosen = steps[1:] > steps[:-1]  # systematic sample along the sorted order
    _fill(chosen, sizes, target, group_hash[candidates])
    if both_sides and (counts > 0).sum() >= 2:
        smallest = np.lexsort((group_hash[candidates], sizes))
        if in_val == 0 and not chosen.any():
            chosen[smallest[0]] = True
        if in_train == 0 and chosen.all():
            chosen[smallest[0]] = False
    group_split[candidates] = np.where(chosen, VAL, TRAIN)


def _fill(chosen: np.ndarray, sizes: np.ndarray, target: int, tie: np.ndarray) -> None:
    """Flip groups until the chosen sizes add up to `target` as closely as they can."""
    residual = target - sizes[chosen].sum()
    if residual:  # bulk: add (or drop) groups that fit, in hash order
        pool = np.flatnonzero(~chosen if residual > 0 else chosen)
        pool = pool[np.argsort(tie[pool], kind="stable")]
        fits = np.where(sizes[pool] <= abs(residual), sizes[pool], 0)
        take = pool[(np.cumsum(fits) <= abs(residual)) & (fits > 0)]
        chosen[take] = residual > 0
    for _ in range(_FLIP_STEPS):
        residual = target - sizes[chosen].sum()
        if not residual:
            return
        pool = np.flatnonzero((~chosen if residual > 0 else chosen)
                              & (sizes < 2 * abs(residual)))
        if not len(pool):
            return
        best = pool[np.lexsort((tie[pool], np.abs(abs(residual) - sizes[pool])))[0]]
        chosen[best] = not chosen[best]


def _hash_names(names: np.ndarray, seed: int, version: int) -> np.ndarray:
    prefix = f"{seed}\x00{version}\x00"
    return np.array([int(content_hash((prefix + name).encode("utf-8"))[:15], 16)
                     for name in names.tolist()], dtype=np.int64)


def _fraction(seed: int, version: int, label: str) -> float:
    return int(content_hash(f"{seed}\x00{version}\x00{label}".encode())[:13], 16) / 16.0**13


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


def _report(cfg: SplitParams, classes: tuple[str, ...], split_code: np.ndarray, comp: np.ndarray,
            counts: np.ndarray, pixels: np.ndarray, bench: np.ndarray, group_split: np.ndarray,
            prev_code: np.ndarray, previous: Splits | None, warnings: list[str]
            ) -> dict[str, Any]:
    """reports/split.json: images and groups per split, each class's shares against the
    target (with its allowance), and what changed since the previous split."""
    f = cfg.val_fraction
    splits: dict[str, Any] = {}
    for code, name in enumerate(SPLITS):
        rows = split_code == code
        splits[name] = {"images": int(rows.sum()), "groups": len(np.unique(comp[rows]))}
    per_class: dict[str, Any] = {}
    worst = worst_px = 0.0
    within = True
    for c, name in enumerate(classes):
        entry = _class_entry(cfg, c, pixels, split_code, counts)
        per_class[name] = entry
        total = entry["images"]["train"] + entry["images"]["val"]
        if c == 0 or not total:
            if not total:
                warnings.append(f"class {name!r} has no image outside the benchmark set")
            continue
        worst = max(worst, abs(entry["deviation"]))
        if entry["pixel_share"]["val"] is not None:
            worst_px = max(worst_px, abs(entry["pixel_share"]["val"] - f))
        outside = abs(entry["deviation"]) > entry["allowed"] + 1e-9
        within = within and not outside
        warnings += _class_warnings(name, entry, total, outside, f)
    prev_known = prev_code != NONE
    removed = 0
    if previous is not None:
        removed = len(previous.assignments) - int(prev_known.sum())
    return {
        "version": cfg.version,
        "seed": cfg.seed,
        "val_fraction": f,
        "tolerance": cfg.tolerance,
        "splits": splits,
        "classes": per_class,
        "max_abs_deviation": round(worst, 6),
        "max_abs_pixel_deviation": round(worst_px, 6),
        "within_allowed": within,  # every foreground class within its allowed deviation
        "changes": {
            "kept": int((prev_known & (split_code == prev_code)).sum()),
            "moved": int((prev_known & (split_code != prev_code)).sum()),
            "new": int((~prev_known).sum()),
            "removed": removed,
        },
        "warnings": warnings,
    }


def _class_entry(cfg: SplitParams, c: int, pixels: np.ndarray, split_code: np.ndarray,
                 counts: np.ndarray) -> dict[str, Any]:
    """One class in split.json: images per split, image and pixel shares, the deviation of
    its val share from the target and the deviation it is allowed."""
    present = pixels[:, c] > 0
    n = {s: int((present & (split_code == code)).sum()) for code, s in enumerate(SPLITS)}
    px = {s: int(pixels[split_code == code, c].sum()) for code, s in enumerate(SPLITS[:2])}
    total, total_px = n["train"] + n["val"], px["train"] + px["val"]
    val_share = _share(n["val"], total)
    allowed = max(cfg.tolerance, counts[:, c].max() / total) if total else None
    return {
        "images": n, "groups": int((counts[:, c] > 0).sum()),
        "image_share": {"train": _share(n["train"], total), "val": val_share},
        "pixel_share": {"train": _share(px["train"], total_px),
                        "val": _share(px["val"], total_px)},
        "target": cfg.val_fraction,
        "deviation": round(val_share - cfg.val_fraction, 6) if val_share is not None else None,
        "allowed": round(float(allowed), 6) if allowed is not None else None,
    }


def _class_warnings(name: str, entry: dict[str, Any], total: int, outside: bool,
                    f: float) -> list[str]:
    """A foreground class missing from a split, or outside its allowed deviation."""
    warnings = []
    n, groups = entry["images"], entry["groups"]
    for side in ("val", "train"):
        if n[side]:
            continue
        why = (f"its {total} image(s) form one group, which cannot be in both splits"
               if groups < 2 else f"{total} image(s) in {groups} groups, placed earlier")
        warnings.append(f"class {name!r} is missing from {side}: {why}")
    if n["val"] and n["train"] and outside:
        warnings.append(f"class {name!r}: val image share {entry['image_share']['val']:.3f} is "
                        f"outside {f:g} +- {entry['allowed']:.3f}")
    return warnings


def _examples(values: np.ndarray, n: int = 3) -> str:
    shown = ", ".join(repr(str(v)) for v in values[:n])
    return shown + (f" and {len(values) - n} more" if len(values) > n else "")


# ------------------------------------------------------------------------------------------
# IO at the edges


def split_input(manifest_csv: Path, classes: tuple[str, ...]) -> SplitInput:
    """What the split needs from the manifest (see core.manifest.read_manifest)."""
    manifest = read_manifest(manifest_csv, classes)
    return SplitInput(ids=np.array([r.id for r in manifest.rows], dtype=str),
                      duplicate_groups=np.array([r.group for r in manifest.rows], dtype=str),
                      pixels=manifest.pixel_counts(), classes=tuple(classes))


def read_benchmark(path: Path) -> list[str]:
    """Ids one per line; blank lines and lines starting with # are skipped."""
    if not path.is_file():
        raise InputError(f"{path}: split.benchmark names a file that does not exist")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def splits_csv(result: SplitResult, version: int) -> str:
    table = pd.DataFrame({"id": result.ids, "group": result.groups, "split": result.splits,
                          "version": version}, columns=list(SPLITS_COLUMNS))
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def run_split(params: Params) -> SplitResult:
    """The stage: read manifest, old splits and benchmark list; write splits.csv and report."""
    cfg = params.split
    with folder_lock([Path(cfg.splits_path).parent], "split"):  # it reads its own last output
        samples = split_input(manifest_path(params.convert.out_dir), params.labels.classes)
        benchmark: list[str] = []
        if cfg.benchmark is not None:
            benchmark = read_benchmark(Path(cfg.benchmark))
        previous = read_splits(cfg.splits_path)
        result = assign_splits(samples, cfg, previous=previous, benchmark=benchmark,
                               benchmark_source=str(cfg.benchmark))
        write_text(cfg.splits_path, splits_csv(result, cfg.version))
        write_json(cfg.report_path, result.report)
        return result


@click.command("split")
@params_option
def command(params: Params) -> int:
    """Sticky, stratified, group-aware train/val split of the converted samples.

    Reads <convert.out_dir>/manifest.csv and writes split.splits_path (id, group, split,
    version) and split.report_path. Samples already in splits.csv keep their split; new
    groups are placed so that each class's val image share approaches split.val_fraction.
    Bump split.version to reshuffle everything.
    """
    result = run_split(params)
    for line in result.notes:
        click.echo(f"note: {line}", err=True)
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)
    rep = result.report
    s, ch = rep["splits"], rep["changes"]
    click.echo(f"split: {s['train']['images']} train, {s['val']['images']} val, "
               f"{s['benchmark']['images']} benchmark images; {ch['new']} new, {ch['kept']} kept, "
               f"{ch['moved']} moved, {ch['removed']} removed; worst class deviation "
               f"{rep['max_abs_deviation']:.3f} (tolerance {rep['tolerance']:g})")
    sys.stdout.flush()
    return 0
