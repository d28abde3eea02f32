"""`segpipe demo-data`: a deterministic synthetic sample, annotated as the real tools write it.

Scenes of shapes (circle, square, triangle, star) on textured, noisy backgrounds, each scene a
few frames of slowly moving objects (ids `scene03_000012`: frame 12 of scene 3), so the split's
groups mean something. Every image is painted from the very geometry written to its annotation,
drawn the way Labelme's converter draws it, so the masks `convert` makes are the true pixels.

Written as annotators leave it in `data/raw/`:
- Labelme 5.x JSON beside its image (JPEG or PNG; some scenes with `imageData` embedded):
  circles (centre + rim point), axis-aligned squares as `rectangle`, rotated squares as 4-point
  polygons, triangles and stars as polygons; a few files use an alias ("tri", "box") or a case
  variant ("Circle") of a class name.
- `labelimg/`: scenes annotated only with LabelImg Pascal VOC boxes. Boxes give exact masks only
  for axis-aligned rectangles, so those scenes hold axis-aligned squares only.
- A few images annotated with both tools (`<id>.xml` boxes for the squares, `<id>.json` polygons
  for the rest): one sample, boxes drawn first.
- One file per common defect (see `DEFECTS`), so the validation report has something to show;
  five of them are errors (about 2% of 300 files, well under `convert.max_error_fraction`).

Same arguments, byte-identical files: every random number comes from a numpy Generator seeded
with (seed, scene number).
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw

from pipeline.storage.files import write_bytes

#: the classes the sample is drawn with (params.yaml's `classes` must list exactly these)
CLASSES = ("background", "circle", "square", "triangle", "star")
#: the defects planted once each: name -> (severity convert should give, what the file has)
DEFECTS = {
    "unknown_label": ("error", "a misspelt label (e.g. 'cirle')"),
    "two_point_polygon": ("error", "an accidental polygon with 2 points"),
    "size_mismatch": ("error", "imageWidth/imageHeight of the full-resolution original"),
    "corrupt_json": ("error", "a JSON file cut short by a crashed save"),
    "missing_image": ("error", "imagePath names an image that is not there, no imageData"),
    "wrong_image_path": ("warning", "imagePath from an old export, imageData embedded"),
    "past_border": ("warning", "a triangle reaching past the image border"),
    "bow_tie": ("warning", "a triangle whose corner is clicked twisted (self-intersection)"),
    "no_shapes": ("warning", "a frame with nothing in view and no shapes"),
    "duplicate": ("warning", "the same frame saved again under another name"),
}
SIZES = ((128, 128), (160, 120))
Point = tuple[float, float]


@dataclass(frozen=True)
class DemoShape:
    """One annotated shape; `points` are what the file says and what the image is painted from."""

    cls: str  # class name (from CLASSES)
    label: str  # label text written to the file (an alias or case variant of cls, or cls)
    kind: str  # "polygon", "rectangle", "circle" (Labelme) or "box" (VOC, integer 1-based)
    points: tuple[Point, ...]  # Labelme frame; for "box": (xmin, ymin), (xmax, ymax) 1-based
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class DemoFrame:
    id: str  # sample id: path relative to the raw dir without extension
    scene: int
    width: int
    height: int
    ext: str  # "jpg" or "png"
    tool: str  # "labelme", "voc" or "both"
    embed: bool  # Labelme imageData embedded
    version: str  # Labelme version written
    shapes: tuple[DemoShape, ...]  # file order: later shapes are drawn over earlier ones


@dataclass(frozen=True)
class Style:
    """A scene's look: background colours, texture and clutter."""

    base: tuple[float, float, float]
    second: tuple[float, float, float]
    field: np.ndarray  # HxW in [0, 1], smooth texture
    grating: tuple[float, float, float]  # kx, ky, phase
    lines: tuple[tuple[float, float, float, float, int, tuple[int, int, int]], ...]
    noise: float


@dataclass(frozen=True)
class _Object:
    cls: str
    kind: str  # how it is annotated: circle | rectangle | rotated | polygon | box
    size: float  # radius (circle, star, triangle) or side (square)
    x: float
    y: float
    vx: float
    vy: float
    angle: float
    spin: float
    colour: tuple[int, int, int]
    ratios: tuple[float, ...]  # triangle vertex jitter


