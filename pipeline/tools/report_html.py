"""`segpipe report`: reports/report.html, the one page a person opens after a run.

One self-contained file: the CSS inline, charts as inline SVG (tools/charts.py), images as
data: URIs, no script and no font, and a Content-Security-Policy that forbids the page any
request, so it looks the same opened from the file system, a CI artifact or offline.
Sections: data (files seen/converted/rejected/warned, every validation problem with a
thumbnail where it is drawn, per-class images and pixel share), split (per-class share per
split against the target), training (the plan and its reasons, loss and val curves),
evaluation (per-class IoU/Dice/precision/recall/support, the confusion matrix as a heat map,
the worst images), the label-review queue when the review stage wrote one, and provenance
(data and eval-set fingerprints, the params that mattered).

Reads what the stages wrote (paths from params.yaml); an input that is absent or unreadable
is said so in its section, never a crash: a report of a broken run is still worth reading.
Same inputs, same bytes (no timestamp in the page). The page is assembled in
tools/report_page.py; this module gathers the inputs and writes the file.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from pipeline.params import Params, params_option
from pipeline.storage.files import write_text
from pipeline.storage.images import PIL_ERRORS, open_image
from pipeline.tools.report_page import Picture, ReportInputs, Review, render
from pipeline.tools.thumbnails import draw_thumbnails, problems_from

_EMBED_AS_IS = 300_000  # bytes: a larger picture is re-encoded as a smaller JPEG
_EMBED_SIDE = 1280  # px: the longest side of a re-encoded picture
_REVIEW_COLUMNS = ("id", "annotation", "shape", "label", "kind", "predicted", "score", "area",
                   "confidence")
#: Keys that change no result (where and how fast it runs), left out of "params that mattered"
_MACHINE_KEYS = {"device", "threads", "workers", "jobs", "resume", "compile"}


@dataclass(frozen=True)
class Sources:
    """Where each input lives (from params.yaml)."""

    data: Path
    validation: Path
    split: Path
    plan: Path
    curves: Path  # DVCLive's plots/metrics folder
    metrics: Path
    eval_dir: Path
    review_dir: Path
    raw_dir: Path

    @classmethod
    def of(cls, params: Params) -> Sources:
        reports = Path(params.convert.reports_dir)
        return cls(data=reports / "data.json", validation=reports / "validation.json",
                   split=Path(params.split.report_path), plan=Path(params.train.plan_path),
                   curves=Path(params.train.log_dir) / "plots" / "metrics",
                   metrics=Path(params.evaluate.metrics_path),
                   eval_dir=Path(params.evaluate.out_dir),
                   review_dir=Path(params.report.review_dir),
                   raw_dir=Path(params.convert.raw_dir))


# ---------------------------------------------------------------- reading the inputs


def read_json(path: Path, missing: list[str]) -> dict[str, Any] | list[Any] | None:
    """A JSON file, or None (and a line in `missing`) when absent or unreadable."""
    if not path.is_file():
        missing.append(f"{path} not found")
        return None
    try:
        return json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        missing.append(f"{path} cannot be read: {exc}")
        return None


def read_curve(path: Path) -> tuple[tuple[float, float], ...]:
    """A DVCLive .tsv (step, value); () when absent or unreadable."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8")), delimiter="\t"))
        return tuple((float(r[0]), float(r[1])) for r in rows[1:] if len(r) >= 2)
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return ()


def read_curves(folder: Path, classes: tuple[str, ...]) -> dict[str, tuple]:
    """train/loss, train/lr, val/miou and val/iou/<class>, as DVCLive writes them."""
    names = ["train/loss", "train/lr", "val/miou", *(f"val/iou/{c}" for c in classes)]
    return {name: points for name in names if (points := read_curve(folder / f"{name}.tsv"))}


def read_confusion(path: Path, classes: tuple[str, ...]) -> tuple[tuple[int, ...], ...] | None:
    """confusion.csv (gt, pred, count per cell) as a matrix in the classes' order."""
    index = {c: k for k, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                matrix[index[row["gt"]]][index[row["pred"]]] += int(row["count"])
    except (OSError, UnicodeDecodeError, KeyError, ValueError, csv.Error):
        return None
    return tuple(tuple(r) for r in matrix)


def embed(path: Path, caption: str) -> Picture | None:
    """A picture to inline: the file's own bytes when small, else a JPEG at most
    _EMBED_SIDE px; None when unreadable."""
    try:
        data = path.read_bytes()
        mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(
            path.suffix.lower())
        if mime and len(data) <= _EMBED_AS_IS:
            return Picture(path.name, mime, data, caption)
        with open_image(data) as image:
            image.thumbnail((_EMBED_SIDE, _EMBED_SIDE))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=85)
        return Picture(path.name, "image/jpeg", buffer.getvalue(), caption)
    except (OSError, *PIL_ERRORS):
        return None


