"""`segpipe compare --base REV`: the CI gate on mIoU across data versions.

Reads the committed results at a git revision (`git cat-file`, no checkout) and those in the
working tree, prints one table (mIoU, mIoU without background, each class's IoU as base / new /
delta with a bootstrap interval of the delta, and the data-quality deltas: samples added,
removed, moved between splits, files rejected), and exits with the gate's verdict:

    0  within the thresholds (gate.max_drop for mIoU, gate.max_class_drop for any class)
    1  a regression: mIoU or a class's IoU dropped more than allowed (with gate.significant:
       and its interval excludes zero), or the new run has no valid mIoU (the message says
       which)
    2  the two runs were measured on different eval sets (eval fingerprints differ), unless
       --allow-different-eval; a regression then still gives 1
    3  a file is missing, unreadable or malformed, at REV or in the working tree, or git
       cannot be asked (the message names the file and the revision)

The eval set compared is the fixed benchmark set when both runs have one (`split.benchmark`:
mIoU stays comparable while val grows with the data), else val; `--on` picks one explicitly.
Files read (paths from params.yaml): evaluate.metrics_path, evaluate.images_path (optional:
without it no interval), <convert.reports_dir>/data.json and split.splits_path (optional:
without it the added/removed rows say n/a). The bootstrap is tools/bootstrap.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import click

from pipeline.params import GateParams, Params, params_option
from pipeline.storage.files import write_text
from pipeline.tools.bootstrap import Bootstrap, Interval, bootstrap_change
from pipeline.tools.runs import (
    BadRunFile,
    EvalScores,
    FileCounts,
    ImageCounts,
    RunMetrics,
    check_counts,
    parse_data,
    parse_images,
    parse_metrics,
    parse_splits,
    read_blobs,
    read_working,
    resolve_revision,
    where,
)

_EPS = 1e-9  # a drop equal to the threshold passes, whatever the float rounding

@dataclass(frozen=True)
class Paths:
    metrics: str  # evaluate.metrics_path
    images: str  # evaluate.images_path
    data: str  # <convert.reports_dir>/data.json
    splits: str  # split.splits_path


@dataclass(frozen=True)
class Snapshot:
    """The results of one side: a git revision or the working tree."""

    name: str  # "origin/main (1a2b3c4)" or "working tree"
    metrics: RunMetrics
    files: FileCounts
    splits: Mapping[str, str] | None  # id -> split, None when splits.csv is absent
    images: Mapping[str, ImageCounts] | None = None  # eval set -> counts; None: no images.json
    where: str = "in the working tree"  # for messages: "at HEAD (1a2b3c4)"


@dataclass(frozen=True)
class Row:
    name: str
    base: float | None
    new: float | None
    kind: str = "score"  # "score" (4 decimals), "count" (integer) or "change" (count, no base)
    interval: Interval | None = None  # bootstrap interval of the delta, when there is one

    @property
    def delta(self) -> float | None:
        if self.base is None or self.new is None:
            return None
        return self.new - self.base


@dataclass(frozen=True)
class Comparison:
    base: str
    new: str
    eval_set: str  # "val" or "benchmark"
    same_eval: bool
    metric_rows: tuple[Row, ...]
    data_rows: tuple[Row, ...]
    regressions: tuple[str, ...]  # one line per failed check
    notes: tuple[str, ...]
    gate: GateParams
    allow_different_eval: bool
    bootstrap: Bootstrap | None = None
    warnings: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        if self.regressions:
            return 1
        if not self.same_eval and not self.allow_different_eval:
            return 2
        return 0

    @property
    def verdict(self) -> str:
        limits = (f"gate: mIoU may drop {self.gate.max_drop:g}, a class "
                  f"{self.gate.max_class_drop:g}")
        if self.gate.significant:
            limits += ", failing only where the interval excludes 0"
        if self.regressions:
            return f"FAIL: {'; '.join(self.regressions)} ({limits})"
        if not self.same_eval and not self.allow_different_eval:
            return ("DIFFERENT EVAL SETS: the two runs were measured on different images "
                    "(eval fingerprints differ); the scores are not comparable. Configure "
                    "split.benchmark for a fixed eval set, or pass --allow-different-eval")
        return f"PASS ({limits})"


# ---------------------------------------------------------------- pure core


def pick_eval_set(base: RunMetrics, new: RunMetrics, on: str) -> str:
    """The eval set to compare: "benchmark" when asked, or (auto) when both runs have one,
    else "val"."""
    both = base.benchmark is not None and new.benchmark is not None
    if on == "benchmark" and not both:
        missing = [n for n, m in (("base", base), ("new", new)) if m.benchmark is None]
        raise BadRunFile(f"--on benchmark: no benchmark section in the {' and '.join(missing)}"
                         f" metrics (set split.benchmark and re-run the pipeline)")
    return "benchmark" if on == "benchmark" or (on == "auto" and both) else "val"


def _section(snapshot: Snapshot, eval_set: str) -> EvalScores:
    scores = snapshot.metrics.section(eval_set)
    if scores is None:
        raise BadRunFile(f"the metrics {snapshot.where} have no {eval_set} section")
    return scores


def compare(base: Snapshot, new: Snapshot, gate: GateParams, *, on: str = "auto",
            allow_different_eval: bool = False) -> Comparison:
    """Build the table and the gate's verdict from two snapshots (no IO)."""
    eval_set = pick_eval_set(base.metrics, new.metrics, on)
    b, n = _section(base, eval_set), _section(new, eval_set)
    notes: list[str] = []
    same_eval = b.eval_fingerprint is not None and b.eval_fingerprint == n.eval_fingerprint
    if b.eval_fingerprint is None or n.eval_fingerprint is None:
        notes.append("a run has no eval_fingerprint: the eval sets cannot be checked")
    elif not same_eval:
        notes.append(f"eval sets differ: {b.eval_fingerprint} -> {n.eval_fingerprint} "
                     f"({b.n_images} -> {n.n_images} images)")
    boot = _bootstrap(base, new, eval_set, gate, notes)
    rows = metric_rows(b, n, boot)
    regressions = gate_rows(rows, gate, notes)
    warnings = detection_warnings(boot, gate) if boot is not None else []
    if set(b.iou) != set(n.iou):
        notes.append(f"classes differ: {sorted(b.iou)} -> {sorted(n.iou)}")
    if boot is not None:
        notes.append(boot.describe())
    return Comparison(base.name, new.name, eval_set, same_eval, tuple(rows),
                      data_rows(base, new, notes), tuple(regressions), tuple(notes), gate,
                      allow_different_eval, boot, tuple(warnings))


