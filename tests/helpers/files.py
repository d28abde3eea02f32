"""Tiny annotation and image files, written as the real tools write them, into a test's tmp_path."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def image_bytes(width: int = 8, height: int = 6, fmt: str = "PNG", orientation: int = 0) -> bytes:
    """A small solid image; `orientation` writes that EXIF orientation tag (JPEG)."""
    image = Image.new("RGB", (width, height), (10, 120, 200))
    buffer = io.BytesIO()
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, fmt, exif=exif)
    else:
        image.save(buffer, fmt)
    return buffer.getvalue()


def write_image(path: Path, width: int = 8, height: int = 6, orientation: int = 0) -> Path:
    """Write a small image; the format follows the suffix (.png, .jpg)."""
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(width, height, fmt, orientation))
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def mask_b64(width: int = 3, height: int = 2) -> str:
    """A base64 PNG of a bbox-sized boolean mask, as Labelme stores a mask shape."""
    buffer = io.BytesIO()
    Image.new("1", (width, height), 1).save(buffer, "PNG")
    return b64(buffer.getvalue())


def shape(label: str, kind: str | None, points: list[list[float]], **extra: Any) -> dict:
    """A Labelme shape dict; kind None leaves out shape_type (Labelme < 3.4)."""
    out: dict[str, Any] = {"label": label, "points": points}
    if kind is not None:
        out["shape_type"] = kind
    out.update(extra)
    return out


def labelme_doc(shapes: list[dict], image_path: str | None = "img.png", **extra: Any) -> dict:
    """A Labelme 5.x document; `extra` overrides or adds top-level keys."""
    doc: dict[str, Any] = {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": 6,
        "imageWidth": 8,
    }
    doc.update(extra)
    return doc


def write_json(path: Path, doc: Any, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json.dumps(doc, ensure_ascii=False).encode(encoding))
    return path


def voc_xml(
    filename: str | None = "img.jpg",
    objects: Sequence[tuple[Any, ...]] = (),
    size: tuple[Any, Any] | None = (8, 6),
    path: str | None = None,
    folder: str = "raw",
) -> str:
    """A LabelImg-style VOC XML; objects are (name, xmin, ymin, xmax, ymax)."""
    parts = ['<annotation verified="yes">', f"<folder>{folder}</folder>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    if path is not None:
        parts.append(f"<path>{path}</path>")
    parts.append("<source><database>Unknown</database></source>")
    if size is not None:
        parts.append(
            f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        )
    parts.append("<segmented>0</segmented>")
    for name, xmin, ymin, xmax, ymax in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>0</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts)


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (its pixel data is not valid)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge size (what a decompression bomb looks like)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def png_bytes(width: int, height: int, color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(width: int, height: int, orientation: int = 1, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def rect(label: str, x0: float, y0: float, x1: float, y1: float) -> dict:
    return {"label": label, "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle",
            "group_id": None, "flags": {}}


def labelme(path: Path, shapes: list[dict], width: int | None, height: int | None,
            image: bytes | None = None, image_path: str | None = None,
            version: str = "5.4.1", embed: bool = False) -> Path:
    """A Labelme JSON; `image` bytes are written beside it as <stem>.png unless embedded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if image is not None and not embed:
        image_path = image_path or f"{path.stem}.png"
        (path.parent / image_path).write_bytes(image)
    doc = labelme_doc(shapes, image_path, version=version, imageHeight=height,
                      imageWidth=width, imageData=b64(image) if embed and image else None)
    return write_json(path, doc)


def xany_shape(label: str, kind: str, points: list[list[float]], **extra: Any) -> dict:
    """A shape as X-AnyLabeling 2.x-4.x writes it (key order and extra keys included)."""
    out: dict[str, Any] = {"label": label, "score": None, "points": points, "group_id": None,
                           "description": "", "difficult": False, "shape_type": kind,
                           "flags": {}, "attributes": {}, "kie_linking": []}
    out.update(extra)
    return out


def xany_doc(shapes: list[dict], image_path: str = "img.png", width: int = 8,
             height: int = 6, version: str = "2.4.0") -> dict:
    """An X-AnyLabeling document: no imageData key at all, a top-level "text"."""
    return {"version": version, "flags": {}, "shapes": shapes, "imagePath": image_path,
            "imageHeight": height, "imageWidth": width, "text": ""}


def labelme_xml(filename: str, objects: Sequence[str], size: tuple[int, int] | None = (8, 6),
                folder: str = "") -> str:
    """A LabelMe 3.0 XML as CVAT / Datumaro write it; `objects` are <object> bodies."""
    parts = [f"<annotation><filename>{filename}</filename><folder>{folder}</folder>",
             "<source><sourceImage></sourceImage><sourceAnnotation>CVAT</sourceAnnotation>"
             "</source>"]
    if size is not None:
        parts.append(f"<imagesize><nrows>{size[1]}</nrows><ncols>{size[0]}</ncols></imagesize>")
    parts += [f"<object>{body}</object>" for body in objects]
    parts.append("</annotation>")
    return "\n".join(parts)


def labelme_xml_polygon(name: str, points: Sequence[tuple[float, float]], *, deleted: int = 0,
                        index: int = 0, box: bool = False) -> str:
    """One LabelMe XML <object> body with a <polygon> (a box with <type>bounding_box)."""
    pts = "".join(f"<pt><x>{x}</x><y>{y}</y></pt>" for x, y in points)
    kind = "<type>bounding_box</type>" if box else ""
    return (f"<name>{name}</name><deleted>{deleted}</deleted><verified>0</verified>"
            f"<occluded>no</occluded><date></date><id>{index}</id>{kind}"
            f"<parts><hasparts></hasparts><ispartof></ispartof></parts>"
            f"<polygon>{pts}<username></username></polygon><attributes></attributes>")


def write_mask_png(path: Path, array: np.ndarray, mode: str | None = None,
                   palette: Sequence[int] | None = None) -> Path:
    """Write a mask PNG from a uint8 array (H x W: grey or palette indices; H x W x 3|4:
    colours); `palette` makes it a palette PNG."""
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if palette is not None:
        image = image.convert("P") if image.mode != "P" else image
        image.putpalette(list(palette))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG")
    return path