def read_overlays(folder: Path) -> tuple[Picture, ...]:
    """evaluate's NN_<id>.png overlays of the worst images, in rank order."""
    if not folder.is_dir():
        return ()
    pictures = []
    for path in sorted(folder.glob("*.png")):
        rank, _, name = path.stem.partition("_")
        caption = f"{int(rank)}. {name.replace('__', '/')}" if rank.isdigit() else path.stem
        if (picture := embed(path, caption)) is not None:
            pictures.append(picture)
    return tuple(pictures)


def read_review(folder: Path, rows: int) -> Review | None:
    """The label-review queue: the first `rows` rows of review.csv with their overlays; None
    when the review stage has not written one."""
    path = folder / "review.csv"
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            records = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return Review((), (), (), 0, f"{path} cannot be read: {exc}")
    columns = tuple(c for c in _REVIEW_COLUMNS if c in fields)
    overlays = sorted((folder / "overlays").glob("*.png")) if (folder / "overlays").is_dir() \
        else []
    shown = records[:rows]
    pictures = tuple(_review_overlay(folder, overlays, k, r) for k, r in enumerate(shown, 1))
    return Review(columns, tuple(tuple(r.get(c) or "" for c in columns) for r in shown),
                  pictures, len(records), "")


def _review_overlay(folder: Path, overlays: list[Path], rank: int, row: Mapping[str, str]
                    ) -> Picture | None:
    """A review row's overlay: its `overlay` column (relative to the review folder), else
    the file named NN_<id with / as __>.png as evaluate names its overlays."""
    if row.get("overlay"):
        return embed(folder / row["overlay"], row.get("id", ""))
    stem = (row.get("id") or "").replace("/", "__")
    match = next((p for p in overlays if p.name.startswith(f"{rank:02d}_")), None) or next(
        (p for p in overlays if stem and stem in p.stem), None)
    return embed(match, row.get("id", "")) if match else None


def settings(params: Params) -> tuple[tuple[str, str], ...]:
    """The params that decide the results: classes, then every key of convert, split, train
    and evaluate except paths and machine settings."""
    rows = [("classes", ", ".join(params.labels.classes)),
            ("ignore_labels", ", ".join(params.labels.ignore_labels))]
    rows += [(f"aliases.{k}", v) for k, v in sorted(params.labels.aliases.items())]
    for name in ("convert", "split", "train", "evaluate"):
        section = getattr(params, name)
        for key, value in vars(section).items():
            if key.endswith(("_path", "_dir")) or key in _MACHINE_KEYS:
                continue
            if name == "evaluate" and key != "worst_k":  # the rest is speed and looks
                continue
            rows.append((f"{name}.{key}", _text(value)))
    return tuple(rows)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(_text(v) for v in value)
    return "null" if value is None else str(value)


def gather(params: Params, sources: Sources) -> ReportInputs:
    """Everything the page shows, read from disk."""
    cfg = params.report
    classes = tuple(params.labels.classes)
    missing: list[str] = []
    data = read_json(sources.data, missing)
    validation = read_json(sources.validation, missing)
    problems = tuple(problems_from(validation if isinstance(validation, list) else []))
    split = read_json(sources.split, missing)
    plan = read_json(sources.plan, missing)
    metrics = read_json(sources.metrics, missing)
    confusion = {name: m for name, folder in (("val", sources.eval_dir),
                                              ("benchmark", sources.eval_dir / "benchmark"))
                 if (m := read_confusion(folder / "confusion.csv", classes)) is not None}
    return ReportInputs(
        classes=classes,
        data=data if isinstance(data, dict) else {},
        problems=problems,
        thumbnails=draw_thumbnails(problems, sources.raw_dir, size=cfg.thumbnail_size,
                                   cap=cfg.thumbnails),
        split=split if isinstance(split, dict) else {},
        plan=plan if isinstance(plan, dict) else {},
        curves=read_curves(sources.curves, classes),
        metrics=metrics if isinstance(metrics, dict) else {},
        confusion=confusion,
        overlays=read_overlays(sources.eval_dir / "overlays"),
        review=read_review(sources.review_dir, cfg.review_rows),
        settings=settings(params),
        missing=tuple(missing),
        max_issues=cfg.max_issues,
        review_dir=str(sources.review_dir))


@click.command(name="report")
@params_option
def command(params: Params) -> None:
    """Write report.path: one self-contained HTML page (no network, everything inline) with
    the data, the validation problems drawn on thumbnails, the split, the training plan and
    curves, the per-class metrics, the confusion heat map, the worst images and the
    label-review queue."""
    start = time.perf_counter()
    inputs = gather(params, Sources.of(params))
    page = render(inputs)
    write_text(params.report.path, page)
    for line in inputs.missing:
        click.echo(f"warning: {line}", err=True)
    click.echo(f"wrote {params.report.path} ({len(page.encode()) / 1e6:.2f} MB) in "
               f"{time.perf_counter() - start:.2f} s", err=True)