def metric_rows(b: EvalScores, n: EvalScores, boot: Bootstrap | None) -> list[Row]:
    """mIoU, mIoU fg, IoU per class (the new run's classes first), eval images."""
    classes = list(n.iou) + [c for c in b.iou if c not in n.iou]
    rows = [Row("mIoU", b.miou, n.miou, interval=boot.miou if boot else None),
            Row("mIoU fg", b.miou_fg, n.miou_fg, interval=boot.miou_fg if boot else None)]
    rows += [Row(f"IoU {c}", b.iou.get(c), n.iou.get(c),
                 interval=boot.iou.get(c) if boot else None) for c in classes]
    rows.append(Row("eval images", b.n_images, n.n_images, "count"))
    return rows


def _bootstrap(base: Snapshot, new: Snapshot, eval_set: str, gate: GateParams,
               notes: list[str]) -> Bootstrap | None:
    """Intervals from the per-image counts of both runs, when both have them."""
    b, n = ((s.images or {}).get(eval_set) for s in (base, new))
    if b is None or n is None or not b.ids or not n.ids:
        missing = [s.where for s, c in ((base, b), (new, n)) if c is None or not c.ids]
        notes.append(f"no per-image counts of {eval_set} {' and '.join(missing)}: no interval"
                     f"{'; the gate uses the thresholds alone' if gate.significant else ''}")
        return None
    return bootstrap_change(b, n, resamples=gate.resamples, confidence=gate.confidence,
                            seed=gate.seed)


def gate_rows(rows: list[Row], gate: GateParams, notes: list[str]) -> list[str]:
    """The regressions: drops past the thresholds (and, with gate.significant, whose interval
    excludes 0), and NaN/null scores in the new run (a gate fails closed)."""
    regressions = []
    miou = rows[0]
    if miou.new is None:
        regressions.append("no valid mIoU in the new run (NaN/null: nothing could be scored)")
    elif miou.base is None:
        notes.append("no valid mIoU in the base run (NaN/null): mIoU not gated")
    else:
        regressions += _drop(miou, miou.base - miou.new, "mIoU", "gate.max_drop",
                             gate.max_drop, gate, notes)
    for row in rows[2:-1]:
        cls = row.name.removeprefix("IoU ")
        if row.base is not None and row.new is None:
            regressions.append(f"no valid IoU {cls} in the new run (NaN/null; base "
                               f"{row.base:.4f})")
        elif row.base is not None and row.new is not None:
            regressions += _drop(row, row.base - row.new, f"IoU {cls}",
                                 "gate.max_class_drop", gate.max_class_drop, gate, notes)
    return regressions


