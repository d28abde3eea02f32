"""`segpipe history [REVS]`: mIoU and each class's IoU across the committed data versions.

Every commit that changed evaluate.metrics_path (`git log REVS -- <metrics>`, oldest first)
is one row: commit, date, samples (rows of splits.csv; convert's count where the split file
is absent), files rejected (data.json), the eval set (which one, its fingerprint and size;
marked where it changed, since scores on either side of a change are not comparable), mIoU and
each class's IoU. All files of all revisions are read by one `git cat-file --batch` process,
nothing is checked out. A revision whose files are malformed keeps its row, with n/a and a
note naming the file.

Output: a terminal table; `--md FILE` the same table as Markdown with a Mermaid trend chart per
series (what GitHub renders in a job summary); `--plot FILE.svg` a trend panel per series.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click

from pipeline.params import Params, params_option
from pipeline.storage.files import write_text
from pipeline.tools.charts import Series, grid, line_chart
from pipeline.tools.runs import (
    BadRunFile,
    RunMetrics,
    git,
    parse_data,
    parse_metrics,
    parse_splits,
    read_blobs,
    read_working,
    where,
)

_SEP = "\x1f"  # field separator in the git log format: never in a commit subject
_MARK = "*"
T = TypeVar("T")


@dataclass(frozen=True)
class Commit:
    sha: str
    short: str
    date: str  # committer date, YYYY-MM-DD
    subject: str


@dataclass(frozen=True)
class Version:
    """One row: the results committed at one commit."""

    commit: str  # short id, or "working tree"
    date: str
    samples: int | None
    rejected: int | None
    eval_set: str | None  # "val" or "benchmark"; None when the metrics are unreadable
    eval_fingerprint: str | None
    n_images: int | None
    eval_changed: bool  # the eval set differs from the row before
    miou: float | None
    iou: Mapping[str, float | None]


@dataclass(frozen=True)
class History:
    versions: tuple[Version, ...]  # oldest first
    classes: tuple[str, ...]  # the newest row's classes first, then older ones
    notes: tuple[str, ...]


# ---------------------------------------------------------------- pure core


def version(commit: str, date: str, metrics: RunMetrics | None, samples: int | None,
            rejected: int | None, on: str, previous: Version | None) -> Version:
    """A row from one revision's parsed files; `on`: auto (benchmark when the revision has
    one), val or benchmark."""
    scores, eval_set = None, None
    if metrics is not None:
        eval_set = "benchmark" if on == "benchmark" or (
            on == "auto" and metrics.benchmark is not None) else "val"
        scores = metrics.section(eval_set)
    fp = scores.eval_fingerprint if scores else None
    changed = (previous is not None and previous.eval_set is not None and scores is not None
               and (previous.eval_set, previous.eval_fingerprint) != (eval_set, fp))
    return Version(commit=commit, date=date, samples=samples, rejected=rejected,
                   eval_set=eval_set if scores else None, eval_fingerprint=fp,
                   n_images=scores.n_images if scores else None, eval_changed=changed,
                   miou=scores.miou if scores else None, iou=dict(scores.iou) if scores else {})


def class_order(versions: Sequence[Version]) -> tuple[str, ...]:
    """The newest row's classes in its order, then classes only older rows have."""
    order: list[str] = []
    for v in reversed(versions):
        order += [c for c in v.iou if c not in order]
    return tuple(order)


