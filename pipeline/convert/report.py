"""Convert's reports and dataset-level checks (pure): duplicate images, classes without
samples, the manifest table, the counts of a run, validation.md, data.json, the failure screen.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.convert.cache import Outcome
from pipeline.core.fingerprint import ObjectStats, fingerprint
from pipeline.core.manifest import FIXED_COLUMNS, INT_COLUMNS, manifest_columns, pixel_column
from pipeline.core.records import Issue
from pipeline.params import ConvertParams


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
    ints = {*INT_COLUMNS, *columns[len(FIXED_COLUMNS):]}
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
            for i, c in enumerate(classes) if int((manifest[pixel_column(c)] > 0).sum()) == 0]


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


def data_metrics(summary: ConvertSummary, manifest: Any, classes: Sequence[str],
                 outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """reports/data.json: file counts and, per class, images containing it and pixel share
    (of all labelled, i.e. non-ignore, pixels); the dataset fingerprint of the converted
    samples (what the training plan is derived from)."""
    totals = {c: int(manifest[pixel_column(c)].sum()) for c in classes}
    labelled = sum(totals.values())
    converted = [o for o in outcomes if o.row is not None]
    print_ = fingerprint(
        [(int(o.row["width"]), int(o.row["height"])) for o in converted],  # type: ignore[index]
        [{int(k): ObjectStats(int(v[0]), float(v[1]), float(v[2])) for k, v in o.objects.items()}
         for o in converted], totals, classes)
    return {
        "files": {"seen": summary.seen, "converted": summary.converted,
                  "rejected": summary.rejected, "warnings": summary.warned},
        "classes": {c: {"images": int((manifest[pixel_column(c)] > 0).sum()),
                        "pixel_share": round(totals[c] / labelled, 6) if labelled else 0.0}
                    for c in classes},
        "fingerprint": print_.to_dict(),
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
