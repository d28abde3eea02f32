"""`segpipe evaluate`: per-class IoU of the trained model on val (and the benchmark set).

Each image is predicted at its original size by the shared inference (learn/inference.py:
resized to the model's working scale, sliding window with blending, logits upsampled back),
so the metrics are at full resolution. One confusion matrix is accumulated over the whole split
on the device (learn/metrics.py); ignore pixels (255) are left out. The report says what the
numbers came from: the training plan, the dataset fingerprint, the device and precision.

Outputs (paths from params.yaml):
    evaluate.metrics_path        metrics.json: miou, miou_fg, aacc, iou/dice/precision/recall/
                                 support per class, n_images, eval_fingerprint, data_fingerprint,
                                 split, and "benchmark": {the same} when a benchmark set exists
    evaluate.images_path         images.json: per eval set, each image's split group and its
                                 per-class intersection and union pixel counts (what the gate's
                                 bootstrap resamples; committed like the metrics)
    evaluate.out_dir/
        report.md                the page a person reads first
        per_class.csv            class, iou, dice, precision, recall, support (DVC bar plot)
        confusion.csv            gt, pred, count: one row per cell (DVC confusion template)
        overlays/NN_<id>.png     image | ground truth | prediction for the worst_k val images
        benchmark/per_class.csv, benchmark/confusion.csv   when a benchmark set exists
"""

from __future__ import annotations

import csv
import io
import json
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch

from pipeline.core.hashing import content_hash
from pipeline.core.manifest import (
    Manifest,
    ManifestRow,
    data_fingerprint,
    load_dataset,
    manifest_path,
    select,
)
from pipeline.errors import InputError
from pipeline.learn.inference import (
    default_workers,
    load_labelled,
    predict_mask,
    prefetch,
    read_pair,
)
from pipeline.learn.metrics import SegMetrics, confusion_matrix, mean_iou, segmentation_metrics
from pipeline.learn.model import ModelInfo, UNet, load_model, pick_device
from pipeline.learn.overlay import overlay_panels
from pipeline.params import EvaluateParams, Params, params_option
from pipeline.progress import Progress
from pipeline.storage.files import folder_lock, write_bytes, write_json, write_text
from pipeline.storage.images import rgb_png_bytes


@dataclass(frozen=True)
class ImageScore:
    id: str
    miou: float  # the image's own mIoU (NaN when all its pixels are ignored)
    intersection: tuple[int, ...] = ()  # per class: pixels predicted and annotated as it
    union: tuple[int, ...] = ()  # per class: pixels predicted or annotated as it


@dataclass(frozen=True)
class EvalResult:
    """The scores of one eval set (val or benchmark)."""
    split: str
    metrics: SegMetrics
    n_images: int
    eval_fingerprint: str
    scores: tuple[ImageScore, ...]  # worst first; NaN (nothing to score) last
    # predictions (H x W uint8) of the worst images, for the overlays
    worst: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)


# ---------------------------------------------------------------- core


def eval_fingerprint(rows: Sequence[ManifestRow]) -> str:
    """Hash of the sorted eval ids with their image and mask content hashes (from the
    manifest): equal fingerprints mean two runs were measured on the same images and masks."""
    lines = [f"{r.id}\t{r.image_hash}\t{r.mask_hash}" for r in sorted(rows, key=lambda r: r.id)]
    return content_hash("\n".join(lines).encode())


def evaluate_split(model: UNet, info: ModelInfo, samples: Sequence[ManifestRow], root: Path,
                   split: str, device: torch.device, *, batch_size: int = 16,
                   keep_worst: int = 0, workers: int = 1, progress: bool = True) -> EvalResult:
    """Predict every sample at its full size, accumulate one confusion matrix on `device`,
    score each image. `batch_size`: tiles per forward pass.

    Raises InputError naming every sample that cannot be used (unreadable, size mismatch,
    mask values that are not classes) after trying all of them.
    """
    n = len(info.classes)
    total = torch.zeros(n, n, dtype=torch.int64, device=device)
    scores: list[ImageScore] = []
    worst: list[tuple[float, str, np.ndarray]] = []
    problems: list[str] = []
    with Progress(len(samples), f"evaluate {split}", "images", enabled=progress) as bar:
        for sample, loaded in prefetch(list(samples), lambda s: load_labelled(s, root), workers):
            bar.update()
            if isinstance(loaded, str):
                problems.append(loaded)
                continue
            rgb, mask = loaded
            pred = predict_mask(model, info, rgb, device, batch_size)
            try:
                cm = confusion_matrix(torch.from_numpy(mask).to(device),
                                      torch.from_numpy(pred).to(device), n)
            except ValueError as exc:
                problems.append(f"{sample.id}: mask {exc}")
                continue
            total += cm
            scores.append(image_score(sample.id, cm))
            score = scores[-1].miou
            if keep_worst and not math.isnan(score):
                worst.append((score, sample.id, pred))
                worst.sort(key=lambda item: (item[0], item[1]))
                del worst[keep_worst:]
    if problems:
        raise InputError(f"{len(problems)} of {len(samples)} {split} samples cannot be "
                         f"evaluated:\n  " + "\n  ".join(problems))
    ranked = sorted(scores, key=lambda s: (math.isnan(s.miou), s.miou, s.id))
    return EvalResult(split=split, metrics=segmentation_metrics(total, info.classes),
                      n_images=len(scores), eval_fingerprint=eval_fingerprint(samples),
                      scores=tuple(ranked), worst={i: pred for _, i, pred in worst})


