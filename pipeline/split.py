"""Stage `split`: a sticky, stratified, group-aware train/val split (+ a fixed benchmark set).

`segpipe split` reads `<convert.out_dir>/manifest.csv` and writes `split.splits_path`
(csv: id, group, split, version; sorted by id) and `split.report_path` (a DVC metric).
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
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

from pipeline.errors import InputError, ParamsError
from pipeline.io import content_hash, write_json, write_text
from pipeline.params import SplitParams, load_params

SPLITS = ("train", "val", "benchmark")
TRAIN, VAL, BENCH, NONE = 0, 1, 2, -1
_CODE = {name: code for code, name in enumerate(SPLITS)}
SPLITS_COLUMNS = ("id", "group", "split", "version")
_FLIP_STEPS = 64  # single-group flips per pass after the bulk fill (|residual| shrinks each)


@dataclass(frozen=True)
class Samples:
    """What the split needs from the manifest: one row per sample, any order."""

    ids: np.ndarray  # (N,) str
    duplicate_groups: np.ndarray  # (N,) str: the manifest's `group` (same image bytes)
    pixels: np.ndarray  # (N, C) int64: pixels of each class; presence = pixels > 0
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Previous:
    """An existing splits.csv: id -> split, and the `split.version` it was made with."""

    assignments: Mapping[str, str]
    version: int | None  # None: the file does not say (kept, as if it were current)


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


def check_params(cfg: SplitParams) -> re.Pattern[str] | None:
    """Validate the split section; return the compiled group pattern (None when unset)."""
    problems = []
    if not 0.0 < cfg.val_fraction < 1.0:
        problems.append(f"split.val_fraction must be between 0 and 1 (exclusive), "
                        f"got {cfg.val_fraction}")
    if not 0.0 <= cfg.tolerance < 1.0:
        problems.append(f"split.tolerance must be in [0, 1), got {cfg.tolerance}")
    pattern = None
    if cfg.group_pattern is not None:
        try:
            pattern = re.compile(cfg.group_pattern)
        except re.error as exc:
            problems.append(f"split.group_pattern must be a valid regex, got "
                            f"{cfg.group_pattern!r} ({exc})")
        else:
            if "group" not in pattern.groupindex:
                problems.append(
                    f"split.group_pattern must contain a named group (?P<group>...) that "
                    f"picks the group key out of the id, e.g. '^(?P<group>.+)_\\d+$', "
                    f"got {cfg.group_pattern!r}")
    if problems:
        raise ParamsError("\n".join(problems))
    return pattern


def assign_splits(samples: Samples, cfg: SplitParams, *, previous: Previous | None = None,
                  benchmark: Collection[str] = (),
                  benchmark_source: str = "split.benchmark") -> SplitResult:
    """Place every sample in train, val or benchmark (see the module docstring)."""
    pattern = check_params(cfg)
    order = np.argsort(samples.ids, kind="stable")
    ids = np.asarray(samples.ids, dtype=str)[order]
    dups = np.asarray(samples.duplicate_groups, dtype=str)[order]
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

    warnings: list[str] = []
    notes: list[str] = []
    comp, names, unmatched = _groups(ids, dups, pattern)
    if len(unmatched):
        warnings.append(f"{len(unmatched)} id(s) do not match split.group_pattern "
                        f"{cfg.group_pattern!r}; each is a group of its own: "
                        f"{_examples(unmatched)}")
    n_groups = len(names)

    # previous assignments (benchmark rows are free again: the list decides them)
    prev_code = _previous_codes(ids, previous)
    prior = prev_code.copy()
    if previous is not None and previous.version is not None and previous.version != cfg.version:
        notes.append(f"split.version changed from {previous.version} to {cfg.version}: "
                     f"all samples reshuffled")
        prior[:] = NONE
    prior[prior == BENCH] = NONE

    group_split = np.full(n_groups, NONE, dtype=np.int8)
    old_train = np.bincount(comp[prior == TRAIN], minlength=n_groups)
    old_val = np.bincount(comp[prior == VAL], minlength=n_groups)
    group_split[(old_train > 0) & (old_val == 0)] = TRAIN
    group_split[(old_val > 0) & (old_train == 0)] = VAL
    conflict = np.flatnonzero((old_train > 0) & (old_val > 0))
    if len(conflict):
        first_old = np.full(n_groups, len(ids))
        has_prior = np.flatnonzero(prior != NONE)
        np.minimum.at(first_old, comp[has_prior], has_prior)
        tie_side = prior[np.minimum(first_old, len(ids) - 1)]
        side = np.where(old_val > old_train, VAL, np.where(old_train > old_val, TRAIN, tie_side))
        group_split[conflict] = side[conflict]
    has_bench = np.bincount(comp[bench], minlength=n_groups) > 0
    group_split[has_bench] = VAL

    # per-group counts over train/val candidates (benchmark samples excluded)
    keep = ~bench
    present = (pixels > 0) & keep[:, None]
    images = np.bincount(comp, weights=keep, minlength=n_groups)
    counts = np.stack([np.bincount(comp, weights=present[:, c], minlength=n_groups)
                       for c in range(len(classes))], axis=1) if n_groups else \
        np.zeros((0, len(classes)))
    pix = np.stack([np.bincount(comp, weights=pixels[:, c] * keep, minlength=n_groups)
                    for c in range(len(classes))], axis=1) if n_groups else \
        np.zeros((0, len(classes)))
    group_hash = _hash_names(names, cfg.seed, cfg.version)

    groups_with = (counts > 0).sum(axis=0)
    passes = sorted(range(1, len(classes)), key=lambda c: (groups_with[c], c))
    for c in passes:
        per_image = np.divide(pix[:, c], counts[:, c], out=np.zeros(n_groups),
                              where=counts[:, c] > 0)
        _place(group_split, counts[:, c], per_image, group_hash, cfg.val_fraction,
               _fraction(cfg.seed, cfg.version, classes[c]), both_sides=True)
    _place(group_split, images, np.zeros(n_groups), group_hash, cfg.val_fraction,
           _fraction(cfg.seed, cfg.version, "\x00all"), both_sides=False)
    group_split[group_split == NONE] = TRAIN  # only groups made of benchmark ids are left

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


def _previous_codes(ids: np.ndarray, previous: Previous | None) -> np.ndarray:
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
            prev_code: np.ndarray, previous: Previous | None, warnings: list[str]
            ) -> dict[str, Any]:
    f = cfg.val_fraction
    present = pixels > 0
    splits: dict[str, Any] = {}
    for code, name in enumerate(SPLITS):
        rows = split_code == code
        splits[name] = {"images": int(rows.sum()), "groups": len(np.unique(comp[rows]))}
    per_class: dict[str, Any] = {}
    worst = worst_px = 0.0
    within = True
    for c, name in enumerate(classes):
        n = {s: int((present[:, c] & (split_code == code)).sum()) for code, s in enumerate(SPLITS)}
        px = {s: int(pixels[split_code == code, c].sum()) for code, s in enumerate(SPLITS[:2])}
        total, total_px = n["train"] + n["val"], px["train"] + px["val"]
        groups = int((counts[:, c] > 0).sum())
        val_share = _share(n["val"], total)
        val_px = _share(px["val"], total_px)
        allowed = max(cfg.tolerance, counts[:, c].max() / total) if total else None
        deviation = round(val_share - f, 6) if val_share is not None else None
        per_class[name] = {
            "images": n, "groups": groups,
            "image_share": {"train": _share(n["train"], total), "val": val_share},
            "pixel_share": {"train": _share(px["train"], total_px), "val": val_px},
            "target": f, "deviation": deviation,
            "allowed": round(float(allowed), 6) if allowed is not None else None,
        }
        if c == 0 or not total:
            if not total:
                warnings.append(f"class {name!r} has no image outside the benchmark set")
            continue
        worst = max(worst, abs(deviation))
        if val_px is not None:
            worst_px = max(worst_px, abs(val_px - f))
        for side in ("val", "train"):
            if n[side]:
                continue
            why = (f"its {total} image(s) form one group, which cannot be in both splits"
                   if groups < 2 else f"{total} image(s) in {groups} groups, placed earlier")
            warnings.append(f"class {name!r} is missing from {side}: {why}")
        if abs(deviation) > allowed + 1e-9:
            within = False
        if n["val"] and n["train"] and abs(deviation) > allowed + 1e-9:
            warnings.append(f"class {name!r}: val image share {val_share:.3f} is outside "
                            f"{f:g} +- {allowed:.3f}")
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


def _examples(values: np.ndarray, n: int = 3) -> str:
    shown = ", ".join(repr(str(v)) for v in values[:n])
    return shown + (f" and {len(values) - n} more" if len(values) > n else "")


# ------------------------------------------------------------------------------------------
# IO at the edges


def read_manifest(path: Path, classes: tuple[str, ...]) -> Samples:
    """The manifest columns the split needs; a missing file or column is an InputError."""
    if not path.is_file():
        raise InputError(f"{path}: manifest not found; run `segpipe convert` first")
    columns = ["id", "group", *(f"px.{c}" for c in classes)]
    try:
        header = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: must be a CSV with a header row, got an empty file") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputError(f"{path}: must have the columns {missing} (one px.<class> per class in "
                         f"params.yaml); re-run `segpipe convert` after changing classes")
    table = pd.read_csv(path, usecols=columns, dtype={"id": str, "group": str},
                        keep_default_na=False)
    px_cols = columns[2:]
    try:
        pixels = table[px_cols].to_numpy(dtype=np.int64)
    except (ValueError, TypeError):
        raise InputError(f"{path}: px.<class> columns must hold integer pixel counts") from None
    return Samples(ids=table["id"].to_numpy(dtype=str),
                   duplicate_groups=table["group"].to_numpy(dtype=str),
                   pixels=pixels, classes=classes)


def read_previous(path: Path) -> Previous | None:
    """An existing splits.csv, or None when there is none yet."""
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return None
    missing = [c for c in ("id", "split") if c not in table.columns]
    if missing:
        raise InputError(f"{path}: must have the columns id and split, missing {missing}; "
                         f"delete it to split from scratch")
    bad = ~table["split"].isin(SPLITS)
    if bad.any():
        rows = [f"line {i + 2}: {v!r}" for i, v in table["split"][bad].head(3).items()]
        raise InputError(f"{path}: split must be one of {list(SPLITS)}, got {', '.join(rows)}")
    if table["id"].duplicated().any():
        raise InputError(f"{path}: ids must be unique, got repeated "
                         f"{_examples(table['id'][table['id'].duplicated()].to_numpy())}")
    version = None
    if "version" in table.columns and len(table):
        values = table["version"].unique()
        if len(values) != 1 or not values[0].lstrip("-").isdigit():
            raise InputError(f"{path}: version must be one integer on every row, got "
                             f"{sorted(values)[:3]}")
        version = int(values[0])
    return Previous(assignments=dict(zip(table["id"], table["split"], strict=True)),
                    version=version)


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


def run_split(params_path: str | Path = "params.yaml") -> SplitResult:
    """The stage: read manifest, old splits and benchmark list; write splits.csv and report."""
    params = load_params(params_path)
    cfg = params.split
    check_params(cfg)
    samples = read_manifest(Path(params.convert.out_dir) / "manifest.csv", params.labels.classes)
    benchmark: list[str] = []
    if cfg.benchmark is not None:
        benchmark = read_benchmark(Path(cfg.benchmark))
    previous = read_previous(Path(cfg.splits_path))
    result = assign_splits(samples, cfg, previous=previous, benchmark=benchmark,
                           benchmark_source=str(cfg.benchmark))
    write_text(cfg.splits_path, splits_csv(result, cfg.version))
    write_json(cfg.report_path, result.report)
    return result


@click.command("split")
@click.option("--params", "params_path", default="params.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="params.yaml to read (paths in it are "
              "relative to the current directory).")
def command(params_path: str) -> int:
    """Sticky, stratified, group-aware train/val split of the converted samples.

    Reads <convert.out_dir>/manifest.csv and writes split.splits_path (id, group, split,
    version) and split.report_path. Samples already in splits.csv keep their split; new
    groups are placed so that each class's val image share approaches split.val_fraction.
    Bump split.version to reshuffle everything.
    """
    result = run_split(params_path)
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
