"""`segpipe predict`: palette masks (and overlays) for new images, at their original size.

Each image is turned upright by its EXIF orientation and predicted by the shared inference
(learn/inference.py: the model's working scale, sliding window, blending); masks are written at
the image's own size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from pipeline.errors import InputError
from pipeline.learn.inference import default_workers, load_photo, predict_mask, prefetch
from pipeline.learn.model import ModelInfo, UNet, load_model, pick_device
from pipeline.learn.overlay import overlay_panels
from pipeline.learn.trace import labelme_document
from pipeline.progress import Progress
from pipeline.storage.files import write_bytes, write_text
from pipeline.storage.images import IMAGE_SUFFIXES, rgb_png_bytes
from pipeline.storage.masks import write_mask

# ---------------------------------------------------------------- inputs and outputs


OUTPUTS = ("mask", "overlay", "labelme")


@dataclass(frozen=True)
class Job:
    image: Path
    mask: Path  # output palette PNG
    overlay: Path  # output overlay PNG (written with --overlay)
    labelme: Path  # output Labelme JSON (written with --labelme)

    def outputs(self, kinds: Sequence[str]) -> list[Path]:
        return [getattr(self, kind) for kind in kinds]


def plan_jobs(inputs: Sequence[Path], out_dir: Path,
              kinds: Sequence[str] = ("mask", "overlay")) -> list[Job]:
    """One job per image. A file argument writes OUT/<stem>.png; a directory argument is walked
    (image suffixes only, hidden entries and OUT itself skipped) and mirrored: OUT/<relative
    path>.png. Two images that would write the same file, an output that would overwrite an
    input, or a Labelme file that would replace an annotation not made by predict, are an
    InputError naming them (before anything is written). `kinds`: the outputs written."""
    out_resolved = out_dir.resolve()
    pairs: list[tuple[Path, Path]] = []  # (image, output path without suffix)
    for given in inputs:
        if given.is_dir():
            for path in _walk_images(given, out_resolved):
                pairs.append((path, out_dir / path.relative_to(given).with_suffix("")))
        else:
            pairs.append((given, out_dir / given.stem))
    jobs = [Job(image, stem.with_name(stem.name + ".png"),
                stem.with_name(stem.name + ".overlay.png"), stem.with_name(stem.name + ".json"))
            for image, stem in pairs]
    _check_outputs(jobs, kinds)
    return jobs


def _walk_images(root: Path, skip: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and (here / d).resolve() != skip)
        found += [here / f for f in sorted(filenames)
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return found


def _check_outputs(jobs: Sequence[Job], kinds: Sequence[str]) -> None:
    owners: dict[Path, list[Path]] = {}
    for job in jobs:
        for out in job.outputs(kinds):
            owners.setdefault(out.resolve(), []).append(job.image)
    clashes = [f"{out}: written by {', '.join(map(str, sorted(set(images))))}"
               for out, images in owners.items() if len(set(images)) > 1]
    inputs = {job.image.resolve() for job in jobs}
    clashes += [f"{out}: would overwrite the input image" for out in owners if out in inputs]
    if "labelme" in kinds:  # an annotator may have corrected it: never replaced
        clashes += [f"{job.labelme}: a Labelme file is there already (never replaced: delete "
                    "it to predict again)" for job in jobs if job.labelme.exists()]
    if clashes:
        raise InputError("outputs must not clash (rename the images or pick another --out):\n  "
                         + "\n  ".join(clashes))


def predict_files(model: UNet, info: ModelInfo, jobs: Sequence[Job], device: torch.device, *,
                  batch_size: int = 8, kinds: Sequence[str] = ("mask",), workers: int = 1,
                  tolerance: float = 0.4, progress: bool = True) -> tuple[int, list[str]]:
    """Write the outputs `kinds` (mask, overlay, labelme) per job; returns (written,
    problems). `batch_size`: tiles per forward pass; `tolerance`: polygon simplification (px)
    of the Labelme files."""
    problems: list[str] = []
    written = 0
    with Progress(len(jobs), "predict", "images", enabled=progress) as bar:
        for job, rgb in prefetch(list(jobs), lambda j: load_photo(j.image), workers):
            bar.update()
            if isinstance(rgb, str):
                problems.append(rgb)
                bar.write(f"skipped {rgb}")
                continue
            mask = predict_mask(model, info, rgb, device, batch_size)
            if "mask" in kinds:
                write_mask(job.mask, mask)
            if "overlay" in kinds:
                panels = overlay_panels(rgb, [mask], ["image", "prediction"], info.classes)
                write_bytes(job.overlay, rgb_png_bytes(panels))
            if "labelme" in kinds:
                image_path = os.path.relpath(job.image, job.labelme.parent)
                doc = labelme_document(mask, info.classes, Path(image_path).as_posix(),
                                       tolerance, source=f"segpipe predict ({info.device})")
                write_text(job.labelme, json.dumps(doc, indent=2) + "\n")
            written += 1
    return written, problems


# ---------------------------------------------------------------- CLI


@click.command(
    "predict",
    epilog="Images are turned upright by their EXIF orientation first (as photo viewers show "
           "them), so masks match what you see, not the raw sensor frame. A file argument "
           "writes OUT/<name>.png; a directory is searched recursively for "
           f"{', '.join(IMAGE_SUFFIXES)} files (hidden files skipped) and mirrored under OUT. "
           "Masks are palette PNGs at the image's own size: pixel value = class index in the "
           "model's class list, VOC colours. With --overlay, OUT/<name>.overlay.png shows the "
           "image next to the prediction. With --labelme, OUT/<name>.json is a Labelme file "
           "of the prediction (polygons traced from each predicted object, holes as "
           "background polygons drawn after it, label = class name, marked as predicted, "
           "imagePath relative to the JSON, no embedded image) to open in Labelme or "
           "X-AnyLabeling and correct; --out the image folder itself puts it beside each "
           "image (add --no-masks there). An existing Labelme file is never replaced.\n\n"
           "An image that cannot be read is reported on stderr and skipped; the others are "
           "still written. Exit code: 0 when every image was written, 1 when some were "
           "skipped, 2 for a usage error (no images, unreadable model, clashing outputs).",
)
@click.argument("model_path", metavar="MODEL",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("images", metavar="IMAGES...", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the outputs (created when missing).")
@click.option("--masks/--no-masks", default=True, show_default=True,
              help="Write <name>.png, the palette mask.")
@click.option("--overlay", is_flag=True, help="Also write <name>.overlay.png: image | prediction.")
@click.option("--labelme", is_flag=True,
              help="Also write <name>.json: the prediction as Labelme polygons to correct.")
@click.option("--tolerance", default=0.4, show_default=True, type=click.FloatRange(min=0),
              help="Polygon simplification of --labelme, in pixels. Under 0.5 only the pixel "
                   "staircase is thinned and the file converts back to the exact mask; 1.0 "
                   "keeps a fifth of the points and ~97-99% of the pixels.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Tiles per forward pass.")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
@click.option("--workers", default=0, type=click.IntRange(min=0),
              help="Threads decoding images [default: 0 = min(8, cores)].")
def command(model_path: Path, images: tuple[Path, ...], out_dir: Path, masks: bool,
            overlay: bool, labelme: bool, tolerance: float, batch_size: int, device: str,
            workers: int) -> int:
    """Segment IMAGES (files or folders) with MODEL (a models/model.pt from `segpipe train`)."""
    kinds = [k for k, on in zip(OUTPUTS, (masks, overlay, labelme), strict=True) if on]
    if not kinds:
        raise InputError("nothing to write: --no-masks needs --overlay or --labelme")
    torch_device = pick_device(device, setting="--device")
    jobs = plan_jobs(images, out_dir, kinds)
    if not jobs:
        raise InputError(f"no image files found in {', '.join(map(str, images))} "
                         f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    model, info = load_model(model_path, map_location=torch_device)
    written, problems = predict_files(model, info, jobs, torch_device, batch_size=batch_size,
                                      kinds=kinds, workers=workers or default_workers(),
                                      tolerance=tolerance)
    click.echo(f"wrote the {', '.join(kinds)} of {written} image(s) to {out_dir}", err=True)
    if problems:
        click.echo(f"skipped {len(problems)} of {len(jobs)} image(s):\n  "
                   + "\n  ".join(problems), err=True)
        return 1
    return 0