# ---------------------------------------------------------------- drawing (Labelme's algorithm)


def shape_mask(kind: str, points: Sequence[Point], width: int, height: int) -> np.ndarray:
    """Boolean HxW mask of one shape, drawn exactly as labelme2voc draws it (PIL, fill+outline).

    "box" is a VOC box (1-based inclusive corners) drawn as the rectangle the readers make of it.
    """
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    xy = [(float(x), float(y)) for x, y in points]
    if kind == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif kind in ("rectangle", "box"):
        (x0, y0), (x1, y1) = xy
        if kind == "box":
            x0, y0, x1, y1 = x0 - 1, y0 - 1, x1 - 1, y1 - 1
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    else:
        draw.polygon(xy, outline=1, fill=1)
    return np.asarray(image, dtype=bool)


def frame_mask(frame: DemoFrame) -> np.ndarray:
    """The class-index mask the frame's annotations rasterise to (boxes first, later wins)."""
    mask = np.zeros((frame.height, frame.width), dtype=np.uint8)
    for shape in _draw_order(frame.shapes):
        mask[shape_mask(shape.kind, shape.points, frame.width, frame.height)] = CLASSES.index(
            shape.cls
        )
    return mask


def _draw_order(shapes: Sequence[DemoShape]) -> list[DemoShape]:
    return [s for s in shapes if s.kind == "box"] + [s for s in shapes if s.kind != "box"]


