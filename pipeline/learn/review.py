"""Stage `review`: the annotations most likely wrong, first, mapped back to file and shape.

    segpipe review [--params params.yaml]

1. **Out-of-fold predictions.** The train and val samples (never the benchmark set) are cut
   into `review.folds` folds along their split groups; for each fold a model is trained on the
   other folds (the train stage's own recipe and plan, with `review.steps` steps) and predicts
   the fold's images at the working scale. Every image is so predicted by a model that never
   saw it. Scores are computed per image as its prediction comes: no probability map of the
   whole set is held in memory.
2. **Per image**, the label-quality score of Lad & Mueller (2023, cleanlab's segmentation
   "softmin"): the predicted probability of the given label at every pixel, averaged with
   softmin weights exp(-p / T) / sum exp(-p / T), so the worst pixels dominate. Lower = worse.
3. **Per region**, suspects: connected regions where a confident prediction (probability >=
   `review.confidence`) disagrees with the mask, large enough to matter (`review.min_area` of
   the class's typical object), each a *missing* object (annotated background, the model sees
   a class), an *extra* one (annotated, the model confidently sees background), a *wrong
   class*, or a *boundary* band (at most 2 x `review.boundary_px` + 1 px thick, along an
   annotated edge of the class the model predicts there).
   Its score = mean confidence x min(1, area / typical object area), halved for boundaries.
4. **Mapped back**: each suspect names the raw annotation file and the index and label of the
   shape whose pixels it covers (the last-drawn one, as the rasteriser draws), or no shape for
   a missing object.

Images are ranked by their score, the worst first (`images.csv`); the suspects follow that
order, the strongest of an image first.

Outputs: `review.out_dir`/review.csv (suspects, worst image first), images.csv (every image
ranked), review.md (the top `review.top`
with overlays image | annotation | prediction, suspect regions outlined) and overlays/, and
`review.metrics_path` (suspects per kind: a DVC metric). Fold models, caches and checkpoints
live in `review.work_dir` (a killed review resumes fold by fold).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from pipeline.convert import formats, raster, validate
from pipeline.core.fingerprint import Fingerprint
from pipeline.core.hashing import content_hash
from pipeline.core.manifest import ManifestRow, Splits, load_dataset, manifest_path
from pipeline.core.records import IGNORE, Record, Shape
from pipeline.errors import InputError
from pipeline.learn.inference import Precision, full_logits, read_pair, resize_image
from pipeline.learn.model import load_model, pick_device
from pipeline.learn.overlay import overlay_panels
from pipeline.learn.plan import make_plan
from pipeline.learn.train import read_fingerprint, train
from pipeline.params import Params, params_option
from pipeline.progress import Progress
from pipeline.storage.files import write_bytes, write_json, write_text
from pipeline.storage.images import rgb_png_bytes

KINDS = ("missing", "extra", "wrong_class", "boundary")
COLUMNS = ("rank", "id", "annotation", "shape", "label", "kind", "score", "predicted", "area",
           "confidence", "image_score", "x0", "y0", "x1", "y1", "overlay")
IMAGE_COLUMNS = ("rank", "id", "annotation", "image_score", "suspects", "fold")


@dataclass(frozen=True)
class Region:
    """A confident disagreement at the working scale."""

    kind: str
    given: int  # class index in the mask
    predicted: int
    area: int  # pixels at the working scale
    confidence: float  # mean predicted probability over the region
    score: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive) at the working scale
    pixels: np.ndarray  # bool mask of the region within `box`


@dataclass(frozen=True)
class Suspect:
    id: str
    annotation: str  # the raw file to open
    shape: int | None  # index of the shape in that file (None: no shape there)
    label: str  # the shape's label as written, or the given class's name
    kind: str
    score: float
    predicted: str
    area: int  # pixels at the original size
    confidence: float
    image_score: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 at the original size


# ---------------------------------------------------------------- scores (pure)


def label_quality(probs: np.ndarray, labels: np.ndarray, temperature: float = 0.1) -> float:
    """Softmin-weighted mean of the probability of the given label (ignore pixels left out):
    1 = the model agrees everywhere, near 0 = some pixels' labels are confidently contradicted."""
    valid = labels != IGNORE
    if not valid.any():
        return math.nan
    given = np.take_along_axis(probs, np.where(valid, labels, 0)[None].astype(np.int64), 0)[0]
    p = given[valid].astype(np.float64)
    weights = np.exp(-(p - p.min()) / temperature)  # shifted: same weights, no underflow
    return float((weights * p).sum() / weights.sum())


