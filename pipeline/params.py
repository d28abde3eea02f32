"""params.yaml -> frozen dataclasses, one per section, every value checked once, here.

Every field has a default, so a section may be left out; an unknown or mistyped key is an
error naming it and the closest known key; a value of the wrong type or out of its range is
an error saying "must be X, got Y". All problems are collected and reported at once. Stages
take only the section they need. `params_option` is the `--params` option every command shares.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import reprlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from pipeline.errors import ParamsError

LOSSES = ("ce", "dice", "ce_dice")
UPSAMPLE_MODES = ("bilinear", "transpose")
AMP_MODES = ("auto", "bf16", "off")
SWITCHES = ("auto", "on", "off")
#: convert.difficult: objects flagged difficult are drawn as their class, or as ignore (255).
DIFFICULT_MODES = ("class", "ignore")
#: convert.undrawable: a shape that cannot be drawn rejects its file, or its bounding box is
#: drawn as ignore (255) and the rest of the file is converted.
UNDRAWABLE_MODES = ("error", "ignore")
#: Most pixel values a uint8 mask has for classes: 0..254 (255 is ignore).
MAX_CLASSES = 254
#: Most YAML nodes params.yaml may expand to (anchors and aliases included): a guard
#: against alias bombs, far above any real params file.
MAX_YAML_NODES = 100_000


def _range(default: Any, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> Any:
    """A field whose value must lie in [low, high] (an end left out is unbounded)."""
    return field(default=default, metadata={"range": (low, high, low_open, high_open)})


def _auto(kind: type, low: float | None = None, high: float | None = None, *,
          low_open: bool = False) -> Any:
    """A field that is "auto" (decided by the training plan from the data) or a number of
    `kind` in [low, high]."""
    return field(default="auto", metadata={"range": (low, high, low_open, False),
                                           "auto": kind})


def _choice(default: str, choices: tuple[str, ...], switch: dict[bool, str] | None = None
            ) -> Any:
    """A field that is one of `choices`; `switch` maps YAML's true/false to a choice (YAML
    reads an unquoted `on`/`off` as a boolean)."""
    return field(default=default, metadata={"choices": choices, "switch": switch or {}})


_ON_OFF = {True: "on", False: "off"}


@dataclass(frozen=True)
class Labels:
    """The declared classes: list index = pixel value; index 0 is the background."""

    classes: tuple[str, ...] = ("background",)
    ignore_labels: tuple[str, ...] = ("__ignore__",)
    aliases: dict[str, str] = field(default_factory=dict)


#: A pixel value of an existing mask: a palette index or grey level, or an (R, G, B) colour.
MaskValue = int | tuple[int, int, int]


@dataclass(frozen=True)
class MaskSource:
    """One entry of convert.masks: existing mask PNGs in the folders matching `masks`, each
    paired with the image of the same name in the folder `images` (raw-relative globs;
    each `*` / `**` in `images` takes the text its counterpart matched in `masks`), the mask
    file named `<image stem><suffix>.png`; `values` maps pixel values to labels."""

    masks: str
    images: str
    values: tuple[tuple[MaskValue, str], ...]
    suffix: str = ""

    @property
    def colours(self) -> bool:
        """True when the values are (R, G, B) colours, False for indices / grey levels."""
        return any(isinstance(key, tuple) for key, _ in self.values)


@dataclass(frozen=True)
class ConvertParams:
    raw_dir: str = "data/raw"
    out_dir: str = "data/prepared"
    reports_dir: str = "reports"
    strict: bool = False  # any rejected file fails the stage
    max_error_fraction: float = _range(0.2, 0.0, 1.0)  # fail when more files are rejected
    max_repair_change: float = _range(0.05, 0.0, 1.0)  # reject a polygon whose repair changes more
    line_width: int = _range(10, 1, 1000)  # Labelme's line/linestrip width in pixels
    point_radius: int = _range(5, 0, 1000)  # Labelme's point disc radius in pixels
    jobs: int = _range(0, 0, 1024)  # worker processes; 0 = all cores
    difficult: str = _choice("class", DIFFICULT_MODES)  # objects flagged difficult
    undrawable: str = _choice("error", UNDRAWABLE_MODES)  # shapes that cannot be drawn
    # existing mask PNGs and how they pair with their images (see MaskSource)
    masks: tuple[MaskSource, ...] = field(default=(), metadata={"parse": "masks"})


@dataclass(frozen=True)
class SplitParams:
    splits_path: str = "data/splits/splits.csv"
    report_path: str = "reports/split.json"
    val_fraction: float = _range(0.2, 0.0, 1.0, low_open=True, high_open=True)
    group_pattern: str | None = None  # regex with a named group "group", applied to the id
    benchmark: str | None = None  # text file of ids never trained on (a fixed eval set)
    seed: int = _range(0, 0)
    version: int = 1  # bump to reshuffle everything deliberately
    # largest allowed |val image share - val_fraction| per class; a class too small for it
    # may deviate by the share of its largest group instead (a group is never cut)
    tolerance: float = _range(0.05, 0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class TrainParams:
    model_path: str = "models/model.pt"
    checkpoint_path: str = "models/checkpoint.pt"
    cache_dir: str = "data/cache"
    log_dir: str = "reports/train"
    plan_path: str = "reports/plan.json"  # the plan of the last run, with the fingerprint
    # the plan (learn/plan.py): "auto" = derived from the dataset fingerprint and the device
    scale: float | str = _auto(float, 0.0, 8.0, low_open=True)  # one resize factor for all
    long_side: int | str = _auto(int, 8, 65536)  # or: every image's long side to this (px)
    patch: int | str = _auto(int, 8, 4096)  # square crop size (px)
    batch_size: int | str = _auto(int, 1, 4096)  # crops per step and process
    steps: int | str = _auto(int, 1, 10_000_000)  # optimiser steps
    depth: int | str = _auto(int, 1, 8)  # U-Net down-sampling steps
    base_width: int | str = _auto(int, 1, 512)  # channels of the first level; doubles per level
    fg_share: float | str = _auto(float, 0.0, 1.0)  # share of crops centred on a class pixel
    ema: float | str = _auto(float, 0.0, 1.0)  # EMA decay of the weights (0 = off)
    val_every: int | str = _auto(int, 1, 10_000_000)  # steps between val scores + checkpoints
    upsample: str = _choice("bilinear", UPSAMPLE_MODES)
    loss: str = _choice("ce_dice", LOSSES)
    class_weights: tuple[float, ...] | None = _range(None, 0.0, 1e6)  # each weight
    lr: float = _range(3e-3, 0.0, 10.0, low_open=True)
    weight_decay: float = _range(1e-4, 0.0, 1.0)
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    scale_min: float = _range(0.75, 0.1, 10.0)
    scale_max: float = _range(1.25, 0.1, 10.0)
    jitter: float = _range(0.2, 0.0, 1.0)  # brightness/contrast/saturation strength
    hue: float = _range(0.05, 0.0, 0.5)  # largest hue shift (a turn of the colour wheel = 1)
    blur: float = _range(0.2, 0.0, 1.0)  # share of crops blurred (Gaussian, sigma 0.5-1.5 px)
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), "cuda", "cuda:N", "mps" or "cpu"
    amp: str = _choice("auto", AMP_MODES, {True: "bf16", False: "off"})
    channels_last: str = _choice("auto", SWITCHES, _ON_OFF)
    compile: bool = False
    threads: int = _range(0, 0, 1024)  # torch CPU threads; 0 = all cores
    seed: int = _range(0, 0)
    grad_accum: int = _range(1, 1, 1024)  # micro-batches per optimiser step
    warmup: float = _range(0.05, 0.0, 1.0, high_open=True)  # share of steps with LR warm-up
    resume: bool = True  # continue from checkpoint_path when its data and config match


@dataclass(frozen=True)
class EvaluateParams:
    metrics_path: str = "reports/metrics.json"
    images_path: str = "reports/images.json"  # per image: split group, intersection, union
    out_dir: str = "reports/eval"
    batch_size: int = _range(16, 1, 4096)
    worst_k: int = _range(8, 0, 1000)  # overlays for the k worst val images
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N" or "mps"
    workers: int = _range(0, 0, 256)  # threads decoding images; 0 = min(8, cores)
    overlay_size: int = _range(512, 16, 8192)  # longest side of each overlay panel in pixels
    overlay_alpha: float = _range(0.5, 0.0, 1.0)  # opacity of the class colours over the image


@dataclass(frozen=True)
class ReviewParams:
    out_dir: str = "reports/review"  # review.csv, review.md, overlays/
    metrics_path: str = "reports/review.json"  # suspects per kind (a DVC metric)
    work_dir: str = "data/review"  # the fold models, their caches and checkpoints
    folds: int = _range(3, 2, 20)  # models, each trained on all folds but one
    steps: int | str = _auto(int, 1, 10_000_000)  # per fold model; auto = step_share x plan
    step_share: float = _range(0.25, 0.01, 1.0)  # of the train plan's steps, per fold model
    confidence: float = _range(0.5, 0.5, 1.0)  # a disagreement counts when the model is this sure
    min_area: float = _range(0.2, 0.0, 100.0)  # smallest region, share of a typical object
    boundary_px: int = _range(2, 0, 100)  # band along annotated edges: boundary suspects
    threshold: float = _range(0.1, 0.0, 1.0)  # suspects scoring less are not listed
    temperature: float = _range(0.1, 0.001, 10.0)  # of the softmin image score
    top: int = _range(20, 0, 10_000)  # suspects shown in review.md with overlays
    seed: int = _range(0, 0)


@dataclass(frozen=True)
class GateParams:
    max_drop: float = _range(0.02, 0.0, 1.0)  # largest allowed drop of mIoU
    max_class_drop: float = _range(0.05, 0.0, 1.0)  # largest allowed drop of any class's IoU
    # fail only on drops past the threshold whose bootstrap interval also excludes zero
    significant: bool = False
    confidence: float = _range(0.95, 0.5, 1.0, high_open=True)  # of the bootstrap interval
    resamples: int = _range(2000, 100, 100_000)  # bootstrap resamples of the eval set's groups
    seed: int = _range(0, 0)  # the bootstrap's random seed: same seed, same interval


@dataclass(frozen=True)
class ReportParams:
    path: str = "reports/report.html"  # the self-contained HTML report
    review_dir: str = "reports/review"  # review.csv and overlays/ of the label-review stage
    thumbnails: int = _range(40, 0, 1000)  # most files with problems drawn as a thumbnail
    thumbnail_size: int = _range(200, 32, 1024)  # longest side of a thumbnail (px)
    max_issues: int = _range(500, 1, 1_000_000)  # most validation problems listed
    review_rows: int = _range(20, 0, 10_000)  # rows of the label-review queue shown


@dataclass(frozen=True)
class Params:
    labels: Labels
    convert: ConvertParams
    split: SplitParams
    train: TrainParams
    evaluate: EvaluateParams
    gate: GateParams
    report: ReportParams
    review: ReviewParams = field(default_factory=ReviewParams)
    source: str = "params.yaml"  # the file they came from, for messages


_SECTIONS: dict[str, type] = {
    "convert": ConvertParams,
    "split": SplitParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "gate": GateParams,
    "review": ReviewParams,
    "report": ReportParams,
}
_LABEL_KEYS = tuple(f.name for f in dataclasses.fields(Labels))


def _short(value: Any) -> str:
    """repr of a value cut to a readable length (never formats a huge value in full)."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = 60
    short.maxlist = short.maxtuple = short.maxdict = 6
    short.maxlevel = 2
    return short.repr(value)


