"""Existing mask PNGs (convert.masks) -> Record: one Labelme-style `mask` shape per label.

A mask is never guessed: a PNG is a mask only inside a folder that a convert.masks entry
names (`masks:`, a raw-relative glob: `*` is any text within a folder name, `**` any number
of folders), and its name is `<image stem><suffix>.png`. Its image is `<image stem>.<any image
suffix>` in the folder `images:` names, each wildcard taking the text its counterpart matched
in `masks:` (`*_lab` <-> `*_img`: `test_lab/x.png` <-> `test_img/x.jpg`).

The pixel values are read as stored, never resampled: a palette PNG's index (or, with colour
keys, the index's palette colour), a grey PNG's level (8 or 16 bit; mode 1 as 0 / 255), an
RGB(A) PNG's colour (alpha dropped). `values:` maps each to a label (a class, an ignore label
or an alias): a value it does not list makes the file an error naming the values and their
pixel counts, and a mask whose size is neither the image's stored nor its EXIF-rotated size is
an error. Each label becomes one `mask` shape covering the image (bbox = the whole mask, PNG =
where the mask has one of its values), so validation and drawing are those of Labelme's mask
shapes, and a 1-pixel structure stays exactly 1 pixel.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.convert.formats import find_image_by_stem, is_inside, reader_result, rel_posix
from pipeline.core.records import Issue, Record, Shape
from pipeline.params import MaskSource, MaskValue
from pipeline.storage.images import PIL_ERRORS, ImageError, open_image

#: PNG modes a mask may have, and what a pixel value is in each.
GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "LA")
COLOUR_MODES = ("RGB", "RGBA")


# --------------------------------------------------------------------------- pairing


@lru_cache(maxsize=256)
def _glob_regex(glob: str) -> re.Pattern[str]:
    """A folder glob as a regex over raw-relative posix dir paths; one group per wildcard."""
    parts = glob.split("/")
    pieces = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            pieces.append("(.*)" if last else "((?:[^/]+/)*)")
            continue
        text = "".join("([^/]*)" if piece == "*" else re.escape(piece)
                       for piece in re.split(r"(\*)", re.sub(r"\*+", "*", part)) if piece)
        pieces.append(text + ("" if last else "/"))
    return re.compile("".join(pieces))


def _substitute(glob: str, captured: Sequence[str]) -> str:
    """`glob` with each wildcard replaced by the text its counterpart captured."""
    texts = iter(captured)
    parts = glob.split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":  # its text ends with "/" unless it is the last part
            out.append(next(texts, ""))
            continue
        piece = re.sub(r"\*+", lambda _: next(texts, ""), part)
        out.append(piece + ("" if last else "/"))
    return "".join(out).strip("/")


def source_for(rel_dir: str, sources: Sequence[MaskSource]
               ) -> tuple[int, MaskSource, str] | None:
    """(entry number, entry, image dir) of the first convert.masks entry whose `masks`
    glob matches the raw-relative dir `rel_dir` ("" or "." = the raw dir), else None."""
    rel = "" if rel_dir == "." else rel_dir
    for i, source in enumerate(sources):
        found = _glob_regex(source.masks).fullmatch(rel)
        if found is not None:
            return i, source, _substitute(source.images, found.groups())
    return None


def is_mask_name(name: str, source: MaskSource) -> bool:
    """True for a visible `<stem><suffix>.png` (".png" in any case, the suffix as given)."""
    if name.startswith(".") or not name.lower().endswith(".png"):
        return False
    stem = name[:-4]
    return len(stem) > len(source.suffix) and stem.endswith(source.suffix)


# --------------------------------------------------------------------------- the reader


def read_mask(path: Path, raw_dir: Path, sources: Sequence[MaskSource]
              ) -> tuple[Record | None, list[Issue]]:
    """Read one existing mask PNG; the record is None exactly when an issue is an error."""
    file = rel_posix(path, raw_dir)
    matched = source_for(rel_posix(path.parent, raw_dir), sources)
    if matched is None or not is_mask_name(path.name, matched[1]):
        return None, [Issue(file, None, "unknown_format", "error",
                            f"{file}: a .png is read only as a mask in a folder that "
                            "convert.masks names, got none that names this one")]
    entry, source, image_dir = matched
    where = (f"convert.masks entry {entry} (masks {source.masks!r} -> images "
             f"{source.images!r})")
    image, issues = _image_of(path, raw_dir, file, source, image_dir, where)
    if image is None:
        return None, issues
    mask, size, issues = _decode(path, raw_dir, file, image, where)
    if mask is None or size is None:
        return None, issues
    shapes, issues = _shapes(mask, file, source, where)
    return reader_result(path, raw_dir, "masks", issues, image_path=rel_posix(image, raw_dir),
                         image_data=None, width=size[0], height=size[1], shapes=shapes)


def _image_of(path: Path, raw_dir: Path, file: str, source: MaskSource, image_dir: str,
              where: str) -> tuple[Path | None, list[Issue]]:
    """Step 1: the mask's image, `<stem>.<image suffix>` in the paired folder."""
    stem = path.name[:-4][: len(path.name) - 4 - len(source.suffix)]
    directory = Path(raw_dir, image_dir) if image_dir else Path(raw_dir)
    found = find_image_by_stem(directory, stem) if is_inside(directory, raw_dir) else None
    if found is not None and is_inside(found, raw_dir) and found != path:
        return found, []
    return None, [Issue(file, None, "image_missing", "error",
                        f"{file}: the mask's image must exist as {stem}.<jpg|png|...> in "
                        f"{image_dir or '.'!r} ({where}), got none")]