def image_score(sample_id: str, confusion: torch.Tensor) -> ImageScore:
    """One image's mIoU and, per class, its intersection and union pixel counts (what the
    gate's bootstrap resamples)."""
    cm = confusion.detach().to("cpu", torch.int64)
    tp = torch.diagonal(cm)
    union = cm.sum(dim=0) + cm.sum(dim=1) - tp
    return ImageScore(sample_id, mean_iou(cm), tuple(int(v) for v in tp.tolist()),
                      tuple(int(v) for v in union.tolist()))


def metrics_record(result: EvalResult, data_fp: str) -> dict[str, object]:
    """The metrics.json section of one split (NaN stays NaN; write_json makes it null)."""
    m = result.metrics
    return {
        "miou": m.miou,
        "miou_fg": m.miou_fg,
        "aacc": m.aacc,
        "iou": dict(zip(m.classes, m.iou, strict=True)),
        "dice": dict(zip(m.classes, m.dice, strict=True)),
        "precision": dict(zip(m.classes, m.precision, strict=True)),
        "recall": dict(zip(m.classes, m.recall, strict=True)),
        "support": dict(zip(m.classes, m.support, strict=True)),
        "n_images": result.n_images,
        "eval_fingerprint": result.eval_fingerprint,
        "data_fingerprint": data_fp,
        "split": result.split,
    }


# ---------------------------------------------------------------- tables and report


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if isinstance(v, float) and math.isnan(v) else v for v in row]
                      for row in rows])
    return buffer.getvalue()


def per_class_csv(m: SegMetrics) -> str:
    """class, iou, dice, precision, recall, support; an undefined value is an empty cell."""
    rows = [(c, m.iou[i], m.dice[i], m.precision[i], m.recall[i], m.support[i])
            for i, c in enumerate(m.classes)]
    return _csv_text(("class", "iou", "dice", "precision", "recall", "support"), rows)


def confusion_csv(m: SegMetrics) -> str:
    """gt, pred, count: one row per cell of the pixel confusion matrix (zeros included)."""
    rows = [(gt, pred, m.confusion[i][j])
            for i, gt in enumerate(m.classes) for j, pred in enumerate(m.classes)]
    return _csv_text(("gt", "pred", "count"), rows)


def images_json(results: Sequence[EvalResult], groups: Mapping[str, str],
                classes: Sequence[str]) -> str:
    """images.json: the classes, then per eval set its fingerprint and one line per image
    (sorted by id): id, split group (the id itself when splits.csv names none), and per class
    the pixels predicted and annotated as it (intersection) and predicted or annotated as it
    (union). Summed over images they give metrics.json's IoU exactly."""
    sections = []
    for result in results:
        rows = [json.dumps({"id": s.id, "group": groups.get(s.id, s.id),
                            "intersection": list(s.intersection), "union": list(s.union)},
                           ensure_ascii=False)
                for s in sorted(result.scores, key=lambda s: s.id)]
        # one image per line: a small, readable git diff when one image's counts change
        sections.append(f"  {json.dumps(result.split)}: {{\n"
                        f"    \"eval_fingerprint\": {json.dumps(result.eval_fingerprint)},\n"
                        "    \"images\": [\n      " + ",\n      ".join(rows) + "\n    ]\n  }")
    head = f"  \"classes\": {json.dumps(list(classes), ensure_ascii=False)}"
    return "{\n" + ",\n".join([head, *sections]) + "\n}\n"