def _clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters (a YAML error quotes the offending line)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml; a missing file gives all defaults only if `path` does not exist."""
    path = Path(path)
    raw: Any = {}
    if path.exists():
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=BoundedLoader) or {}
        except yaml.YAMLError as exc:
            raise ParamsError(f"{path}: not valid YAML: {_clip(str(exc), 300)}") from None
        except RecursionError:  # the composer recurses per nesting level
            raise ParamsError(f"{path}: not valid YAML: must nest at most a few hundred "
                              "levels deep, got deeper") from None
        except UnicodeDecodeError:
            raise ParamsError(f"{path}: must be UTF-8 text") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, source=str(path))


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    known = (*_LABEL_KEYS, *_SECTIONS)
    problems = [_unknown(source, str(key), known) for key in raw if key not in known]
    labels_raw = {k: raw[k] for k in _LABEL_KEYS if k in raw}
    sections: dict[str, Any] = {}
    try:
        labels = _build(Labels, labels_raw, source, "")
        problems += _check_labels(labels, source)
    except ParamsError as exc:
        problems.append(str(exc))
        labels = Labels()
    for name, cls in _SECTIONS.items():
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            problems.append(f"{source}: {name} must be a mapping, got {type(value).__name__}")
            value = {}
        try:
            sections[name] = _build(cls, value, source, f"{name}.")
        except ParamsError as exc:
            problems.append(str(exc))
            sections[name] = cls()
    problems += [f"{source}: {p}" for p in _cross_checks(labels, sections)]
    if problems:
        raise ParamsError("\n".join(problems))
    return Params(labels=labels, **sections, source=source)


def params_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The `--params` option every command shares; the command receives `params: Params`."""

    @click.option("--params", "params_path", default="params.yaml", show_default=True,
                  type=click.Path(dir_okay=False),
                  help="params.yaml to read (paths in it are relative to the current "
                       "directory).")
    @functools.wraps(command)
    def wrapper(params_path: str, **kwargs: Any) -> Any:
        return command(params=load_params(params_path), **kwargs)

    return wrapper