def find_regions(probs: np.ndarray, labels: np.ndarray, typical_area: Sequence[float], *,
                 confidence: float = 0.5, min_area: float = 0.2, boundary_px: int = 2
                 ) -> list[Region]:
    """The suspect regions of one image (C x h x w probabilities, h x w mask), best first.

    `typical_area`: per class, its typical object area at this scale (px); a region counts
    when it covers at least `min_area` of the typical area of the class it is about."""
    from scipy import ndimage  # imported here: only this stage needs it

    predicted = probs.argmax(0)
    sure = probs.max(0)
    disagree = (predicted != labels) & (labels != IGNORE) & (sure >= confidence)
    regions = []
    pairs = np.stack([labels[disagree], predicted[disagree]], 1)
    for given, pred in np.unique(pairs, axis=0).tolist() if len(pairs) else []:
        chosen = disagree & (labels == given) & (predicted == pred)
        parts, _n = ndimage.label(chosen, structure=np.ones((3, 3), bool))
        about = pred if given == 0 else given
        for k, box in enumerate(ndimage.find_objects(parts), start=1):
            inside = parts[box] == k
            area = int(inside.sum())
            typical = max(typical_area[about], 1.0)
            if area < min_area * typical:
                continue
            kind = "missing" if given == 0 else "extra" if pred == 0 else "wrong_class"
            if _is_band(inside, _ring(labels, box), pred, boundary_px):
                kind = "boundary"
            mean = float(sure[box][inside].mean())
            score = mean * min(1.0, area / typical) * (0.5 if kind == "boundary" else 1.0)
            regions.append(Region(kind, int(given), int(pred), area, mean, score,
                                  (box[1].start, box[0].start, box[1].stop - 1,
                                   box[0].stop - 1), inside))
    return sorted(regions, key=lambda r: (-r.score, r.box))


