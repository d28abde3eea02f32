"""Overlays a person can read: class colours blended over the image, panels side by side.

Pure: arrays in, arrays out (PNG encoding is storage/images.rgb_png_bytes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.core.records import IGNORE
from pipeline.storage.masks import voc_palette


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
                   classes: Sequence[str], *, alpha: float = 0.5, max_size: int = 512,
                   boxes: Sequence[tuple[int, int, int, int]] = ()) -> np.ndarray:
    """Side-by-side panels: the image, then the image blended with each mask (VOC colours),
    each titled, scaled so its longer side is at most `max_size`, with a colour legend of the
    classes that occur below. `boxes` (x0, y0, x1, y1 in image pixels) are outlined on every
    panel (e.g. the regions a reviewer should look at). Returns H x W x 3 uint8."""
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
        for x0, y0, x1, y1 in boxes:  # magenta: not a VOC class colour of the first classes
            draw.rectangle((x + x0 * scale - 1, header + y0 * scale - 1, x + x1 * scale + 1,
                            header + y1 * scale + 1), outline=(255, 0, 255), width=2)
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