# ------------------------------------------------------------------------------ checks


def _check_labels(labels: Labels, source: str) -> list[str]:
    problems = []
    classes = labels.classes
    if len(classes) < 2:
        problems.append(f"classes must list the background and at least one class, "
                        f"got {_short(list(classes))}")
    if len(set(classes)) != len(classes):
        dup = sorted({c for c in classes if classes.count(c) > 1})
        problems.append(f"classes must be unique, got duplicates {_short(dup)}")
    if len(classes) > MAX_CLASSES:
        problems.append(f"classes must be fewer than 255 (a uint8 mask holds 0..254; 255 is "
                        f"ignore), got {len(classes)}")
    blank = [i for i, c in enumerate(classes) if not c.strip()]
    if blank:
        problems.append(f"classes must be non-empty names, got an empty one at index {blank}")
    both = sorted(set(classes) & set(labels.ignore_labels))
    if both:
        problems.append(f"classes must not be ignore labels (those are drawn as 255), got "
                        f"{_short(both)} in both classes and ignore_labels")
    for alias, target in labels.aliases.items():
        if target not in classes and target not in labels.ignore_labels:
            problems.append(f"aliases.{_short(alias)[1:-1]} must name a class, got "
                            f"{_short(target)}")
    return [f"{source}: {p}" for p in problems]