def _ring(labels: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """The labels of the region's box grown by one pixel (255 past the image)."""
    (ys, xs), (h, w) = box, labels.shape
    out = np.full((ys.stop - ys.start + 2, xs.stop - xs.start + 2), IGNORE, labels.dtype)
    y0, x0 = max(ys.start - 1, 0), max(xs.start - 1, 0)
    y1, x1 = min(ys.stop + 1, h), min(xs.stop + 1, w)
    out[y0 - ys.start + 1:y1 - ys.start + 1, x0 - xs.start + 1:x1 - xs.start + 1] = \
        labels[y0:y1, x0:x1]
    return out


def _is_band(inside: np.ndarray, around: np.ndarray, predicted: int, boundary_px: int) -> bool:
    """A region is a boundary band when it is thin (at most 2 * boundary_px + 1 px thick) and
    borders annotated pixels of the class the model predicts there: the annotation's edge
    sits a little off the model's, rather than a whole object being wrong."""
    from scipy import ndimage

    if boundary_px <= 0:
        return False
    depth = ndimage.distance_transform_edt(np.pad(inside, 1)).max()
    if 2 * depth - 1 > 2 * boundary_px + 1:
        return False
    grown = ndimage.binary_dilation(np.pad(inside, 1))
    return bool((around[grown & ~np.pad(inside, 1)] == predicted).any())


def assign_folds(ids: Sequence[str], groups: Mapping[str, str], folds: int, seed: int
                 ) -> dict[str, int]:
    """id -> fold: whole groups, in an order fixed by (seed, group), each to the fold with the
    fewest samples so far (ties: the lowest fold)."""
    members: dict[str, list[str]] = {}
    for i in ids:
        members.setdefault(groups.get(i, i), []).append(i)
    order = sorted(members, key=lambda g: (content_hash(f"{seed}\x00{g}".encode()), g))
    sizes = [0] * folds
    fold_of = {}
    for group in order:
        k = min(range(folds), key=lambda f: (sizes[f], f))
        sizes[k] += len(members[group])
        for i in members[group]:
            fold_of[i] = k
    return fold_of


# ---------------------------------------------------------------- mapping back to shapes


def owner(record: Record, region: Region, scale: tuple[float, float], shape_values: Sequence[int],
          line_width: int, point_radius: int) -> Shape | None:
    """The shape whose drawn pixels cover most of the region (at the original size), drawing
    the shapes in file order as the rasteriser does (a later shape wins), or None.

    A boundary band on annotated background (an outline drawn inside the object's edge) covers
    no shape: it belongs to the shape of the predicted class that borders it."""
    from scipy import ndimage

    sx, sy = scale
    outside = region.kind == "boundary" and region.given == 0
    pad = 2 if outside else 0  # working-scale px around the band where its shape is
    x0, y0, x1, y1 = region.box
    left, top = math.floor((x0 - pad) / sx), math.floor((y0 - pad) / sy)
    width = max(1, math.ceil((x1 + 1 + pad) / sx) - left)
    height = max(1, math.ceil((y1 + 1 + pad) / sy) - top)
    pixels = np.pad(region.pixels, pad)
    if outside:
        pixels = ndimage.binary_dilation(pixels, iterations=pad) & ~pixels
    inside = np.asarray(Image.fromarray(pixels.astype(np.uint8)).resize(
        (width, height), Image.Resampling.NEAREST)).astype(bool)
    kept = [(shape, value) for shape, value in zip(record.shapes, shape_values, strict=True)
            if value >= 0][:254]  # shapes with a class; drawn values 1..254
    if not kept:
        return None
    candidates = [(dataclasses.replace(shape, points=tuple((x - left, y - top)
                                                           for x, y in shape.points)), k)
                  for k, (shape, _) in enumerate(kept, start=1)]
    try:
        drawn = raster.rasterize(candidates, width, height, line_width=line_width,
                                 point_radius=point_radius)
    except ValueError:  # a shape the rasteriser refuses (convert reported it already)
        return None
    votes = np.bincount(drawn[inside], minlength=len(candidates) + 1)
    votes[0] = 0
    if outside:  # only a shape of the class the model sees there
        votes[1:][np.array([value for _, value in kept]) != region.predicted] = 0
    if votes.max() == 0:
        return None
    return kept[int(votes.argmax()) - 1][0]


def read_record(row: ManifestRow, raw_dir: Path) -> Record | None:
    """The sample's annotation(s) as convert read them (merged), or None when unreadable now."""
    records = []
    for annotation in row.annotation.split(";"):
        record, _ = formats.read_annotation(raw_dir / annotation, raw_dir)
        if record is None:
            return None
        records.append(record)
    return formats.merge_records(records)


def suspects_of(row: ManifestRow, regions: Sequence[Region], record: Record | None,
                params: Params, scale: tuple[float, float], image_score: float
                ) -> list[Suspect]:
    """The regions of one image as suspects naming file, shape and label."""
    classes = params.labels.classes
    values = []
    if record is not None:
        for shape in record.shapes:
            match = validate.resolve_label(shape.label, params.labels)
            values.append(-1 if match.value is None else match.value)
    out = []
    sx, sy = scale
    for region in regions:
        shape = None
        if record is not None and region.kind != "missing":
            shape = owner(record, region, scale, values, params.convert.line_width,
                          params.convert.point_radius)
        x0, y0, x1, y1 = region.box
        out.append(Suspect(
            id=row.id, annotation=_file_to_open(row, record, shape),
            shape=shape.index if shape else None,
            label=shape.label if shape else classes[region.given], kind=region.kind,
            score=round(region.score, 6), predicted=classes[region.predicted],
            area=round(region.area / (sx * sy)), confidence=round(region.confidence, 6),
            image_score=round(image_score, 6),
            box=(int(x0 / sx), int(y0 / sy), int((x1 + 1) / sx) - 1, int((y1 + 1) / sy) - 1)))
    return out


def _file_to_open(row: ManifestRow, record: Record | None, shape: Shape | None) -> str:
    """The shape's own file; with no shape (a missing object), the sample's Labelme file if
    it has one (where a polygon is added), else its first annotation file."""
    if shape is not None and record is not None:
        return shape.source or record.annotation
    files = row.annotation.split(";")
    return next((f for f in files if f.lower().endswith(".json")), files[0])


# ---------------------------------------------------------------- the stage


@dataclass(frozen=True)
class Scored:
    """One image's result (what review.csv and review.md are made of)."""

    row: ManifestRow
    image_score: float
    suspects: tuple[Suspect, ...]
    regions: tuple[Region, ...]
    fold: int


def run_review(params: Params, *, progress: bool = True,
               on_prediction: Callable[[ManifestRow, np.ndarray, np.ndarray], None] | None
               = None) -> list[Scored]:
    """The whole stage; returns every image's scores (also written to the outputs).
    `on_prediction(row, probabilities, mask)` sees each out-of-fold prediction as it comes
    (bench/review.py compares other scorers on them)."""
    cfg = params.review
    manifest, splits = load_dataset(manifest_path(params.convert.out_dir),
                                    params.split.splits_path, params.labels.classes)
    rows = [r for r in manifest.rows if splits.assignments.get(r.id) in ("train", "val")]
    if len(rows) < cfg.folds:
        raise InputError(f"review needs at least review.folds = {cfg.folds} train/val "
                         f"samples, got {len(rows)}")
    fold_of = assign_folds([r.id for r in rows], splits.groups, cfg.folds, cfg.seed)
    fingerprint = read_fingerprint(Path(params.convert.reports_dir) / "data.json")
    results: list[Scored] = []
    with Progress(len(rows), "review", "images", enabled=progress) as bar:
        for fold in range(cfg.folds):
            held_out = [r for r in rows if fold_of[r.id] == fold]
            model_path = fold_model(params, splits, fold_of, fold, progress)
            for row, probs, labels, scale in fold_predictions(params, model_path, held_out,
                                                              manifest.root):
                results.append(score_image(params, fingerprint, row, probs, labels, scale,
                                           fold))
                if on_prediction is not None:
                    on_prediction(row, probs, labels)
                bar.update()
    write_outputs(params, results)
    return results


def fold_model(params: Params, splits: Splits, fold_of: Mapping[str, int], fold: int,
               progress: bool) -> Path:
    """Train (or resume) the model of one fold: the train stage on the other folds."""
    cfg = params.review
    work = Path(cfg.work_dir) / f"fold{fold}"
    split_rows = ["id,group,split"] + [
        f"{i},{splits.groups.get(i, i)},{'val' if k == fold else 'train'}"
        for i, k in sorted(fold_of.items())]
    write_text(work / "splits.csv", "\n".join(split_rows) + "\n")
    fingerprint = read_fingerprint(Path(params.convert.reports_dir) / "data.json")
    device = pick_device(params.train.device, setting="train.device")
    plan = make_plan(fingerprint, params.train, params.labels.classes, device.type)
    steps = cfg.steps if cfg.steps != "auto" else max(1, round(plan.steps * cfg.step_share))
    train_cfg = dataclasses.replace(
        params.train, steps=steps, model_path=str(work / "model.pt"),
        checkpoint_path=str(work / "checkpoint.pt"), cache_dir=str(work / "cache"),
        log_dir=str(work / "train"), plan_path=str(work / "plan.json"))
    fold_params = dataclasses.replace(
        params, train=train_cfg,
        split=dataclasses.replace(params.split, splits_path=str(work / "splits.csv")))
    train(fold_params, progress=progress)
    return work / "model.pt"


def fold_predictions(params: Params, model_path: Path, rows: Sequence[ManifestRow],
                     root: Path) -> Iterator[tuple[ManifestRow, np.ndarray, np.ndarray,
                                                   tuple[float, float]]]:
    """(row, C x h x w probabilities, h x w mask, (x, y) scale) of each held-out row at the
    working scale, one image at a time."""
    device = pick_device(params.train.device, setting="train.device")
    model, info = load_model(model_path, map_location=device)
    precision = Precision(info.amp, info.channels_last)
    for row in rows:
        rgb, mask = read_pair(root / row.image, root / row.mask, row.id)
        size = info.plan.working_size(row.height, row.width)
        labels = mask if size == mask.shape else np.asarray(
            Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST))
        logits = full_logits(model, resize_image(rgb, size), info.plan.patch, device,
                             precision)
        probs = torch.softmax(logits, dim=0).cpu().numpy()
        yield row, probs, labels, (size[1] / row.width, size[0] / row.height)


