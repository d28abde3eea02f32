"""`segpipe predict`: palette masks (and overlays) for new images, at their original size.

    model, info = load_model(path, map_location=device)
    for batch in prefetch_batches(items, load, batch_size, workers):   # decoded in threads
        preds = predict_batch(model, info, fitted_images, sizes, device)  # one H x W per image

The model sees each image fitted to its training size exactly as in training (`data.fit_image`:
letterbox or stretch, as the checkpoint says); its logits are mapped back to the original frame
and upsampled bilinearly (`data.unfit_logits`) before the argmax, so masks have the original
size. The helpers here (device choice, batch prediction, overlays) are shared with evaluate.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from pipeline.data import fit_image, to_float, unfit_logits
from pipeline.errors import InputError
from pipeline.formats import IMAGE_SUFFIXES
from pipeline.io import (
    IGNORE,
    PIL_ERRORS,
    read_photo,
    rgb_png_bytes,
    voc_palette,
    write_bytes,
    write_mask,
)
from pipeline.model import ModelInfo, UNet, load_model, pick_device

T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------- device + model


@torch.inference_mode()
def predict_batch(model: UNet, info: ModelInfo, fitted: np.ndarray,
                  sizes: Sequence[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
    """Class-index predictions (int64 H x W tensors on `device`) at each image's original size.

    `fitted` is N x S x S x 3 uint8 (each image fitted with `data.fit_image` to the model's
    training size); `sizes` the original (height, width) of each image.
    """
    x = torch.from_numpy(np.ascontiguousarray(fitted)).to(device).permute(0, 3, 1, 2)
    logits = model(to_float(x)).float()
    return [unfit_logits(logits[i:i + 1], h, w, info.resize)[0].argmax(0)
            for i, (h, w) in enumerate(sizes)]


def prefetch_batches(items: Sequence[T], load: Callable[[T], R], batch_size: int,
                     workers: int) -> Iterator[list[tuple[T, R]]]:
    """Batches of (item, load(item)); the next batch is decoded in threads while the caller
    works on this one, so at most two batches are in memory."""
    batches = [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        upcoming = [pool.submit(load, item) for item in batches[0]] if batches else []
        for index, batch in enumerate(batches):
            current = upcoming
            if index + 1 < len(batches):
                upcoming = [pool.submit(load, item) for item in batches[index + 1]]
            yield [(item, future.result()) for item, future in zip(batch, current, strict=True)]


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


# ---------------------------------------------------------------- overlays


def colorize(mask: np.ndarray) -> np.ndarray:
    """H x W class indices -> H x W x 3 VOC colours (255, ignore, is cream-white)."""
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return palette[mask]


def blend(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with each labelled pixel tinted by its class colour; background (0) untouched."""
    tinted = image.astype(np.float32) * (1 - alpha) + colorize(mask).astype(np.float32) * alpha
    out = np.where((mask != 0)[..., None], tinted, image.astype(np.float32))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def overlay_panels(image: np.ndarray, masks: Sequence[np.ndarray], titles: Sequence[str],
                   classes: Sequence[str], *, alpha: float = 0.5,
                   max_size: int = 512) -> np.ndarray:
    """Side-by-side panels: the image, then the image blended with each mask (VOC colours),
    each titled, scaled so its longer side is at most `max_size`, with a colour legend of the
    classes that occur below. Returns H x W x 3 uint8."""
    h, w = image.shape[:2]
    scale = min(1.0, max_size / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    small_masks = [np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST))
                   for m in masks]
    panels = [small, *(blend(small, m, alpha) for m in small_masks)]
    font = ImageFont.load_default()
    header, footer, gap = 16, 16, 4
    canvas = Image.new("RGB", (len(panels) * size[0] + (len(panels) - 1) * gap,
                               header + size[1] + footer), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        x = i * (size[0] + gap)
        canvas.paste(Image.fromarray(panel), (x, header))
        draw.text((x + 2, 2), title, fill="black", font=font)
    present = sorted(set().union(*(np.unique(m).tolist() for m in masks)) - {0})
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    x = 2
    for value in present:
        name = classes[value] if value < len(classes) else ("ignore" if value == IGNORE
                                                              else str(value))
        colour = tuple(int(c) for c in palette[value])
        y = header + size[1] + 3
        draw.rectangle((x, y, x + 9, y + 9), fill=colour, outline="black")
        draw.text((x + 13, y - 1), name, fill="black", font=font)
        x += 13 + int(draw.textlength(name, font=font)) + 10
    return np.asarray(canvas)


# ---------------------------------------------------------------- inputs and outputs


@dataclass(frozen=True)
class Job:
    image: Path
    mask: Path  # output palette PNG
    overlay: Path  # output overlay PNG (written with --overlay)


def plan_jobs(inputs: Sequence[Path], out_dir: Path) -> list[Job]:
    """One job per image. A file argument writes OUT/<stem>.png; a directory argument is walked
    (image suffixes only, hidden entries and OUT itself skipped) and mirrored: OUT/<relative
    path>.png. Two images that would write the same file, or an output that would overwrite an
    input, are an InputError naming them (before anything is written)."""
    out_resolved = out_dir.resolve()
    pairs: list[tuple[Path, Path]] = []  # (image, output path without suffix)
    for given in inputs:
        if given.is_dir():
            for path in _walk_images(given, out_resolved):
                pairs.append((path, out_dir / path.relative_to(given).with_suffix("")))
        else:
            pairs.append((given, out_dir / given.stem))
    jobs = [Job(image, stem.with_name(stem.name + ".png"),
                stem.with_name(stem.name + ".overlay.png")) for image, stem in pairs]
    _check_outputs(jobs)
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


def _check_outputs(jobs: Sequence[Job]) -> None:
    owners: dict[Path, list[Path]] = {}
    for job in jobs:
        for out in (job.mask, job.overlay):
            owners.setdefault(out.resolve(), []).append(job.image)
    clashes = [f"{out}: written by {', '.join(map(str, sorted(set(images))))}"
               for out, images in owners.items() if len(set(images)) > 1]
    inputs = {job.image.resolve() for job in jobs}
    clashes += [f"{out}: would overwrite the input image" for out in owners if out in inputs]
    if clashes:
        raise InputError("outputs must not clash (rename the images or pick another --out):\n  "
                         + "\n  ".join(clashes))


def _load(job: Job, size: int, mode: str) -> tuple[np.ndarray, np.ndarray] | str:
    """(original, fitted) image, or the reason it cannot be read."""
    try:
        rgb = read_photo(job.image)
    except PIL_ERRORS as exc:
        return f"{job.image}: cannot read image: {exc}"
    return rgb, fit_image(rgb, size, mode)


def predict_files(model: UNet, info: ModelInfo, jobs: Sequence[Job], device: torch.device, *,
                  batch_size: int = 8, overlay: bool = False, workers: int = 1,
                  progress: bool = True) -> tuple[int, list[str]]:
    """Write a palette mask (and an overlay) per job; returns (written, problems)."""
    problems: list[str] = []
    written = 0
    bar = tqdm(total=len(jobs), unit="img", desc="predict", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    with bar:
        loader = prefetch_batches(list(jobs), lambda j: _load(j, info.image_size, info.resize),
                                  batch_size, workers)
        for batch in loader:
            good = [(job, loaded) for job, loaded in batch if not isinstance(loaded, str)]
            for _, loaded in batch:
                if isinstance(loaded, str):
                    problems.append(loaded)
                    tqdm.write(f"skipped {loaded}", file=sys.stderr)
            if good:
                fitted = np.stack([loaded[1] for _, loaded in good])
                sizes = [loaded[0].shape[:2] for _, loaded in good]
                preds = predict_batch(model, info, fitted, sizes, device)
                for (job, (rgb, _)), pred in zip(good, preds, strict=True):
                    mask = pred.to("cpu", torch.uint8).numpy()
                    write_mask(job.mask, mask)
                    if overlay:
                        panels = overlay_panels(rgb, [mask], ["image", "prediction"],
                                                info.classes)
                        write_bytes(job.overlay, rgb_png_bytes(panels))
                    written += 1
            bar.update(len(batch))
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
           "image next to the prediction.\n\n"
           "An image that cannot be read is reported on stderr and skipped; the others are "
           "still written. Exit code: 0 when every image was written, 1 when some were "
           "skipped, 2 for a usage error (no images, unreadable model, clashing outputs).",
)
@click.argument("model_path", metavar="MODEL",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("images", metavar="IMAGES...", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the masks (created when missing).")
@click.option("--overlay", is_flag=True, help="Also write <name>.overlay.png: image | prediction.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Images per forward pass.")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
@click.option("--workers", default=0, type=click.IntRange(min=0),
              help="Threads decoding images [default: 0 = min(8, cores)].")
def command(model_path: Path, images: tuple[Path, ...], out_dir: Path, overlay: bool,
            batch_size: int, device: str, workers: int) -> int:
    """Segment IMAGES (files or folders) with MODEL (a models/model.pt from `segpipe train`)."""
    torch_device = pick_device(device, setting="--device")
    jobs = plan_jobs(images, out_dir)
    if not jobs:
        raise InputError(f"no image files found in {', '.join(map(str, images))} "
                         f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    model, info = load_model(model_path, map_location=torch_device)
    written, problems = predict_files(model, info, jobs, torch_device, batch_size=batch_size,
                                      overlay=overlay, workers=workers or default_workers())
    click.echo(f"wrote {written} mask(s) to {out_dir}", err=True)
    if problems:
        click.echo(f"skipped {len(problems)} of {len(jobs)} image(s):\n  "
                   + "\n  ".join(problems), err=True)
        return 1
    return 0