def _cross_checks(labels: Labels, sections: dict[str, Any]) -> list[str]:
    """Checks between fields (each field's own range is checked by `_build`)."""
    problems = []
    train: TrainParams = sections["train"]
    if train.patch != "auto" and train.depth != "auto" and train.patch < 2 ** train.depth:
        problems.append(f"train.patch must be >= 2**depth = {2 ** train.depth}, got "
                        f"{train.patch}")
    if train.scale != "auto" and train.long_side != "auto":
        problems.append("train.scale and train.long_side must not both be set (one resizes "
                        "every image by a factor, the other to a long side), got "
                        f"{train.scale} and {train.long_side}")
    if train.scale_min > train.scale_max:
        problems.append(f"train.scale_min must be <= train.scale_max, got {train.scale_min} > "
                        f"{train.scale_max}")
    weights = train.class_weights
    if weights is not None and len(weights) != len(labels.classes):
        problems.append(f"train.class_weights must have one weight per class "
                        f"({len(labels.classes)}), got {len(weights)}")
    convert: ConvertParams = sections["convert"]
    known = {*labels.classes, *labels.ignore_labels, *labels.aliases}
    for i, source in enumerate(convert.masks):
        for value, label in source.values:
            if label not in known:
                close = difflib.get_close_matches(label, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"convert.masks entry {i}: values.{value} must name a class, "
                                f"an ignore label or an alias, got {_short(label)}{hint}")
    pattern = sections["split"].group_pattern
    if pattern is not None:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            problems.append(f"split.group_pattern must be a valid regex, got {_short(pattern)} "
                            f"({exc})")
        else:
            if "group" not in compiled.groupindex:
                problems.append(
                    "split.group_pattern must contain a named group (?P<group>...) that picks "
                    "the group key out of the id, e.g. '^(?P<group>.+)_\\d+$', got "
                    f"{_short(pattern)}")
    return problems