def _drop(row: Row, drop: float, what: str, key: str, limit: float, gate: GateParams,
          notes: list[str]) -> list[str]:
    """One failed threshold as a line, or none (a note when only the interval saved it)."""
    if drop <= limit + _EPS:
        return []
    if gate.significant and row.interval is not None and row.interval.contains_zero():
        notes.append(f"{what} dropped {drop:.4f} > {key} {limit:g}, but its interval "
                     f"{_fmt_interval(row.interval)} contains 0: within the noise, passed")
        return []
    if gate.significant and row.interval is not None:
        return [f"{what} dropped {drop:.4f} > {key} {limit:g} and its interval "
                f"{_fmt_interval(row.interval)} excludes 0"]
    return [f"{what} dropped {drop:.4f} > {key} {limit:g}"]


def detection_warnings(boot: Bootstrap, gate: GateParams) -> list[str]:
    """Where the eval set is too small to tell a drop of the configured size from noise: the
    interval's half width exceeds the threshold."""
    warnings = []
    pct = f"{100 * boot.confidence:g}%"
    if boot.miou is not None and boot.miou.half_width > gate.max_drop:
        warnings.append(f"the eval set is too small to detect an mIoU drop of gate.max_drop "
                        f"{gate.max_drop:g}: its {pct} interval is +-{boot.miou.half_width:.4f} "
                        f"({boot.images} images in {boot.groups} groups); add images or raise "
                        "the threshold")
    wide = [f"{c} +-{i.half_width:.4f}" for c, i in boot.iou.items()
            if i is not None and i.half_width > gate.max_class_drop]
    if wide:
        warnings.append(f"the eval set is too small to detect a class drop of "
                        f"gate.max_class_drop {gate.max_class_drop:g} for: {', '.join(wide)}")
    return warnings


def data_rows(base: Snapshot, new: Snapshot, notes: list[str]) -> tuple[Row, ...]:
    """Samples added / removed / moved (from splits.csv ids) and convert's file counts."""
    rows = []
    if base.splits is not None and new.splits is not None:
        old, cur = base.splits, new.splits
        added = sum(1 for i in cur if i not in old)
        removed = sum(1 for i in old if i not in cur)
        moved = sum(1 for i, s in cur.items() if i in old and old[i] != s)
        rows += [Row("samples", len(old), len(cur), "count"),
                 Row("samples added", None, added, "change"),
                 Row("samples removed", None, removed, "change"),
                 Row("samples moved split", None, moved, "change")]
        for split in ("train", "val", "benchmark"):
            b = sum(1 for s in old.values() if s == split)
            n = sum(1 for s in cur.values() if s == split)
            if b or n:
                rows.append(Row(f"samples in {split}", b, n, "count"))
    else:
        notes.append("splits.csv missing in a run: samples added/removed not shown")
    for key in ("seen", "converted", "rejected", "warnings"):
        rows.append(Row(f"files {key}", getattr(base.files, key), getattr(new.files, key),
                        "count"))
    return tuple(rows)


# ---------------------------------------------------------------- rendering


