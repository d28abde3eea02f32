"""`segpipe compare --base REV`: the CI gate on mIoU across data versions.

Reads the committed metrics at a git revision (`git show REV:./path`) and those in the working
tree, prints one table (mIoU, mIoU without background, each class's IoU as base / new / delta,
and the data-quality deltas: samples added, removed, moved between splits, files rejected), and
exits with the gate's verdict:

    0  within the thresholds (gate.max_drop for mIoU, gate.max_class_drop for any class)
    1  a regression: mIoU or a class's IoU dropped more than allowed (the message says which)
    2  the two runs were measured on different eval sets (eval fingerprints differ), unless
       --allow-different-eval; a regression then still gives 1
    3  a metrics file is missing or unreadable, at REV or in the working tree (it says which)

The eval set compared is the fixed benchmark set when both runs have one (`split.benchmark`:
mIoU stays comparable while val grows with the data), else val; `--on` picks one explicitly.
Files read (paths from params.yaml): evaluate.metrics_path, <convert.reports_dir>/data.json
and split.splits_path (optional: without it the added/removed rows say n/a).
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

import click

from pipeline.errors import PipelineError
from pipeline.params import GateParams, Params, params_option
from pipeline.storage.files import write_text

_EPS = 1e-9  # a drop equal to the threshold passes, whatever the float rounding


class MissingMetrics(PipelineError):
    """A metrics file is missing or unreadable at the base revision or in the working tree."""

    exit_code = 3


@dataclass(frozen=True)
class Paths:
    metrics: str  # evaluate.metrics_path
    data: str  # <convert.reports_dir>/data.json
    splits: str  # split.splits_path


@dataclass(frozen=True)
class Snapshot:
    """The metrics of one side: a git revision or the working tree."""

    name: str  # "origin/main (1a2b3c4)" or "working tree"
    metrics: Mapping[str, Any]  # metrics.json as written by evaluate
    data: Mapping[str, Any]  # data.json as written by convert
    splits: Mapping[str, str] | None  # id -> split, None when splits.csv is absent


@dataclass(frozen=True)
class Row:
    name: str
    base: float | None
    new: float | None
    kind: str = "score"  # "score" (4 decimals), "count" (integer) or "change" (count, no base)

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
    regressions: tuple[str, ...]  # one line per failed threshold
    notes: tuple[str, ...]
    gate: GateParams
    allow_different_eval: bool

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
        if self.regressions:
            return f"FAIL: {'; '.join(self.regressions)} ({limits})"
        if not self.same_eval and not self.allow_different_eval:
            return ("DIFFERENT EVAL SETS: the two runs were measured on different images "
                    "(eval fingerprints differ); the scores are not comparable. Configure "
                    "split.benchmark for a fixed eval set, or pass --allow-different-eval")
        return f"PASS ({limits})"


# ---------------------------------------------------------------- pure core


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def pick_eval_set(base: Mapping[str, Any], new: Mapping[str, Any], on: str) -> str:
    """The eval set to compare: "benchmark" when asked, or (auto) when both runs have one,
    else "val"."""
    both = isinstance(base.get("benchmark"), Mapping) and isinstance(new.get("benchmark"), Mapping)
    if on == "benchmark" and not both:
        missing = [n for n, m in (("base", base), ("new", new))
                   if not isinstance(m.get("benchmark"), Mapping)]
        raise MissingMetrics(f"--on benchmark: no benchmark section in the {' and '.join(missing)}"
                             f" metrics (set split.benchmark and re-run the pipeline)")
    return "benchmark" if on == "benchmark" or (on == "auto" and both) else "val"


def _section(metrics: Mapping[str, Any], eval_set: str) -> Mapping[str, Any]:
    return metrics["benchmark"] if eval_set == "benchmark" else metrics


def compare(base: Snapshot, new: Snapshot, gate: GateParams, *, on: str = "auto",
            allow_different_eval: bool = False) -> Comparison:
    """Build the table and the gate's verdict from two snapshots (no IO)."""
    eval_set = pick_eval_set(base.metrics, new.metrics, on)
    b, n = _section(base.metrics, eval_set), _section(new.metrics, eval_set)
    notes: list[str] = []
    b_fp, n_fp = b.get("eval_fingerprint"), n.get("eval_fingerprint")
    same_eval = b_fp is not None and b_fp == n_fp
    if b_fp is None or n_fp is None:
        notes.append("a run has no eval_fingerprint: the eval sets cannot be checked")
    elif not same_eval:
        notes.append(f"eval sets differ: {b_fp} -> {n_fp} ({b.get('n_images')} -> "
                     f"{n.get('n_images')} images)")

    b_iou, n_iou = b.get("iou") or {}, n.get("iou") or {}
    classes = list(n_iou) + [c for c in b_iou if c not in n_iou]
    rows = [Row("mIoU", _number(b.get("miou")), _number(n.get("miou"))),
            Row("mIoU fg", _number(b.get("miou_fg")), _number(n.get("miou_fg")))]
    rows += [Row(f"IoU {c}", _number(b_iou.get(c)), _number(n_iou.get(c))) for c in classes]
    rows.append(Row("eval images", _number(b.get("n_images")), _number(n.get("n_images")),
                    "count"))

    regressions = []
    miou = rows[0]
    if miou.delta is not None and -miou.delta > gate.max_drop + _EPS:
        regressions.append(f"mIoU dropped {-miou.delta:.4f} > gate.max_drop {gate.max_drop:g}")
    elif miou.delta is None:
        notes.append("mIoU is missing or null in a run: not gated")
    for row in rows[2:-1]:
        cls = row.name.removeprefix("IoU ")
        if row.delta is not None and -row.delta > gate.max_class_drop + _EPS:
            regressions.append(f"IoU {cls} dropped {-row.delta:.4f} > gate.max_class_drop "
                               f"{gate.max_class_drop:g}")
        elif row.base is not None and row.new is None:
            notes.append(f"class {cls} has no IoU in the new run (absent from its eval set)")
    if set(b_iou) != set(n_iou):
        notes.append(f"classes differ: {sorted(b_iou)} -> {sorted(n_iou)}")
    return Comparison(base.name, new.name, eval_set, same_eval, tuple(rows),
                      data_rows(base, new, notes), tuple(regressions), tuple(notes), gate,
                      allow_different_eval)


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
    b_files, n_files = base.data.get("files") or {}, new.data.get("files") or {}
    for key in ("seen", "converted", "rejected", "warnings"):
        rows.append(Row(f"files {key}", _number(b_files.get(key)), _number(n_files.get(key)),
                        "count"))
    return tuple(rows)