# ---------------------------------------------------------------- rendering


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _count(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def _eval_cell(v: Version) -> str:
    if v.eval_set is None:
        return "n/a"
    fp = (v.eval_fingerprint or "?")[:8]
    return f"{v.eval_set} {fp} ({_count(v.n_images)}){_MARK if v.eval_changed else ''}"


def table_rows(h: History) -> list[list[str]]:
    head = ["commit", "date", "samples", "rejected", "eval set", "mIoU", *h.classes]
    rows = [[v.commit, v.date, _count(v.samples), _count(v.rejected), _eval_cell(v),
             _score(v.miou), *(_score(v.iou.get(c)) for c in h.classes)] for v in h.versions]
    return [head, *rows]


def _footnotes(h: History) -> list[str]:
    lines = []
    if any(v.eval_changed for v in h.versions):
        lines.append(f"{_MARK} the eval set changed from the row above: scores before and after "
                     "it were measured on different images")
    return lines + [f"note: {n}" for n in h.notes]


def format_text(h: History) -> str:
    """The terminal table: text columns left-aligned, numbers right-aligned."""
    rows = table_rows(h)
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    left = {0, 1, 4}
    lines = ["  ".join(cell.ljust(w) if k in left else cell.rjust(w)
                       for k, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    return "\n".join([*lines, *_footnotes(h)]) + "\n"


def format_markdown(h: History) -> str:
    """The table as Markdown, then a Mermaid line chart per series for a job summary."""
    rows = table_rows(h)
    lines = ["### segpipe history: mIoU across data versions", "",
             "| " + " | ".join(rows[0]) + " |",
             "|" + "|".join("---" if k in (0, 1, 4) else "---:" for k in range(len(rows[0])))
             + "|"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows[1:]]
    lines += ["", *(f"- {_md(line)}" for line in _footnotes(h)), ""]
    for name, points in _series(h):
        shown = [(h.versions[int(x)].commit, y) for x, y in points if y is not None]
        if len(shown) < 2:
            continue
        labels = ", ".join(f'"{c}"' for c, _ in shown)
        values = ", ".join(f"{y:.4f}" for _, y in shown)
        low = max(0.0, min(y for _, y in shown) - 0.02)
        high = min(1.0, max(y for _, y in shown) + 0.02)
        lines += ["```mermaid", "xychart-beta", f'    title "{name}"', f"    x-axis [{labels}]",
                  f'    y-axis "IoU" {low:.2f} --> {high:.2f}', f"    line [{values}]", "```",
                  ""]
    return "\n".join(lines)


def _md(text: str) -> str:
    """Text safe in a Markdown table cell or list item (the change mark is an asterisk)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")


def _series(h: History) -> list[tuple[str, list[tuple[float, float | None]]]]:
    series = [("mIoU", [(float(i), v.miou) for i, v in enumerate(h.versions)])]
    series += [(f"IoU {c}", [(float(i), v.iou.get(c)) for i, v in enumerate(h.versions)])
               for c in h.classes]
    return series


def plot_svg(h: History, columns: int = 3) -> str:
    """A trend panel per series (mIoU, then each class) over the commits; dashed lines where
    the eval set changed."""
    names = [v.commit for v in h.versions]
    marks = [i - 0.5 for i, v in enumerate(h.versions) if v.eval_changed]
    charts = [line_chart([Series(name, tuple(points), width=2.0)], title=name, x_label="commit",
                         y_label="IoU", width=360, height=220, x_names=names, marks=marks)
              for name, points in _series(h)]
    return grid(charts, min(columns, len(charts)), 360, 220)


# ---------------------------------------------------------------- IO at the edge


def log_commits(revs: Sequence[str], path: str, cwd: Path, max_count: int | None
                ) -> list[Commit]:
    """The commits in REVS that changed `path`, oldest first."""
    args = ["log", "--reverse", f"--format=%H{_SEP}%h{_SEP}%cs{_SEP}%s"]
    if max_count:
        args.insert(1, f"--max-count={max_count}")
    done = git([*args, *revs, "--", path], cwd, f"the history of {path}")
    if done.returncode != 0:
        raise BadRunFile(f"cannot read the history of {path} in {' '.join(revs)}: "
                         f"{done.stderr.decode(errors='replace').strip()}")
    commits = []
    for line in done.stdout.decode(errors="replace").splitlines():
        sha, short, date, subject = line.split(_SEP, 3)
        commits.append(Commit(sha, short, date, subject))
    return commits


def read_history(revs: Sequence[str], paths: tuple[str, str, str], cwd: Path, *, on: str,
                 max_count: int | None = None, working_tree: bool = False) -> History:
    """One Version per commit changing the metrics (and the working tree when asked)."""
    metrics_path, data_path, splits_path = paths
    commits = log_commits(revs, metrics_path, cwd, max_count)
    blobs = read_blobs([(c.sha, p) for c in commits for p in paths], cwd)
    sides = [(c.short, c.date, where(c.short), blobs[3 * k:3 * k + 3])
             for k, c in enumerate(commits)]
    if working_tree:
        sides.append(("working tree", "", where(None), [read_working(p, cwd) for p in paths]))
    versions: list[Version] = []
    notes: list[str] = []
    previous: Version | None = None  # the last row with an eval set
    for name, date, side, (m_raw, d_raw, s_raw) in sides:
        if m_raw is None:  # the commit deleted the metrics file
            continue
        # each file on its own: one bad file must not hide the others, nor other revisions
        metrics = _parsed(parse_metrics, notes, m_raw, metrics_path, side)
        splits = _parsed(parse_splits, notes, s_raw, splits_path, side)
        files = _parsed(parse_data, notes, d_raw, data_path, side) if d_raw else None
        samples = len(splits) if splits is not None else (files.converted if files else None)
        versions.append(version(name, date, metrics, samples, files.rejected if files else None,
                                on, previous))
        if versions[-1].eval_set is not None:
            previous = versions[-1]
    return History(tuple(versions), class_order(versions), tuple(notes))


def _parsed(parse: Callable[[bytes | None, str, str], T], notes: list[str], data: bytes | None,
            path: str, side: str) -> T | None:
    """parse(data, path, side), or None with its message added to `notes` when the file is
    malformed."""
    try:
        return parse(data, path, side)
    except BadRunFile as exc:
        notes.append(str(exc))
        return None


@click.command(name="history")
@click.argument("revs", nargs=-1, metavar="[REVS]...")
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the table (and a Mermaid chart per series) as Markdown, e.g. to "
                   "$GITHUB_STEP_SUMMARY.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a trend chart per class as SVG.")
@click.option("--on", type=click.Choice(["auto", "val", "benchmark"]), default="auto",
              show_default=True,
              help="Eval set: auto = the benchmark set where a revision has one, else val.")
@click.option("-n", "--max-count", type=click.IntRange(min=1),
              help="Only the last N commits that changed the metrics.")
@click.option("--with-working-tree", is_flag=True,
              help="Add the working tree's (uncommitted) results as the last row.")
@params_option
def command(revs: tuple[str, ...], md_path: Path | None, plot_path: Path | None, on: str,
            max_count: int | None, with_working_tree: bool, params: Params) -> None:
    """mIoU and each class's IoU for every commit that changed the metrics (default: the
    history of HEAD; REVS as `git log` takes them, e.g. main~50..main).

    One row per data version: commit, date, samples, files rejected, the eval set (marked
    where it changed), mIoU and per-class IoU. Read with git, never checked out.
    """
    paths = (params.evaluate.metrics_path,
             (Path(params.convert.reports_dir) / "data.json").as_posix(),
             params.split.splits_path)
    history = read_history(list(revs) or ["HEAD"], paths, Path.cwd(), on=on,
                           max_count=max_count, working_tree=with_working_tree)
    if not history.versions:
        click.echo(f"no commit in {' '.join(revs) or 'HEAD'} changes {paths[0]}")
    else:
        click.echo(format_text(history), nl=False)
    if md_path is not None:
        write_text(md_path, format_markdown(history))
    if plot_path is not None:
        write_text(plot_path, plot_svg(history))