def _unknown(source: str, key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{source}: unknown key {_short(key)}{hint}"


def _build(cls: type, raw: dict[str, Any], source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = [_unknown(source, prefix + str(k), tuple(prefix + n for n in fields))
                for k in raw if k not in fields]
    values = {}
    for key, value in raw.items():
        if key not in fields:
            continue
        meta = fields[key].metadata
        try:
            if meta.get("parse") == "masks":
                try:
                    values[key] = parse_masks(value)
                except MasksError as exc:
                    problems.append(f"{source}: {prefix}{key} {exc}")
                continue
            if "choices" in meta:
                value = meta["switch"].get(value, value) if isinstance(value, bool) else value
            if "auto" in meta:
                if value == "auto":
                    values[key] = value
                    continue
                hint = meta["auto"]
            else:
                hint = hints[key]
            values[key] = checked = _coerce(value, hint)
            _check_meta(checked, meta)
        except TypeError as exc:
            what = f"auto or {exc}" if "auto" in meta else str(exc)
            problems.append(f"{source}: {prefix}{key} must be {what}, got {_short(value)}")
    if problems:
        raise ParamsError("\n".join(problems))
    return cls(**values)


class MasksError(ValueError):
    """A convert.masks entry that is not valid; the text follows the key's name."""


def parse_masks(raw: Any) -> tuple[MaskSource, ...]:
    """convert.masks: a list of {masks, images, values[, suffix]} mappings (one mapping alone
    is a list of one). Raises MasksError ("entry N: ... must be X, got Y")."""
    if raw is None:
        return ()
    entries = [raw] if isinstance(raw, dict) else raw
    if not isinstance(entries, list):
        raise MasksError(f"must be {_MASKS_FORM}, got {_short(raw)}")
    return tuple(_mask_source(entry, i) for i, entry in enumerate(entries))


_MASKS_FORM = ("a list of {masks: <mask folders>, images: <their image folders>, values: "
               "{<pixel value>: <label>}, suffix: <optional>} mappings")
_MASK_KEYS = ("masks", "images", "values", "suffix")


def _mask_source(entry: Any, i: int) -> MaskSource:
    where = f"entry {i}"
    if not isinstance(entry, dict):
        raise MasksError(f"must be {_MASKS_FORM}, got {_short(entry)} as entry {i}")
    unknown = [str(k) for k in entry if k not in _MASK_KEYS]
    missing = [k for k in ("masks", "images", "values") if k not in entry]
    if unknown or missing:
        raise MasksError(f"{where} must have the keys masks, images, values (and suffix), "
                         f"got {'unknown ' + str(unknown) if unknown else 'no ' + str(missing)}")
    globs = []
    for key in ("masks", "images"):
        text = entry[key]
        if not isinstance(text, str) or not text.strip("/ "):
            raise MasksError(f"{where}: {key} must be a folder path, got {_short(text)}")
        text = text.strip().strip("/")
        if text.startswith("~") or ".." in text.split("/") or ":" in text:
            raise MasksError(f"{where}: {key} must be a folder inside convert.raw_dir, got "
                            f"{_short(text)}")
        globs.append(text)
    masks, images = globs
    if _wildcards(masks) != _wildcards(images):
        raise MasksError(f"{where}: images must use the same wildcards as masks (each * and ** "
                        f"takes the text it matched there), got {masks!r} and {images!r}")
    suffix = entry.get("suffix") or ""
    if not isinstance(suffix, str) or "/" in suffix:
        raise MasksError(f"{where}: suffix must be a file-name ending, got {_short(suffix)}")
    if masks == images and not suffix:
        raise MasksError(f"{where}: masks in the images' own folder need a suffix (the mask "
                        f"of x.jpg is then x<suffix>.png), got none")
    values = entry["values"]
    if not isinstance(values, dict) or not values:
        raise MasksError(f"{where}: values must map pixel values to labels, got "
                        f"{_short(values)}")
    pairs = []
    for key, label in values.items():
        value = mask_value(key)
        if value is None:
            raise MasksError(f"{where}: values key {_short(key)} must be a pixel value: an "
                            f"integer (palette index or grey level) or a colour 'R,G,B' / "
                            f"'#rrggbb'")
        if not isinstance(label, str) or not label.strip():
            raise MasksError(f"{where}: values.{key} must be a label, got {_short(label)}")
        pairs.append((value, label))
    kinds = {isinstance(v, tuple) for v, _ in pairs}
    if len(kinds) > 1:
        raise MasksError(f"{where}: values must be all integers or all colours, got both")
    if len({v for v, _ in pairs}) != len(pairs):
        raise MasksError(f"{where}: values must list each pixel value once")
    return MaskSource(masks, images, tuple(sorted(pairs, key=lambda p: str(p[0]))), suffix)


def mask_value(key: Any) -> MaskValue | None:
    """A convert.masks values key as a pixel value: an int >= 0, or an (R, G, B) colour
    written 'R,G,B', '(R, G, B)' or '#rrggbb'; None when it is neither."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key if 0 <= key <= 65535 else None
    if not isinstance(key, str):
        return None
    text = key.strip()
    if text.isdigit():
        return mask_value(int(text))
    if text.startswith("#") and len(text) == 7:
        try:
            return (int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16))
        except ValueError:
            return None
    parts = [p.strip() for p in text.strip("()[] ").split(",")]
    if len(parts) == 3 and all(p.isdigit() and int(p) <= 255 for p in parts):
        return (int(parts[0]), int(parts[1]), int(parts[2]))
    return None


def _wildcards(glob: str) -> list[str]:
    """The wildcards of a convert.masks folder glob, in order: "**" for a whole folder name
    "**" (any number of folders), "*" for each star inside a name (any text but "/")."""
    kinds: list[str] = []
    for part in glob.split("/"):
        kinds += ["**"] if part == "**" else ["*"] * re.sub(r"\*+", "*", part).count("*")
    return kinds


def _check_meta(value: Any, meta: Any) -> None:
    """Raise TypeError("<what it must be>") when `value` is outside the field's range/choices."""
    if "choices" in meta and value not in meta["choices"]:
        raise TypeError(f"one of {list(meta['choices'])}")
    if "range" in meta and value is not None:
        low, high, low_open, high_open = meta["range"]
        items = value if isinstance(value, tuple) else (value,)  # a list: each item's range
        below = low is not None and any(v <= low if low_open else v < low for v in items)
        above = high is not None and any(v >= high if high_open else v > high for v in items)
        if below or above:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            if high is None:
                raise TypeError(f"{'>' if low_open else '>='} {low:g}")
            raise TypeError(f"in {left}{low:g}, {high:g}{right}")


def _coerce(value: Any, hint: Any) -> Any:
    """Check `value` against a field's type hint; return it in the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value or value in (float("inf"), float("-inf")):
                raise TypeError("a finite number")
            return float(value)
        raise TypeError("a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError("a string")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError("a list")
        try:
            return tuple(_coerce(v, args[0]) for v in value)
        except TypeError as exc:
            raise TypeError(f"a list whose items are each {exc}") from None
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise TypeError("a mapping of strings to strings")
        return dict(value)
    raise TypeError(f"of type {hint}")  # pragma: no cover - a field type we do not support


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses a document expanding to more than MAX_YAML_NODES nodes: an
    alias bomb (anchors nested ten-fold, each used ten times) is an error, not gigabytes.
    Also used for YOLO dataset YAMLs (convert/formats/yolo.py)."""

    def construct_document(self, node: yaml.Node) -> Any:
        count, stack = 0, [node]
        while stack:
            current = stack.pop()
            count += 1
            if count > MAX_YAML_NODES:
                raise yaml.YAMLError(f"the document expands to more than {MAX_YAML_NODES} "
                                     "values (YAML anchors/aliases nested too deep)")
            if isinstance(current, yaml.SequenceNode):
                stack.extend(current.value)
            elif isinstance(current, yaml.MappingNode):
                for key, value in current.value:
                    stack.extend((key, value))
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        """A key given twice is an error: YAML would keep the last one silently (a second
        `train:` section would hide the first)."""
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.YAMLError(f"key {_short(key)} must appear once, got it twice "
                                     f"(line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