def overlay_name(rank: int, sample_id: str) -> str:
    return f"{rank:02d}_{sample_id.replace('/', '__')}.png"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def _num(value: float, digits: int = 4) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def report_markdown(results: Sequence[EvalResult], model_path: str, info: ModelInfo,
                    overlays: Sequence[tuple[str, float, str]]) -> str:
    """The page a person reads first. `overlays`: (id, mIoU, relative link) worst first."""
    lines = ["# Evaluation report", "",
             f"Model `{model_path}`, trained on data `{info.data_fingerprint}`.", ""]
    for result in results:
        m = result.metrics
        lines += [f"## {result.split} ({result.n_images} images, {m.n_pixels:,} pixels)", "",
                  f"**mIoU {_num(m.miou)}** · mIoU without background {_num(m.miou_fg)} · "
                  f"aAcc {_num(m.aacc)} · eval set `{result.eval_fingerprint}`", "",
                  "| class | IoU | Dice | precision | recall | support (px) | share |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for i, name in enumerate(m.classes):
            share = m.support[i] / m.n_pixels if m.n_pixels else math.nan
            lines.append(f"| {_cell(name)} | {_num(m.iou[i])} | {_num(m.dice[i])} | "
                         f"{_num(m.precision[i])} | {_num(m.recall[i])} | "
                         f"{m.support[i]:,} | {_num(100 * share, 1)} % |")
        lines += ["", "– = undefined: the class is absent from the ground truth (recall), "
                  "never predicted (precision), or both (IoU, Dice; left out of the mIoU).", ""]
        if len(m.classes) <= 20:
            lines += _confusion_table(m)
    lines += _provenance(info)
    if overlays:
        lines += ["## Worst val images", "", "By the image's own mIoU; each overlay shows "
                  "image | ground truth | prediction.", "",
                  "| rank | image | mIoU | overlay |", "|---:|---|---:|---|"]
        lines += [f"| {rank} | {_cell(sample_id)} | {_num(score)} | "
                  f"[{_cell(Path(link).name)}]({urllib.parse.quote(link)}) |"
                  for rank, (sample_id, score, link) in enumerate(overlays, start=1)]
        lines.append("")
    return "\n".join(lines)


def _provenance(info: ModelInfo) -> list[str]:
    """What the numbers came from: the plan and why, the fingerprint, device and precision."""
    plan = info.plan
    lines = ["## How the model was trained", "",
             f"On **{info.device}**, {'bf16 autocast' if info.amp else 'fp32'}"
             f"{', channels_last' if info.channels_last else ''}; "
             f"U-Net depth {plan.depth}, width {plan.base_width}; EMA decay {plan.ema_decay:g}.",
             "", plan.summary().removeprefix("plan: ").capitalize() + ".", ""]
    lines += [f"- {_cell(reason)}" for reason in plan.reasons]
    dataset = info.dataset
    if dataset:
        low, mid, high = dataset["long_side"]
        lines += ["", f"Dataset fingerprint: {dataset['images']} images, long side "
                  f"{low:g} / {mid:g} / {high:g} px (10th / 50th / 90th percentile).", "",
                  "| class | images | pixel share | objects | median area (px) | "
                  "median thickness (px) |", "|---|---:|---:|---:|---:|---:|"]
        for name, c in dataset["classes"].items():
            lines.append(f"| {_cell(name)} | {c['images']} | {100 * c['pixel_share']:.2f} % | "
                         f"{c['objects']} | {c['area']:,.0f} | {c['thickness']:.1f} |")
    return [*lines, ""]


def _confusion_table(m: SegMetrics) -> list[str]:
    """Rows = ground truth, columns = prediction, in % of the row's pixels."""
    lines = ["Confusion (% of each ground-truth row's pixels; rows = ground truth, "
             "columns = prediction):", "",
             "| gt \\ pred | " + " | ".join(m.classes) + " |",
             "|---|" + "---:|" * len(m.classes)]
    for i, name in enumerate(m.classes):
        row_total = sum(m.confusion[i])
        cells = [_num(100 * v / row_total, 1) if row_total else "–" for v in m.confusion[i]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def write_overlays(result: EvalResult, samples: Sequence[ManifestRow], root: Path,
                   classes: Sequence[str], out_dir: Path, cfg: EvaluateParams
                   ) -> list[tuple[str, float, str]]:
    """Overlay PNGs of the worst images into out_dir/overlays (stale ones removed first);
    returns (id, mIoU, link relative to out_dir) worst first."""
    overlay_dir = out_dir / "overlays"
    if overlay_dir.is_dir():
        for stale in overlay_dir.glob("*.png"):
            stale.unlink()
    by_id = {s.id: s for s in samples}
    written = []
    ranked = [s for s in result.scores if s.id in result.worst]
    for rank, score in enumerate(ranked, start=1):
        row = by_id[score.id]
        rgb, mask = read_pair(root / row.image, root / row.mask, row.id)
        panels = overlay_panels(
            rgb, [mask, result.worst[score.id]],
            [score.id, "ground truth", f"prediction (mIoU {score.miou:.3f})"], classes,
            alpha=cfg.overlay_alpha, max_size=cfg.overlay_size)
        name = overlay_name(rank, score.id)
        write_bytes(overlay_dir / name, rgb_png_bytes(panels))
        written.append((score.id, score.miou, f"overlays/{name}"))
    return written


# ---------------------------------------------------------------- stage


def run_evaluate(params: Params, *, progress: bool = True) -> dict[str, object]:
    """The whole stage; returns what it wrote to evaluate.metrics_path."""
    with folder_lock([params.evaluate.out_dir], "evaluate"):  # one run per eval folder
        return _evaluate(params, progress)


def _evaluate(params: Params, progress: bool) -> dict[str, object]:
    cfg = params.evaluate
    device = pick_device(cfg.device, setting="evaluate.device")

    # 1. the model, checked against the params and the data it was trained on
    model_path = params.train.model_path
    model, info = load_model(model_path, map_location=device)
    if tuple(info.classes) != tuple(params.labels.classes):
        raise InputError(f"{model_path}: the model's classes {list(info.classes)} must equal "
                         f"params classes {list(params.labels.classes)}; train it again")
    manifest_csv, splits_csv = manifest_path(params.convert.out_dir), params.split.splits_path
    if data_fingerprint(manifest_csv, splits_csv) != info.data_fingerprint:
        click.echo(f"warning: {model_path} was trained on other data than {manifest_csv} + "
                   f"{splits_csv} describe now (data fingerprints differ); run `dvc repro` "
                   "or `segpipe train` to retrain", err=True)

    # 2. the eval sets: val, and the benchmark set when the split has one
    manifest, splits = load_dataset(manifest_csv, splits_csv, params.labels.classes)
    val = select(manifest, splits, "val", str(splits_csv))
    if not val:
        raise InputError(f"{splits_csv}: split 'val' has no samples to evaluate")
    bench = select(manifest, splits, "benchmark", str(splits_csv))
    if not bench and params.split.benchmark:
        click.echo(f"warning: split.benchmark is {params.split.benchmark!r} but {splits_csv} "
                   "has no benchmark rows; evaluated val only", err=True)

    # 3. predict and score them
    workers = cfg.workers or default_workers()
    results = [evaluate_split(model, info, rows, manifest.root, name, device,
                              batch_size=cfg.batch_size, keep_worst=cfg.worst_k if i == 0 else 0,
                              workers=workers, progress=progress)
               for i, (name, rows) in enumerate((("val", val), ("benchmark", bench)))
               if rows]

    # 4. the metrics, the tables, the overlays and the report
    record = write_results(results, val, manifest, info, model_path, cfg, splits.groups)
    for result in results:
        m = result.metrics
        click.echo(f"{result.split}: mIoU {_num(m.miou)} (without background "
                   f"{_num(m.miou_fg)}), aAcc {_num(m.aacc)} on {result.n_images} images",
                   err=True)
    click.echo(f"wrote {cfg.metrics_path}, {cfg.images_path} and "
               f"{Path(cfg.out_dir) / 'report.md'}", err=True)
    return record


def write_results(results: Sequence[EvalResult], val: Sequence[ManifestRow], manifest: Manifest,
                  info: ModelInfo, model_path: str, cfg: EvaluateParams,
                  groups: Mapping[str, str]) -> dict[str, object]:
    """metrics.json, images.json, per_class.csv and confusion.csv per eval set, overlays,
    report.md."""
    out_dir = Path(cfg.out_dir)
    record = metrics_record(results[0], info.data_fingerprint)
    if len(results) > 1:
        record["benchmark"] = metrics_record(results[1], info.data_fingerprint)
    for result in results:
        folder = out_dir if result.split == "val" else out_dir / result.split
        write_text(folder / "per_class.csv", per_class_csv(result.metrics))
        write_text(folder / "confusion.csv", confusion_csv(result.metrics))
    overlays = write_overlays(results[0], val, manifest.root, info.classes, out_dir, cfg)
    write_text(out_dir / "report.md",
               report_markdown(results, model_path, info, overlays))
    write_text(cfg.images_path, images_json(results, groups, info.classes))
    write_json(cfg.metrics_path, record)
    return record


@click.command("evaluate")
@params_option
def command(params: Params) -> None:
    """Per-class IoU/Dice/precision/recall of train.model_path on the val split (and on the
    benchmark split when it has rows), at the masks' full resolution.

    Writes evaluate.metrics_path (a DVC metric: miou, miou_fg, aacc, iou.<class>, dice.<class>,
    ..., and fingerprints of the eval set and the training data) and, under evaluate.out_dir,
    report.md, per_class.csv, confusion.csv (DVC plots) and overlays of the worst_k val images.
    """
    run_evaluate(params)