def render(frame: DemoFrame, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Paint the frame: textured background, clutter lines, then the shapes in drawing order."""
    h, w = frame.height, frame.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kx, ky, phase = style.grating
    t = 0.6 * style.field[:h, :w] + 0.4 * (0.5 + 0.5 * np.sin(kx * xx + ky * yy + phase))
    base, second = np.array(style.base), np.array(style.second)
    light = rng.uniform(0.85, 1.15)
    bg = (base * (1 - t[..., None]) + second * t[..., None]) * light
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for x0, y0, x1, y1, width, colour in style.lines:  # clutter in the background's hues
        draw.line([(x0 * w, y0 * h), (x1 * w, y1 * h)], fill=colour, width=width)
    image = np.asarray(canvas, dtype=np.float32).copy()
    for shape in _draw_order(frame.shapes):
        mask = shape_mask(shape.kind, shape.points, w, h)
        shade = 1.0 + 0.15 * np.sin(0.09 * xx + 0.07 * yy + rng.uniform(0, 6.3))
        texture = rng.normal(0.0, 10.0, size=(h, w))
        paint = np.array(shape.colour, dtype=np.float32) * shade[..., None] + texture[..., None]
        image[mask] = paint[mask]
    image += rng.normal(0.0, style.noise, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, ext: str, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    if ext == "png":
        Image.fromarray(pixels).save(buffer, format="PNG")
    else:
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ---------------------------------------------------------------- geometry


def _regular(cx: float, cy: float, radius: float, angle: float, n: int) -> list[Point]:
    return [
        (cx + radius * math.cos(angle + 2 * math.pi * i / n),
         cy + radius * math.sin(angle + 2 * math.pi * i / n))
        for i in range(n)
    ]


def _star(cx: float, cy: float, radius: float, angle: float) -> list[Point]:
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.45
        a = angle + math.pi * i / 5
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def _round(points: Sequence[Point]) -> tuple[Point, ...]:
    return tuple((round(float(x), 2), round(float(y), 2)) for x, y in points)


def _extent(obj: _Object) -> float:
    """Distance from the centre to the farthest pixel the object covers."""
    if obj.cls == "square":
        return obj.size * (math.sqrt(0.5) if obj.kind == "rotated" else 0.5) + 1
    return obj.size * 1.1 + 1


def _object_shape(obj: _Object, x: float, y: float, angle: float) -> DemoShape:
    if obj.kind == "circle":
        rim = (x + obj.size * math.cos(angle), y + obj.size * math.sin(angle))
        points = _round([(x, y), rim])
    elif obj.kind == "rectangle":
        half = obj.size / 2
        points = _round([(x - half, y - half), (x + half, y + half)])
        if obj.ratios[0] > 1.0:  # dragged from the bottom-right corner, as people do
            points = points[::-1]
    elif obj.kind == "box":
        side = int(obj.size)
        x0, y0 = round(x - side / 2), round(y - side / 2)
        points = ((x0 + 1.0, y0 + 1.0), (float(x0 + side), float(y0 + side)))
    elif obj.cls == "square":
        points = _round(_regular(x, y, obj.size * math.sqrt(0.5), angle + math.pi / 4, 4))
    elif obj.cls == "star":
        points = _round(_star(x, y, obj.size, angle))
    else:  # triangle: roughly equilateral, as clicked by hand
        corners = _regular(x, y, obj.size, angle, 3)
        points = _round([(x + (px - x) * r, y + (py - y) * r)
                         for (px, py), r in zip(corners, obj.ratios, strict=True)])
    return DemoShape(obj.cls, obj.cls, obj.kind if obj.kind in ("circle", "rectangle", "box")
                     else "polygon", points, obj.colour)


def _bounce(start: float, velocity: float, steps: int, low: float, high: float) -> float:
    """Position after `steps` of straight motion reflected inside [low, high]."""
    if high <= low:
        return (low + high) / 2
    span = high - low
    p = (start - low + velocity * steps) % (2 * span)
    return low + (p if p <= span else 2 * span - p)


#: each class's typical colour (RGB); objects vary around it, as real classes do (dates are
#: brown, raccoons grey): appearance and outline together tell the classes apart
CLASS_COLOURS = {"circle": (215, 50, 50), "square": (50, 80, 215), "triangle": (235, 195, 35),
                 "star": (235, 235, 235)}


def _colour(rng: np.random.Generator, cls: str) -> tuple[int, int, int]:
    """The class's colour, varied by up to +-30 per channel."""
    c = np.clip(np.array(CLASS_COLOURS[cls]) + rng.integers(-30, 31, size=3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def _background(rng: np.random.Generator) -> np.ndarray:
    """A background colour far from every class colour (best of a few tries, fixed order)."""
    best, best_d = None, -1.0
    for _ in range(50):
        c = rng.uniform(30, 160, size=3)  # muted tones: real backgrounds rarely glow
        d = min(float(np.linalg.norm(c - np.array(a))) for a in CLASS_COLOURS.values())
        if d > best_d:
            best, best_d = c, d
        if d >= 130:
            break
    return best


def _style(rng: np.random.Generator, width: int, height: int) -> Style:
    base = _background(rng)
    second = np.clip(base + rng.normal(0, 30, size=3), 0, 255)
    grid = rng.random((height // 16 + 3, width // 16 + 3)).astype(np.float32)
    field = np.asarray(
        Image.fromarray(grid, mode="F").resize((width + 48, height + 48), Image.BICUBIC)
    )[24:24 + height, 24:24 + width]
    field = np.clip((field - field.min()) / max(float(np.ptp(field)), 1e-6), 0, 1)
    angle = rng.uniform(0, math.pi)
    freq = rng.uniform(0.15, 0.6)
    lines = tuple(
        (*(float(v) for v in rng.random(4)), int(rng.integers(1, 4)),
         tuple(int(v) for v in np.clip(base * rng.uniform(0.4, 1.6), 0, 255)))
        for _ in range(int(rng.integers(0, 4)))
    )
    return Style(tuple(base), tuple(second), field,
                 (freq * math.cos(angle), freq * math.sin(angle), rng.uniform(0, 6.3)),
                 lines, float(rng.uniform(4, 12)))


def _scene(seed: int, scene: int, n_frames: int, tool: str) -> tuple[list[DemoFrame], Style, int]:
    """Plan the frames of one scene; returns frames, the style and the scene's pixel seed."""
    rng = np.random.default_rng([seed, scene])
    width, height = SIZES[int(rng.integers(0, len(SIZES)))]
    ext = "png" if rng.random() < 0.25 else "jpg"
    embed = bool(rng.random() < 0.5) and tool != "voc"
    version = ("5.2.1", "5.4.1")[int(rng.integers(0, 2))]
    style = _style(rng, width, height)
    objects = []
    for _ in range(int(rng.integers(2, 6))):
        if tool == "voc" or (tool == "both" and rng.random() < 0.4):
            cls, kind = "square", "box"
        else:
            cls = ("circle", "square", "triangle", "star")[int(rng.integers(0, 4))]
            kind = {"circle": "circle", "triangle": "polygon", "star": "polygon"}.get(cls, "")
            if cls == "square":
                kind = "rectangle" if (tool == "both" or rng.random() < 0.5) else "rotated"
        size = float(rng.uniform(18, 32) if cls == "square" else rng.uniform(13, 24))
        objects.append(_Object(
            cls, kind, size, float(rng.uniform(0, width)), float(rng.uniform(0, height)),
            float(rng.normal(0, 2.0)), float(rng.normal(0, 2.0)),
            float(rng.uniform(0, 2 * math.pi)),
            0.0 if kind in ("rectangle", "box") else float(rng.normal(0, 0.08)),
            _colour(rng, cls), tuple(float(v) for v in rng.uniform(0.85, 1.15, size=3)),
        ))
    step = int(rng.integers(4, 20))
    frames = []
    for f in range(n_frames):
        shapes = []
        for obj in objects:
            margin = _extent(obj)
            x = _bounce(obj.x, obj.vx, f * step, margin, width - 1 - margin)
            y = _bounce(obj.y, obj.vy, f * step, margin, height - 1 - margin)
            shapes.append(_object_shape(obj, x, y, obj.angle + obj.spin * f * step))
        sample_id = f"scene{scene:02d}_{f * step:06d}"
        if tool == "voc":
            sample_id = f"labelimg/{sample_id}"
        frames.append(DemoFrame(sample_id, scene, width, height, ext, tool, embed, version,
                            tuple(shapes)))
    return frames, style, int(rng.integers(0, 2**31))


# ---------------------------------------------------------------- file writers


def labelme_json(frame: DemoFrame, image_path: str, image_data: bytes | None,
                 shapes: Sequence[DemoShape] | None = None,
                 size: tuple[int, int] | None = None) -> bytes:
    """The JSON Labelme 5.x saves (same keys, order and indent as labelme's LabelFile.save)."""
    shapes = frame.shapes if shapes is None else shapes
    width, height = size or (frame.width, frame.height)
    items = []
    for shape in shapes:
        item = {"label": shape.label, "points": [[x, y] for x, y in shape.points],
                "group_id": None, "description": "", "shape_type": shape.kind, "flags": {}}
        if frame.version >= "5.3":
            item["mask"] = None
        items.append(item)
    data = {
        "version": frame.version,
        "flags": {},
        "shapes": items,
        "imagePath": image_path,
        "imageData": None if image_data is None else base64.b64encode(image_data).decode("ascii"),
        "imageHeight": height,
        "imageWidth": width,
    }
    return json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")


def voc_xml(frame: DemoFrame, shapes: Sequence[DemoShape]) -> bytes:
    """The Pascal VOC XML LabelImg saves (tab-indented, absolute path from its machine)."""
    name = f"{Path(frame.id).name}.{frame.ext}"
    folder = Path(frame.id).parent.name or "shapes"
    lines = [
        "<annotation>",
        f"\t<folder>{folder}</folder>",
        f"\t<filename>{name}</filename>",
        f"\t<path>/home/annotator/datasets/shapes/{frame.id}.{frame.ext}</path>",
        "\t<source>",
        "\t\t<database>Unknown</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{frame.width}</width>",
        f"\t\t<height>{frame.height}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for shape in shapes:
        (xmin, ymin), (xmax, ymax) = shape.points
        truncated = int(xmin <= 1 or ymin <= 1 or xmax >= frame.width or ymax >= frame.height)
        lines += [
            "\t<object>",
            f"\t\t<name>{shape.label}</name>",
            "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{truncated}</truncated>",
            "\t\t<difficult>0</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{int(xmin)}</xmin>",
            f"\t\t\t<ymin>{int(ymin)}</ymin>",
            f"\t\t\t<xmax>{int(xmax)}</xmax>",
            f"\t\t\t<ymax>{int(ymax)}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _labelme_image_data(image_bytes: bytes, ext: str) -> bytes:
    """What Labelme embeds: the image decoded and re-saved by PIL (JPEG at PIL's default)."""
    with Image.open(io.BytesIO(image_bytes)) as image:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG" if ext == "png" else "JPEG")
    return buffer.getvalue()


# ---------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class DemoSummary:
    files: dict[str, bytes]  # path relative to the output dir -> bytes
    samples: dict[str, str]  # sample id -> "labelme" | "voc" | "labelme+voc"
    defects: dict[str, str]  # defect name -> sample id
    frames: dict[str, DemoFrame]  # sample id -> the frame as drawn (frame_mask gives its true mask)


def _relabel(shapes: Sequence[DemoShape], cls: str, label: str) -> tuple[DemoShape, ...]:
    return tuple(replace(s, label=label) if s.cls == cls else s for s in shapes)


def _plant_geometry(frame: DemoFrame, defect: str) -> DemoFrame:
    """Defects that change what is drawn: the image is painted from the changed geometry."""
    w, h = frame.width, frame.height
    if defect == "no_shapes":
        return replace(frame, shapes=())
    if defect == "past_border":  # a triangle whose right corner is 8 px past the border
        tri = ((w - 24.0, h / 2 - 14.0), (w + 8.0, h / 2), (w - 24.0, h / 2 + 14.0))
        shape = DemoShape("triangle", "triangle", "polygon", tri, (250, 250, 40))
        return replace(frame, shapes=(*frame.shapes, shape))
    if defect == "bow_tie":  # corner clicked as A2, A1 instead of A1, A2: a small twisted lobe
        a, b, c = np.array([w * 0.5, h * 0.2]), np.array([w * 0.8, h * 0.75]), np.array(
            [w * 0.2, h * 0.75])
        a1, a2 = a + 0.08 * (b - a), a + 0.08 * (c - a)
        points = _round([tuple(a2), tuple(b), tuple(c), tuple(a1)])
        shape = DemoShape("triangle", "triangle", "polygon", points, (30, 240, 250))
        return replace(frame, shapes=(*frame.shapes, shape))
    return frame


def build(n: int = 300, seed: int = 0, first_scene: int = 0, defects: bool = True) -> DemoSummary:
    """All files of the sample, in memory: `n` samples (ids) in scenes of 2-4 frames."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    plan_rng = np.random.default_rng([seed, 10**6 + first_scene])
    planted = defects and n >= 40
    n_normal = n - (1 if planted else 0)  # the duplicate is an extra id; others reuse frames
    scenes: list[tuple[list[DemoFrame], Style, int]] = []
    count, scene = 0, first_scene
    while count < n_normal:
        tool = "voc" if scene % 5 == 2 else "both" if scene % 10 == 3 else "labelme"
        size = int(plan_rng.integers(2, 5))
        size = min(size, n_normal - count)
        scenes.append(_scene(seed, scene, size, tool))
        count += size
        scene += 1

    frames = [(f, style, pixel_seed) for fs, style, pixel_seed in scenes for f in fs]
    # defects and label variants go to plain Labelme frames at fixed, spread-out positions
    plain = [i for i, (f, _, _) in enumerate(frames) if f.tool == "labelme"]
    names = list(DEFECTS)
    chosen: dict[int, str] = {}
    variants: dict[int, tuple[str, str]] = {}
    if planted:
        slots = [plain[(k * len(plain)) // (len(names) + 4)] for k in range(len(names) + 4)]
        for k, name in enumerate(names):
            chosen[slots[k]] = name
        for k, (cls, label) in enumerate((("triangle", "tri"), ("square", "box"),
                                          ("circle", "Circle"), ("triangle", "tri"))):
            start = plain.index(slots[len(names) + k])
            for i in plain[start:] + plain[:start]:  # the next plain frame showing that class
                if i not in chosen and i not in variants and any(
                        s.cls == cls for s in frames[i][0].shapes):
                    variants[i] = (cls, label)
                    break

    files: dict[str, bytes] = {}
    samples: dict[str, str] = {}
    placed: dict[str, str] = {}
    drawn: dict[str, DemoFrame] = {}
    for i, (frame, style, pixel_seed) in enumerate(frames):
        defect = chosen.get(i)
        if defect:
            frame = _plant_geometry(frame, defect)
            placed[defect] = frame.id
        if i in variants:
            frame = replace(frame, shapes=_relabel(frame.shapes, *variants[i]))
        rng = np.random.default_rng([seed, frame.scene, pixel_seed, i])
        image = encode(render(frame, style, rng), frame.ext)
        _write_frame(files, samples, frame, image, defect)
        drawn[frame.id] = frame
        if defect == "duplicate":  # the same frame saved again under a second name
            copy = replace(frame, id=f"{frame.id}_copy")
            _write_frame(files, samples, copy, image, None)
            drawn[copy.id] = copy
    return DemoSummary(files=dict(sorted(files.items())), samples=dict(sorted(samples.items())),
                       defects=placed, frames=dict(sorted(drawn.items())))


def _write_frame(files: dict[str, bytes], samples: dict[str, str], frame: DemoFrame, image: bytes,
                 defect: str | None) -> None:
    name = Path(frame.id).name
    image_file = f"{frame.id}.{frame.ext}"
    if frame.tool == "voc":
        files[image_file] = image
        files[f"{frame.id}.xml"] = voc_xml(frame, frame.shapes)
        samples[frame.id] = "voc"
        return
    boxes = [s for s in frame.shapes if s.kind == "box"]
    polygons = [s for s in frame.shapes if s.kind != "box"]
    if boxes:
        files[f"{frame.id}.xml"] = voc_xml(frame, boxes)
    samples[frame.id] = "labelme+voc" if boxes else "labelme"
    data = _labelme_image_data(image, frame.ext) if frame.embed else None
    image_path = f"{name}.{frame.ext}"
    size = None
    if defect == "unknown_label" and polygons:
        typo = {"circle": "cirle", "square": "sqaure", "triangle": "triangel", "star": "stra"}
        polygons[0] = replace(polygons[0], label=typo[polygons[0].cls])
    elif defect == "two_point_polygon":
        polygons.append(DemoShape("triangle", "triangle", "polygon",
                                  ((10.0, 10.0), (30.5, 12.25)), (0, 0, 0)))
    elif defect == "size_mismatch":  # annotated on the full-resolution original
        polygons = [replace(s, points=tuple((x * 2, y * 2) for x, y in s.points))
                    for s in polygons]
        size = (frame.width * 2, frame.height * 2)
    elif defect == "wrong_image_path":
        image_path = f"export_2023/{name}.{frame.ext}"
        data = _labelme_image_data(image, frame.ext)
    elif defect == "missing_image":
        data = None
    if defect not in ("wrong_image_path", "missing_image"):
        files[image_file] = image
    text = labelme_json(frame, image_path, data, polygons, size)
    if defect == "corrupt_json":
        text = text[: len(text) // 2]
    files[f"{frame.id}.json"] = text


def write(out_dir: Path, summary: DemoSummary) -> None:
    for rel, data in summary.files.items():
        write_bytes(out_dir / rel, data)


@click.command(name="demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", default=300, show_default=True, type=click.IntRange(min=1),
              help="Number of samples (annotated images) to write.")
@click.option("--seed", default=0, show_default=True, help="Random seed: same seed, same bytes.")
@click.option("--first-scene", default=0, show_default=True, type=click.IntRange(min=0),
              help="Number of the first scene; use a higher one to add a new batch of scenes "
                   "to an existing sample without clashing ids.")
@click.option("--defects/--no-defects", default=True, show_default=True,
              help="Plant one file per common annotation defect (needs --n 40 or more).")
@click.option("--if-empty", is_flag=True,
              help="Do nothing when OUT_DIR already holds files (for `make run`).")
def command(out_dir: Path, n: int, seed: int, first_scene: int, defects: bool,
            if_empty: bool) -> None:
    """Write a synthetic sample of shapes, annotated as Labelme and LabelImg write it, to OUT_DIR.

    Classes: background, circle, square, triangle, star (params.yaml's `classes`). Images are
    grouped in scenes (ids `sceneNN_FRAME`); about a fifth are annotated only with LabelImg
    VOC boxes (under labelimg/). With --defects, one file per common annotation problem is
    planted so `reports/validation.md` has something to show; 5 of them are rejected.
    """
    if if_empty and out_dir.is_dir() and any(out_dir.iterdir()):
        click.echo(f"{out_dir} already holds files: left as it is")
        return
    summary = build(n=n, seed=seed, first_scene=first_scene, defects=defects)
    write(out_dir, summary)
    kinds = Counter(summary.samples.values())
    click.echo(f"wrote {len(summary.samples)} samples ({len(summary.files)} files) to {out_dir}: "
               + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    for name, sample_id in sorted(summary.defects.items()):
        click.echo(f"  defect {name:<18} {DEFECTS[name][0]:<8} {sample_id}")
