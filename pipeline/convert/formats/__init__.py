"""Annotation readers: one module per format, each turns a file into a Record plus Issues.

Public API (used by the convert stage):

- `find_annotations(raw_dir, masks)` lists the annotation files under a raw dir, sorted;
  `skipped_files(raw_dir, masks)` the files that look like annotations but are not read, as
  warnings for the report (`masks` is convert.masks).
- `read_annotation(path, raw_dir, masks)` reads one file into `(Record | None, issues)`; it
  never raises for a bad file. The record is None exactly when an issue is an error (the file
  is left out).
- `merge_records(records)` joins the records of one sample (boxes first, Labelme polygons last).

Readers never rasterise and never decode images; they resolve the image file (which must exist
inside the raw dir) or the embedded image bytes, and pass coordinates through in Labelme's
continuous 0-based pixel frame (see pipeline/records.py). Names are matched lexically
(`is_inside`); what is read must also resolve, symlinks followed, inside the raw dir or the
repo's DVC cache (`read_problem`; convert checks every annotation and image with it).

The small helpers below are shared by the reader modules (labelme, voc, yolo, masks).
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from pipeline.core.records import Issue, Record, Shape, is_error
from pipeline.storage.files import read_stamped
from pipeline.storage.images import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from pipeline.params import MaskSource

#: Name of LabelImg's class list that turns the .txt files beside and below it into YOLO labels.
CLASSES_TXT = "classes.txt"

#: Formats of box annotations; merged records draw these first, Labelme shapes over them.
#: Existing masks come before them all: an annotation file of the same sample draws over it.
BOX_FORMATS = ("voc", "yolo")
FIRST_FORMATS = ("masks",)

_READERS = {".json": "labelme", ".xml": "voc", ".txt": "yolo", ".png": "masks"}


# --------------------------------------------------------------------------- shared helpers


# The path helpers below work on strings (os.path), not Path objects: they run several times
# per annotation file, and pathlib's parsing was a visible share of the stage's time.


def _prefix(directory: str) -> str:
    """`directory` (absolute, normalised) as the prefix its descendants' paths start with."""
    return directory if directory.endswith(os.sep) else directory + os.sep


def rel_posix(path: Path | str, raw_dir: Path | str) -> str:
    """`path` relative to `raw_dir` in posix form (absolute paths compared, symlinks kept)."""
    target, top = os.path.abspath(path), os.path.abspath(raw_dir)
    prefix = _prefix(top)
    rel = target[len(prefix):] if target.startswith(prefix) else os.path.relpath(target, top)
    return rel if os.sep == "/" else rel.replace(os.sep, "/")


def sample_id(path: Path | str, raw_dir: Path | str) -> str:
    """Sample id: the annotation path relative to the raw dir, without its extension."""
    rel = rel_posix(path, raw_dir)
    head, slash, name = rel.rpartition("/")
    dot = name.rfind(".")
    if not name or name == "." or name == "..":
        raise ValueError(f"{rel!r} has an empty name")  # as PurePosixPath.with_suffix
    if 0 < dot < len(name) - 1:  # PurePosixPath's suffix rule: not leading, not trailing
        name = name[:dot]
    return f"{head}{slash}{name}"


def unusable_size(file: str, message: str) -> tuple[None, None, list[Issue]]:
    """A declared image size the reader cannot use: no size, and a bad_size warning (the
    image's own size is used instead)."""
    return None, None, [Issue(file, None, "bad_size", "warning", message)]


def reader_result(path: Path | str, raw_dir: Path | str, fmt: str, issues: list[Issue], *,
                  image_path: str | None, image_data: bytes | None, width: int | None,
                  height: int | None, shapes: Sequence[Shape],
                  version: str | None = None) -> tuple[Record | None, list[Issue]]:
    """What every reader returns: no record when any issue is an error, else the Record."""
    if is_error(issues):
        return None, issues
    record = Record(id=sample_id(path, raw_dir), annotation=rel_posix(path, raw_dir), format=fmt,
                    image_path=image_path, image_data=image_data, width=width, height=height,
                    shapes=tuple(shapes), version=version)
    return record, issues