def score_image(params: Params, fingerprint: Fingerprint, row: ManifestRow, probs: np.ndarray,
                labels: np.ndarray, scale: tuple[float, float], fold: int) -> Scored:
    """One held-out image: its label quality and its suspects, mapped back to the shapes."""
    cfg = params.review
    typical = [fingerprint.classes[c].area * scale[0] * scale[1]
               if c in fingerprint.classes else 1.0 for c in params.labels.classes]
    quality = label_quality(probs, labels, cfg.temperature)
    regions = [r for r in find_regions(probs, labels, typical, confidence=cfg.confidence,
                                       min_area=cfg.min_area, boundary_px=cfg.boundary_px)
               if r.score >= cfg.threshold]
    record = read_record(row, Path(params.convert.raw_dir)) if regions else None
    suspects = suspects_of(row, regions, record, params, scale, quality)
    return Scored(row, quality, tuple(suspects), tuple(regions), fold)


# ---------------------------------------------------------------- outputs


def ranked(results: Sequence[Scored]) -> list[Suspect]:
    """Every suspect, grouped by image in `ranked_images` order (the worst label quality
    first), the strongest suspect of an image first."""
    order = {r.row.id: k for k, r in enumerate(ranked_images(results))}
    suspects = [s for r in results for s in r.suspects]
    return sorted(suspects, key=lambda s: (order[s.id], -s.score, s.box))