def _fmt(value: float | None, kind: str, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    if kind == "count":
        return f"{value:+.0f}" if signed else f"{value:.0f}"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _fmt_interval(interval: Interval | None) -> str:
    return "" if interval is None else f"[{interval.low:+.4f}, {interval.high:+.4f}]"


def _cells(row: Row) -> tuple[str, ...]:
    if row.kind == "change":  # added / removed / moved: a count of changes, not a level
        return row.name, "", _fmt(row.new, "count"), "", ""
    return (row.name, _fmt(row.base, row.kind), _fmt(row.new, row.kind),
            _fmt(row.delta, row.kind, signed=True), _fmt_interval(row.interval))


def _header(c: Comparison) -> str:
    same = "same images" if c.same_eval else "DIFFERENT images"
    return f"compare {c.base} -> {c.new}; eval set: {c.eval_set} ({same})"


def _interval_title(c: Comparison) -> str | None:
    """The interval column's title, None when no row has an interval (no column then)."""
    return None if c.bootstrap is None else f"{100 * c.gate.confidence:g}% interval"


def format_text(c: Comparison) -> str:
    """The plain-text table printed to the terminal / CI log."""
    lines = [_header(c), ""]
    width = max(len(r.name) for r in (*c.metric_rows, *c.data_rows))
    title = _interval_title(c)
    for section, rows in (("metric", c.metric_rows), ("data", c.data_rows)):
        head = (section, "base", "new", "delta", title if section == "metric" and title else "")
        for a, b, n, d, i in [head, *(_cells(r) for r in rows)]:
            lines.append(f"{a:<{width}}  {b:>8}  {n:>8}  {d:>8}  {i:>18}".rstrip())
        lines.append("")
    lines += [f"note: {note}" for note in c.notes]
    lines += [f"warning: {warning}" for warning in c.warnings]
    lines.append(c.verdict)
    return "\n".join(lines) + "\n"


def format_markdown(c: Comparison) -> str:
    """The same as Markdown, for a pull-request comment or $GITHUB_STEP_SUMMARY."""
    icon = {0: "✅", 1: "❌", 2: "⚠️"}[c.exit_code]
    lines = [f"### {icon} segpipe compare: `{c.base}` → {c.new}", "",
             f"Eval set: **{c.eval_set}** ({'same images' if c.same_eval else 'different images'})",
             ""]
    title = _interval_title(c)
    for section, rows in (("metric", c.metric_rows), ("data", c.data_rows)):
        extra = section == "metric" and title is not None
        lines += [f"| {section} | base | new | Δ |" + (f" {title} |" if extra else ""),
                  "|---|---:|---:|---:|" + ("---:|" if extra else "")]
        lines += ["| " + " | ".join(_cells(r)[:5 if extra else 4]) + " |" for r in rows]
        lines.append("")
    lines += [f"- {note}" for note in c.notes]
    lines += [f"- ⚠️ {warning}" for warning in c.warnings]
    if c.notes or c.warnings:
        lines.append("")
    lines.append(f"**{c.verdict}**")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- IO at the edge


def read_snapshot(rev: str | None, paths: Paths, cwd: Path) -> Snapshot:
    """Read a run's four files at `rev` (None = the working tree), checked."""
    files = (paths.metrics, paths.images, paths.data, paths.splits)
    if rev is None:
        name, side = "working tree", where(None)
        blobs = [read_working(f, cwd) for f in files]
    else:
        commit = resolve_revision(rev, cwd, f"the base metrics ({paths.metrics})")
        name, side = f"{rev} ({commit})", where(rev, commit)
        blobs = read_blobs([(commit, f) for f in files], cwd)
    metrics = parse_metrics(blobs[0], paths.metrics, side)
    images = parse_images(blobs[1], paths.images, side)
    for eval_set, counts in (images or {}).items():
        scores = metrics.section(eval_set)
        if scores is not None:
            check_counts(counts, scores, paths.images, paths.metrics, side)
    return Snapshot(name=name, metrics=metrics, files=parse_data(blobs[2], paths.data, side),
                    splits=parse_splits(blobs[3], paths.splits, side), images=images,
                    where=side)


@click.command(name="compare")
@click.option("--base", "base_rev", required=True, metavar="REV",
              help="Git revision with the committed metrics to compare against "
                   "(e.g. origin/main, HEAD~1, a tag).")
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the table as Markdown to this file (e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--allow-different-eval", is_flag=True,
              help="Compare even when the runs were evaluated on different images "
                   "(exit 0/1 instead of 2).")
@click.option("--on", type=click.Choice(["auto", "val", "benchmark"]), default="auto",
              show_default=True,
              help="Eval set to compare: auto = the benchmark set when both runs have one.")
@params_option
def command(base_rev: str, md_path: Path | None, allow_different_eval: bool, on: str,
            params: Params) -> int:
    """Gate: compare the metrics in the working tree with those committed at REV.

    Prints mIoU, mIoU without background and each class's IoU (base, new, delta and a
    bootstrap interval of the delta over the eval images) and the data-quality deltas
    (samples added, removed, moved; files rejected). Exit codes: 0 within gate.max_drop /
    gate.max_class_drop, 1 regression or no valid mIoU, 2 different eval sets (unless
    --allow-different-eval), 3 a file missing or malformed.
    """
    paths = Paths(params.evaluate.metrics_path, params.evaluate.images_path,
                  (Path(params.convert.reports_dir) / "data.json").as_posix(),
                  params.split.splits_path)
    cwd = Path.cwd()
    try:
        base = read_snapshot(base_rev, paths, cwd)
        new = read_snapshot(None, paths, cwd)
        result = compare(base, new, params.gate, on=on,
                         allow_different_eval=allow_different_eval)
    except BadRunFile as exc:
        if md_path is not None:
            write_text(md_path, f"### ⚠️ segpipe compare: no verdict\n\n{exc}\n")
        raise
    click.echo(format_text(result), nl=False)
    if md_path is not None:
        write_text(md_path, format_markdown(result))
    return result.exit_code