def normalized(path: Path | str) -> Path:
    """Absolute form of `path` with `.` and `..` removed lexically (symlinks are kept)."""
    return Path(os.path.abspath(path))  # abspath normalises


def is_inside(path: Path | str, raw_dir: Path | str) -> bool:
    """True when `path`, its `..` parts removed, lies inside `raw_dir`.

    The test is lexical on purpose: a path written in an annotation cannot climb out with
    `..` or an absolute path, while symlinks the user placed inside the raw dir (e.g. DVC's
    symlink cache) are followed as the user intended.
    """
    target, top = os.path.abspath(path), os.path.abspath(raw_dir)
    return target == top or target.startswith(_prefix(top))


def read_problem(path: Path | str, raw_dir: Path | str) -> tuple[str, str] | None:
    """Why the file at `path` must not be read, as (check, reason), or None when it may be.

    It must resolve, symlinks followed, inside the raw dir or inside this repo's DVC cache
    (DVC may link the raw files into `.dvc/cache`): anything else is "outside_raw", so a link
    to a file elsewhere is never read, copied or quoted. A symlink loop, a dangling link or
    anything but a regular file (a FIFO would block its reader) is "read_error"."""
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not os.path.lexists(path):
            return "read_error", "must be a readable file, got no such file"
        what = "a symlink loop" if exc.errno == errno.ELOOP else "a dangling symlink" \
            if isinstance(exc, FileNotFoundError) else exc.strerror or str(exc)
        return "read_error", f"must be a readable file, got {what}"
    if not any(real == root or real.startswith(_prefix(root)) for root in allowed_roots(raw_dir)):
        return "outside_raw", ("must lie inside the raw dir (symlinks followed), got a link to "
                               f"{real}; it is not used")
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        return "read_error", f"must be a readable file, got {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
        return "read_error", f"must be a regular file, got {kind}"
    return None


def allowed_roots(raw_dir: Path | str) -> tuple[str, ...]:
    """The real paths a file read for `raw_dir` may resolve into: the raw dir, and the DVC
    cache (`.dvc/cache`) of the nearest enclosing repo that has a `.dvc` dir."""
    top = os.path.abspath(raw_dir)
    roots = [os.path.realpath(top)]
    here = top
    while True:
        if os.path.isdir(os.path.join(here, ".dvc")):
            cache = os.path.join(here, ".dvc", "cache")
            if os.path.isdir(cache):
                roots.append(os.path.realpath(cache))
            break
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    return tuple(roots)


def is_image_name(name: str) -> bool:
    """True when the file name ends with a known image suffix (any case)."""
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def is_foreign_absolute(text: str) -> bool:
    """True for an absolute path in posix or Windows form (`/x`, `C:\\x`, `\\\\server\\x`)."""
    return PurePosixPath(text).is_absolute() or bool(PureWindowsPath(text).anchor)


def find_image_by_stem(directory: Path, stem: str) -> Path | None:
    """The image `<stem>.<image suffix>` in `directory` (suffix in any case), else None."""
    for suffix in IMAGE_SUFFIXES:  # the usual spellings first: no directory listing
        for spelled in (suffix, suffix.upper()):
            candidate = directory / f"{stem}{spelled}"
            if candidate.is_file():
                return candidate
    if not directory.is_dir():
        return None
    found: dict[str, Path] = {}  # then any case, e.g. ".Jpg"
    for entry in sorted(directory.iterdir()):
        suffix = entry.suffix.lower()
        if entry.stem == stem and suffix in IMAGE_SUFFIXES and entry.is_file():
            found.setdefault(suffix, entry)
    for suffix in IMAGE_SUFFIXES:
        if suffix in found:
            return found[suffix]
    return None