def ranked_images(results: Sequence[Scored]) -> list[Scored]:
    """Every reviewed image, the worst label-quality score first (an image without a scored
    pixel last); ties by id. The measured file ranking (bench/review.py): the score finds
    mistakes too subtle to leave a confident region, which only says where to look."""
    return sorted(results, key=lambda r: (math.isnan(r.image_score),
                                          0.0 if math.isnan(r.image_score) else r.image_score,
                                          r.row.id))


def images_csv(results: Sequence[Scored]) -> str:
    """rank, id, annotation, image_score, suspects, fold: every image, worst first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(IMAGE_COLUMNS)
    for rank, r in enumerate(ranked_images(results), start=1):
        writer.writerow([rank, r.row.id, r.row.annotation, f"{r.image_score:.6f}",
                         len(r.suspects), r.fold])
    return buffer.getvalue()


def overlay_names(suspects: Sequence[Suspect], top: int) -> dict[str, str]:
    """id -> overlays/NN_<id>.png for the images of the first `top` suspects, numbered in
    order of first appearance (one picture per image)."""
    names: dict[str, str] = {}
    for s in suspects[:top]:
        if s.id not in names:
            names[s.id] = f"overlays/{len(names) + 1:02d}_{s.id.replace('/', '__')}.png"
    return names


def review_csv(suspects: Sequence[Suspect], overlays: Mapping[str, str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rank, s in enumerate(suspects, start=1):
        writer.writerow([rank, s.id, s.annotation, "" if s.shape is None else s.shape, s.label,
                         s.kind, f"{s.score:.4f}", s.predicted, s.area, f"{s.confidence:.4f}",
                         f"{s.image_score:.4f}", *s.box, overlays.get(s.id, "")])
    return buffer.getvalue()


def metrics(results: Sequence[Scored], suspects: Sequence[Suspect]) -> dict[str, object]:
    return {"images": len(results), "suspects": len(suspects),
            "files_with_suspects": len({s.id for s in suspects}),
            "kinds": {k: sum(s.kind == k for s in suspects) for k in KINDS}}


def write_outputs(params: Params, results: Sequence[Scored]) -> None:
    cfg = params.review
    out = Path(cfg.out_dir)
    suspects = ranked(results)
    shown = overlay_names(suspects, cfg.top)
    write_text(out / "review.csv", review_csv(suspects, shown))
    write_text(out / "images.csv", images_csv(results))
    by_id = {r.row.id: r for r in results}
    overlay_dir = out / "overlays"
    if overlay_dir.is_dir():
        for stale in overlay_dir.glob("*.png"):
            stale.unlink()
    lines = ["# Label review", "",
             f"{len(suspects)} suspects in {len({s.id for s in suspects})} of {len(results)} "
             f"images, each predicted by a model that never trained on it ({cfg.folds} folds). "
             "Open the file, find the shape (index in the file, as Labelme lists them) and fix "
             "it; re-run `dvc repro`.", "",
             "| rank | kind | file | shape | label | predicted | score | image score | "
             "overlay |", "|---:|---|---|---:|---|---|---:|---:|---|"]
    for image_id, name in shown.items():
        write_bytes(out / name, overlay_png(params, by_id[image_id]))
    for rank, s in enumerate(suspects[:cfg.top], start=1):
        shape = "" if s.shape is None else str(s.shape)
        lines.append(f"| {rank} | {s.kind} | `{s.annotation}` | {shape} | {s.label} | "
                     f"{s.predicted} | {s.score:.3f} | {s.image_score:.3f} | "
                     f"[view]({shown[s.id]}) |")
    if not suspects:
        lines += ["", "No suspect above `review.threshold`."]
    write_text(out / "review.md", "\n".join(lines) + "\n")
    write_json(cfg.metrics_path, metrics(results, suspects))


def overlay_png(params: Params, scored: Scored) -> bytes:
    """image | annotation | out-of-fold prediction, the suspects outlined (original size)."""
    root = Path(params.convert.out_dir)
    rgb, mask = read_pair(root / scored.row.image, root / scored.row.mask, scored.row.id)
    # the prediction at the original size: each region's predicted class painted over the mask
    painted = mask.copy()
    for suspect, region in zip(scored.suspects, scored.regions, strict=True):
        x0, y0, x1, y1 = suspect.box
        h, w = y1 - y0 + 1, x1 - x0 + 1
        inside = np.asarray(Image.fromarray(region.pixels.astype(np.uint8)).resize(
            (w, h), Image.Resampling.NEAREST)).astype(bool)
        view = painted[y0:y0 + h, x0:x0 + w]
        view[inside[:view.shape[0], :view.shape[1]]] = region.predicted
    panels = overlay_panels(rgb, [mask, painted], [scored.row.id, "annotation",
                                                   "model (suspects outlined)"],
                            params.labels.classes, boxes=[s.box for s in scored.suspects],
                            max_size=params.evaluate.overlay_size)
    return rgb_png_bytes(panels)


@click.command("review")
@params_option
def command(params: Params) -> None:
    """Rank the annotations most likely wrong (out-of-fold predictions), mapped back to the
    raw file and shape: review.out_dir/review.csv and review.md, review.metrics_path.

    Trains review.folds models on the train and val samples (never the benchmark set), each
    on all folds but one, with review.steps steps, and scores the held-out images."""
    results = run_review(params)
    suspects = ranked(results)
    click.echo(f"review: {len(suspects)} suspects in {len({s.id for s in suspects})} of "
               f"{len(results)} images -> {Path(params.review.out_dir) / 'review.md'}", err=True)