# ---------------------------------------------------------------- rendering


def _fmt(value: float | None, kind: str, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    if kind == "count":
        return f"{value:+.0f}" if signed else f"{value:.0f}"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _cells(row: Row) -> tuple[str, str, str, str]:
    if row.kind == "change":  # added / removed / moved: a count of changes, not a level
        return row.name, "", _fmt(row.new, "count"), ""
    return (row.name, _fmt(row.base, row.kind), _fmt(row.new, row.kind),
            _fmt(row.delta, row.kind, signed=True))


def _header(c: Comparison) -> str:
    same = "same images" if c.same_eval else "DIFFERENT images"
    return f"compare {c.base} -> {c.new}; eval set: {c.eval_set} ({same})"


def format_text(c: Comparison) -> str:
    """The plain-text table printed to the terminal / CI log."""
    lines = [_header(c), ""]
    width = max(len(r.name) for r in (*c.metric_rows, *c.data_rows))
    for title, rows in (("metric", c.metric_rows), ("data", c.data_rows)):
        cells = [(title, "base", "new", "delta"), *(_cells(r) for r in rows)]
        lines += [f"{a:<{width}}  {b:>8}  {n:>8}  {d:>8}".rstrip() for a, b, n, d in cells]
        lines.append("")
    lines += [f"note: {note}" for note in c.notes]
    lines.append(c.verdict)
    return "\n".join(lines) + "\n"


def format_markdown(c: Comparison) -> str:
    """The same as Markdown, for a pull-request comment or $GITHUB_STEP_SUMMARY."""
    icon = {0: "✅", 1: "❌", 2: "⚠️"}[c.exit_code]
    lines = [f"### {icon} segpipe compare: `{c.base}` → {c.new}", "",
             f"Eval set: **{c.eval_set}** ({'same images' if c.same_eval else 'different images'})",
             ""]
    for title, rows in (("metric", c.metric_rows), ("data", c.data_rows)):
        lines += [f"| {title} | base | new | Δ |", "|---|---:|---:|---:|"]
        lines += ["| {} | {} | {} | {} |".format(*_cells(r)) for r in rows]
        lines.append("")
    lines += [f"- {note}" for note in c.notes]
    if c.notes:
        lines.append("")
    lines.append(f"**{c.verdict}**")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- IO at the edge


def _git(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)


def resolve_revision(rev: str, cwd: Path) -> str:
    """The short commit id of REV; MissingMetrics when it is not a commit here."""
    done = _git(["rev-parse", "--verify", "--quiet", "--short", f"{rev}^{{commit}}"], cwd)
    if done.returncode != 0:
        inside = _git(["rev-parse", "--is-inside-work-tree"], cwd).returncode == 0
        why = ("no such commit here (in CI, check out the full history: actions/checkout "
               "with fetch-depth: 0)") if inside else "not inside a git repository"
        raise MissingMetrics(f"cannot read the base metrics: git revision {rev!r}: {why}")
    return done.stdout.decode().strip()


def read_file(rev: str | None, path: str, cwd: Path) -> bytes | None:
    """`path` (relative to cwd) at `rev` (None = the working tree); None when absent."""
    if rev is None:
        file = cwd / path
        return file.read_bytes() if file.is_file() else None
    done = _git(["show", f"{rev}:./{path}"], cwd)
    return done.stdout if done.returncode == 0 else None


def _json(data: bytes | None, path: str, where: str) -> Mapping[str, Any]:
    if data is None:
        raise MissingMetrics(f"{path} is missing {where}: run the pipeline (`dvc repro`) and "
                             f"commit its metrics")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MissingMetrics(f"{path} {where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MissingMetrics(f"{path} {where} must be a JSON object, got {type(value).__name__}")
    return value


def _splits(data: bytes | None, path: str, where: str) -> dict[str, str] | None:
    if data is None:
        return None
    rows = csv.DictReader(io.StringIO(data.decode("utf-8")))
    if not rows.fieldnames or not {"id", "split"} <= set(rows.fieldnames):
        raise MissingMetrics(f"{path} {where} must have columns id and split, got "
                             f"{rows.fieldnames}")
    return {row["id"]: row["split"] for row in rows}


def read_snapshot(rev: str | None, paths: Paths, cwd: Path) -> Snapshot:
    """Read the three files at `rev` (None = working tree)."""
    if rev is None:
        name, where = "working tree", "in the working tree"
    else:
        name = f"{rev} ({resolve_revision(rev, cwd)})"
        where = f"at {rev}"
    return Snapshot(
        name=name,
        metrics=_json(read_file(rev, paths.metrics, cwd), paths.metrics, where),
        data=_json(read_file(rev, paths.data, cwd), paths.data, where),
        splits=_splits(read_file(rev, paths.splits, cwd), paths.splits, where),
    )


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

    Prints mIoU, mIoU without background and each class's IoU (base, new, delta) and the
    data-quality deltas (samples added, removed, moved; files rejected). Exit codes: 0 within
    gate.max_drop / gate.max_class_drop, 1 regression, 2 different eval sets (unless
    --allow-different-eval), 3 a metrics file missing.
    """
    paths = Paths(params.evaluate.metrics_path,
                  (Path(params.convert.reports_dir) / "data.json").as_posix(),
                  params.split.splits_path)
    cwd = Path.cwd()
    try:
        base = read_snapshot(base_rev, paths, cwd)
        new = read_snapshot(None, paths, cwd)
        result = compare(base, new, params.gate, on=on,
                         allow_different_eval=allow_different_eval)
    except MissingMetrics as exc:
        if md_path is not None:
            write_text(md_path, f"### ⚠️ segpipe compare: no verdict\n\n{exc}\n")
        raise
    click.echo(format_text(result), nl=False)
    if md_path is not None:
        write_text(md_path, format_markdown(result))
    return result.exit_code