def decode_text(raw: bytes) -> tuple[str | None, str | None]:
    """Decode annotation text: UTF-8 (with or without BOM), UTF-16 with BOM, else GB18030.

    Returns (text, encoding) where encoding is None for UTF-8 and the name of the fallback
    encoding otherwise (the caller warns about it); text is None when nothing decodes.
    """
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            return None, None
    try:
        return raw.decode("gb18030"), "gb18030"
    except UnicodeDecodeError:
        return None, None


def read_text(path: Path, file: str) -> tuple[str | None, list[Issue]]:
    """Read a text file, decoding as `decode_text` does; issues name `file`.

    `file` is `path` relative to the raw dir (as `rel_posix` gives it), so the raw dir is
    `path` without `file`'s parts; the file must be readable there (`read_problem`), else
    it is not read at all. A `file` that does not end `path` (outside the raw dir) is
    "outside_raw"."""
    raw_dir = _raw_dir_of(Path(path), file)
    problem = ("outside_raw", "must lie inside the raw dir, got a path outside it") \
        if raw_dir is None else read_problem(path, raw_dir)
    if problem is not None:
        return None, [Issue(file, None, problem[0], "error", f"{file} {problem[1]}")]
    try:
        raw, _ = read_stamped(path)
    except OSError as exc:
        return None, [Issue(file, None, "read_error", "error", f"cannot read {file}: {exc}")]
    text, encoding = decode_text(raw)
    if text is None:
        return None, [
            Issue(
                file,
                None,
                "encoding",
                "error",
                f"{file} must be UTF-8 (or GB18030/GBK) text, got bytes that decode as neither",
            )
        ]
    if encoding is not None:
        return text, [
            Issue(
                file,
                None,
                "encoding",
                "warning",
                f"{file} must be UTF-8, got {encoding}; read it as {encoding}",
            )
        ]
    return text, []


def _raw_dir_of(path: Path, file: str) -> Path | None:
    """The raw dir `path` was named from, given its raw-relative posix form `file`."""
    parts = [p for p in file.split("/") if p]
    if not parts or ".." in parts or len(path.parts) < len(parts) \
            or list(path.parts[len(path.parts) - len(parts):]) != parts:
        return None
    return Path(*path.parts[:len(path.parts) - len(parts)]) if len(path.parts) > len(parts) \
        else Path(".")


# --------------------------------------------------------------------------- public API

#: Largest JSON file whose content is looked at when the files are found (to tell a Labelme
#: annotation from a config file); larger ones are always read as annotations.
SNIFF_JSON_BYTES = 64 * 1024
#: Bytes of an XML file looked at to find its root element.
SNIFF_XML_BYTES = 4096
#: Keys only a Labelme annotation has: a JSON file with one of them (and no shapes) is a
#: broken annotation, reported, not a config file skipped.
_LABELME_KEYS = ("shapes", "imagePath", "imageData", "imageHeight", "imageWidth")
_COCO_KEYS = ("images", "annotations", "categories")
#: Folders never searched: macOS archive junk (AppleDouble "._x" copies of every file).
_JUNK_DIRS = ("__MACOSX",)