def _decode(path: Path, raw_dir: Path, file: str, image: Path, where: str
            ) -> tuple[Image.Image | None, tuple[int, int] | None, list[Issue]]:
    """Step 2: the mask decoded (never resampled), its size checked against the image's."""
    from pipeline.convert.formats.yolo import image_size

    try:
        data = path.read_bytes()
        with open_image(data) as opened:
            opened.load()
            mask = opened.copy() if opened.format == "PNG" else None
            fmt = opened.format
    except OSError as exc:
        return None, None, [Issue(file, None, "read_error", "error", f"cannot read {file}: {exc}")]
    except ImageError as exc:
        return None, None, [Issue(file, None, exc.check, "error", f"{file}: mask {exc}")]
    except PIL_ERRORS as exc:
        return None, None, [Issue(file, None, "image_corrupt", "error",
                                  f"{file}: mask does not decode: {exc}")]
    if mask is None:
        return None, None, [Issue(file, None, "mask_format", "error",
                                  f"{file}: a mask must be a PNG (lossless), got {fmt}")]
    image_file = rel_posix(image, raw_dir)
    try:
        with Image.open(image) as opened_image:
            raw_size = opened_image.size
        rotated = image_size(image)
    except PIL_ERRORS as exc:
        return None, None, [Issue(file, None, "image_corrupt", "error",
                                  f"{file}: image {image_file} must be a readable image, got "
                                  f"{exc}")]
    if mask.size not in (raw_size, rotated):
        return None, None, [Issue(file, None, "mask_size", "error",
                                  f"{file}: the mask must be the size of its image "
                                  f"{image_file} ({raw_size[0]}x{raw_size[1]}), got "
                                  f"{mask.size[0]}x{mask.size[1]} ({where})")]
    return mask, mask.size, []


def _pixel_values(mask: Image.Image, colours: bool) -> tuple[np.ndarray | None, str]:
    """The mask's pixel values as a 2-D array: indices / grey levels, or colours packed as
    R * 65536 + G * 256 + B; or (None, why) for a mode that cannot be read that way."""
    mode = mask.mode
    if mode == "P":
        index = np.asarray(mask)
        if not colours:
            return index, ""
        palette = np.array(mask.getpalette() or [], dtype=np.int64).reshape(-1, 3)
        table = np.zeros(256, np.int64)
        table[: len(palette)] = palette[:, 0] * 65536 + palette[:, 1] * 256 + palette[:, 2]
        return table[index], ""
    if mode in GREY_MODES:
        grey = np.asarray(mask.convert("L") if mode == "1" else mask)
        grey = grey[..., 0] if grey.ndim == 3 else grey
        return (grey.astype(np.int64) * 65793 if colours else grey), ""
    if mode in COLOUR_MODES:
        rgb = np.asarray(mask)[..., :3].astype(np.int64)
        if colours:
            return rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2], ""
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0], ""
        return None, (f"an {mode} mask with colours must have colour keys ('R,G,B') in "
                      f"values, got integer keys")
    return None, f"mode P, L, I, 1, LA, RGB or RGBA, got mode {mode}"


def _shapes(mask: Image.Image, file: str, source: MaskSource, where: str
            ) -> tuple[list[Shape], list[Issue]]:
    """Step 3: every pixel value mapped to its label; one mask shape per label."""
    values, problem = _pixel_values(mask, source.colours)
    if values is None:
        return [], [Issue(file, None, "mask_format", "error", f"{file}: a mask must be {problem}")]
    found, counts = np.unique(values, return_counts=True)
    mapping = {_packed(key): label for key, label in source.values}
    unknown = [(int(v), int(c)) for v, c in zip(found, counts, strict=True)
               if int(v) not in mapping]
    if unknown:
        unknown.sort(key=lambda vc: -vc[1])
        shown = ", ".join(f"{_show(v, source.colours)} in {c} px" for v, c in unknown[:8])
        more = f" and {len(unknown) - 8} more values" if len(unknown) > 8 else ""
        listed = ", ".join(_show(_packed(k), source.colours) for k, _ in source.values)
        return [], [Issue(file, None, "mask_values", "error",
                          f"{file}: every pixel value must be listed in the values of {where}, "
                          f"got {shown}{more} not listed (listed: {listed})")]
    labels: dict[str, list[int]] = {}
    for value in found:
        labels.setdefault(mapping[int(value)], []).append(int(value))
    height, width = values.shape
    shapes = []
    for index, (label, members) in enumerate(labels.items()):
        inside = np.isin(values, members)
        shapes.append(Shape(label, "mask", ((0.0, 0.0), (width - 1.0, height - 1.0)), index,
                            mask_png=_binary_png(inside)))
    return shapes, []


def _packed(value: MaskValue) -> int:
    if isinstance(value, tuple):
        return value[0] * 65536 + value[1] * 256 + value[2]
    return value


def _show(value: int, colours: bool) -> str:
    if not colours:
        return str(value)
    return f"({value >> 16}, {(value >> 8) & 255}, {value & 255})"


def _binary_png(inside: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(inside).save(buffer, "PNG")  # mode 1: 1 bit per pixel, lossless
    return buffer.getvalue()