class Scan:
    """What `scan` found under a raw dir: the annotation files, and the files it left out
    with the reason (for the report)."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []  # (raw-relative posix path, os.walk dirpath)
        self.skipped: list[tuple[str, str]] = []  # (raw-relative posix path, reason)
        self.no_class_list: list[str] = []  # .txt beside an image, no YOLO class list


def find_annotations(raw_dir: Path, masks: Sequence[MaskSource] = ()) -> list[Path]:
    """All annotation files under `raw_dir`, sorted by their posix path relative to it.

    - `.json`: Labelme (and X-AnyLabeling) files. A JSON file of at most SNIFF_JSON_BYTES
      that is an object with none of Labelme's keys and is not COCO (a tool's config, a
      colour map) is not an annotation (`skipped_files` lists it).
    - `.xml`: Pascal VOC and LabelMe XML; one whose root is neither <annotation> nor
      <annotations> (CVAT, reported as such) is not an annotation.
    - `.txt`: YOLO labels: below a class list (classes.txt, obj.names, a data.yaml with
      names:) in its dir or an ancestor dir inside `raw_dir`, and with an image of the same
      stem beside it or in the Ultralytics images/ folder (see yolo.image_dirs). Other .txt
      files (README.txt, Darknet's train.txt, MOT's det.txt, labels whose image is missing)
      are not annotations; `classes.txt` itself never is.
    - `.png`: existing masks, only in the folders a `convert.masks` entry names.
    Hidden files and dirs (".name") and `__MACOSX/` are skipped.
    """
    return [Path(dirpath, rel.rpartition("/")[2]) for rel, dirpath in scan(raw_dir, masks).found]


def find_annotation_paths(raw_dir: Path, masks: Sequence[MaskSource] = ()) -> list[str]:
    """`find_annotations` as posix paths relative to `raw_dir` (what convert keys on)."""
    return [rel for rel, _ in scan(raw_dir, masks).found]


def skipped_files(raw_dir: Path, masks: Sequence[MaskSource] = ()) -> list[Issue]:
    """The files `find_annotations` left out that may look like annotations, as warnings for
    the report: one `skipped_file` per file (a JSON or XML file that is not an annotation, a
    .txt below a YOLO class list that is not a label or has no image), and one `no_class_list`
    for all the .txt files that look like YOLO labels but have no class list."""
    from pipeline.convert.formats import yolo

    found = scan(raw_dir, masks)
    issues = [Issue(rel, None, "skipped_file", "warning", f"{rel}: not read: {reason}")
              for rel, reason in found.skipped]
    labels = [rel for rel in found.no_class_list if _looks_like_labels(raw_dir, rel)]
    if labels:
        top = os.path.commonpath([rel.rpartition("/")[0] or "." for rel in labels]) or "."
        shown = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3
                                         else "")
        issues.append(Issue(top, None, "no_class_list", "warning",
                            f"{len(labels)} .txt files look like YOLO labels (an image of the "
                            f"same name, lines 'class cx cy w h') but no class list "
                            f"({yolo.CLASS_LIST_HINT}) is in their folder or above it inside "
                            f"the raw dir; ignored them: {shown}"))
    return issues


def scan(raw_dir: Path, masks: Sequence[MaskSource] = ()) -> Scan:
    """Walk `raw_dir` once and sort its files into annotations and skipped files."""
    from pipeline.convert.formats import masks as mask_format
    from pipeline.convert.formats import yolo

    listing = _listing(raw_dir)
    stems = {rel_dir: {_stem(n) for n in names if _is_image_file(n)}
             for rel_dir, (_, names) in listing.items()}
    class_dirs = _class_list_dirs(listing, yolo.class_list_name)
    result = Scan()
    for rel_dir, (dirpath, names) in listing.items():
        prefix = "" if rel_dir == "" else rel_dir + "/"
        mask_source = mask_format.source_for(rel_dir, masks) if masks else None
        for name in names:
            rel, suffix = prefix + name, _suffix(name)
            if suffix == ".json":
                _sort(result, rel, dirpath, _json_problem(os.path.join(dirpath, name), raw_dir))
            elif suffix == ".xml":
                _sort(result, rel, dirpath, _xml_problem(os.path.join(dirpath, name), raw_dir))
            elif suffix == ".txt" and name != CLASSES_TXT:
                has_image = any(_stem(name) in stems.get(d, ()) for d in yolo.image_dirs(rel_dir))
                if rel_dir in class_dirs:
                    _sort(result, rel, dirpath, "" if has_image else _txt_problem(
                        raw_dir, rel, rel_dir, class_dirs[rel_dir]))
                elif has_image:
                    result.no_class_list.append(rel)
            elif (suffix == ".png" and mask_source is not None
                  and mask_format.is_mask_name(name, mask_source[1])):
                result.found.append((rel, dirpath))
    result.found.sort()
    result.skipped.sort()
    result.no_class_list.sort()
    return result


def _listing(raw_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """raw-relative posix dir ("" = the raw dir) -> (dirpath as os.walk spells it, visible
    file names), hidden and junk dirs left out."""
    listing: dict[str, tuple[str, list[str]]] = {}
    for dirpath, dirnames, filenames in os.walk(raw_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _JUNK_DIRS)
        rel_dir = rel_posix(dirpath, raw_dir)
        listing["" if rel_dir == "." else rel_dir] = (
            dirpath, sorted(n for n in filenames if not n.startswith(".")))
    return listing


def _class_list_dirs(listing: dict[str, tuple[str, list[str]]],
                     class_list_name: Callable[[str, list[str]], str | None]) -> dict[str, str]:
    """raw-relative dir -> raw-relative path of the class list that governs its .txt files
    (its own, else its nearest ancestor's inside the raw dir)."""
    governing: dict[str, str] = {}
    for rel_dir in sorted(listing, key=lambda d: (d.count("/") if d else -1, d)):
        dirpath, names = listing[rel_dir]
        own = class_list_name(dirpath, names)
        if own is not None:
            governing[rel_dir] = f"{rel_dir}/{own}" if rel_dir else own
        elif rel_dir:
            parent = rel_dir.rpartition("/")[0]
            if parent in governing:
                governing[rel_dir] = governing[parent]
    return governing


def _sort(result: Scan, rel: str, dirpath: str, problem: str) -> None:
    if problem:
        result.skipped.append((rel, problem))
    else:
        result.found.append((rel, dirpath))


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""  # Path.suffix


def _stem(name: str) -> str:
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name  # Path.stem


def _is_image_file(name: str) -> bool:
    return _suffix(name) in IMAGE_SUFFIXES


def _peek(path: str, raw_dir: Path, limit: int) -> bytes | None:
    """The first `limit` bytes of a file that may be read (`read_problem`); None for one that
    must not be (a link out of the raw dir, a FIFO): the reader reports those."""
    if read_problem(path, raw_dir) is not None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def _json_problem(path: str, raw_dir: Path) -> str:
    """Why a JSON file is not an annotation, or "" when it is (or may be) one: only small
    files are looked at, and anything that does not parse is left to the reader to report."""
    raw = _peek(path, raw_dir, SNIFF_JSON_BYTES + 1)
    if raw is None or len(raw) > SNIFF_JSON_BYTES:
        return ""
    text, _ = decode_text(raw)
    if text is None or '"shapes"' in text:
        return ""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(data, dict) or any(k in data for k in (*_LABELME_KEYS, *_COCO_KEYS)):
        return ""
    keys = ", ".join(sorted(map(str, data))[:6]) or "none"
    return f"a JSON file that is not a Labelme annotation (no 'shapes'; keys: {keys})"


_XML_ROOT = re.compile(r"<([A-Za-z_][\w.\-:]*)")


def _xml_problem(path: str, raw_dir: Path) -> str:
    """Why an XML file is not an annotation (its root element), or "" when it may be one."""
    raw = _peek(path, raw_dir, SNIFF_XML_BYTES)
    if raw is None:
        return ""
    text, _ = decode_text(raw)
    if text is None:
        return ""
    text = re.sub(r"<\?.*?\?>|<!--.*?-->", "", text, flags=re.S)
    if "<!" in text.split(">", 1)[0]:
        return ""  # a DOCTYPE: the reader refuses it as unsafe
    found = _XML_ROOT.search(text)
    if found is None or found.group(1) in ("annotation", "annotations"):
        return ""
    return f"an XML file that is not an annotation (root <{found.group(1)}>, not <annotation>)"


def _txt_problem(raw_dir: Path, rel: str, rel_dir: str, classes: str) -> str:
    """Why a .txt below a YOLO class list is not read (it has no image)."""
    from pipeline.convert.formats import yolo

    where = " or ".join(repr(d or ".") for d in yolo.image_dirs(rel_dir))
    stem = _stem(rel.rpartition("/")[2])
    if _looks_like_labels(raw_dir, rel):
        return (f"a YOLO label (classes from {classes}) without an image: no {stem}.<jpg|png|"
                f"...> in {where}; skipped, not rejected")
    return (f"not a YOLO label file (no image {stem}.<jpg|png|...> in {where}, and not "
            f"'class cx cy w h' lines)")


def _looks_like_labels(raw_dir: Path, rel: str) -> bool:
    from pipeline.convert.formats import yolo

    raw = _peek(os.path.join(raw_dir, rel), raw_dir, SNIFF_JSON_BYTES)
    if raw is None:
        return False
    text, _ = decode_text(raw)
    return text is not None and yolo.looks_like_labels(text)


def read_annotation(path: Path, raw_dir: Path, masks: Sequence[MaskSource] = ()
                    ) -> tuple[Record | None, list[Issue]]:
    """Read one annotation file (format chosen by its suffix) into a Record and its issues.

    `masks`: convert.masks, for `.png` mask files. Never raises for a bad file: the record is
    None exactly when an issue is an error.
    """
    from pipeline.convert.formats import labelme, voc, yolo
    from pipeline.convert.formats import masks as mask_format

    path, raw_dir = Path(path), Path(raw_dir)
    reader = _READERS.get(path.suffix.lower())
    if reader == "labelme":
        return labelme.read_labelme(path, raw_dir)
    if reader == "voc":
        return voc.read_voc(path, raw_dir)
    if reader == "yolo":
        return yolo.read_yolo(path, raw_dir)
    if reader == "masks":
        return mask_format.read_mask(path, raw_dir, masks)
    file = rel_posix(path, raw_dir)
    return None, [
        Issue(
            file,
            None,
            "unknown_format",
            "error",
            f"{file}: annotation suffix must be one of .json, .xml, .txt (or .png in a "
            f"convert.masks folder), got {path.suffix!r}",
        )
    ]


def merge_records(records: Sequence[Record]) -> Record:
    """Join the records of one sample: box formats first, Labelme last (its shapes win).

    Shapes keep their per-file index and name their file in Shape.source. `annotation` is
    the sorted paths joined by ";", `format` the formats in drawing order joined by "+".
    The image comes from the first record (in drawing order) that has one; embedded data,
    the declared size and the version likewise. Raises ValueError for an empty list or
    records of different ids (a programming error, not a data problem).
    """
    if not records:
        raise ValueError("merge_records needs at least one record, got none")
    ids = sorted({r.id for r in records})
    if len(ids) != 1:
        raise ValueError(f"merge_records needs records of one sample id, got {ids}")
    if len(records) == 1:
        return records[0]
    ordered = sorted(records, key=lambda r: (r.format not in FIRST_FORMATS,
                                             r.format not in BOX_FORMATS, r.annotation))
    sized = [r for r in ordered if r.width is not None and r.height is not None]
    return Record(
        id=ids[0],
        annotation=";".join(sorted(r.annotation for r in ordered)),
        format="+".join(r.format for r in ordered),
        image_path=next((r.image_path for r in ordered if r.image_path is not None), None),
        image_data=next((r.image_data for r in ordered if r.image_data is not None), None),
        width=sized[0].width if sized else None,
        height=sized[0].height if sized else None,
        shapes=tuple(replace(s, source=r.annotation) for r in ordered for s in r.shapes),
        version=next((r.version for r in ordered if r.version is not None), None),
    )
