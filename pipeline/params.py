"""Load params.yaml into frozen dataclasses, one per section.

Every field has a default, so a section may be left out; an unknown or mistyped key is an
error naming it and the closest known key. Stages take only the section they need.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ParamsError


@dataclass(frozen=True)
class Labels:
    """The declared classes: list index = pixel value; index 0 is the background."""

    classes: tuple[str, ...] = ("background",)
    ignore_labels: tuple[str, ...] = ("__ignore__",)
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ConvertParams:
    raw_dir: str = "data/raw"
    out_dir: str = "data/prepared"
    reports_dir: str = "reports"
    strict: bool = False  # any rejected file fails the stage
    max_error_fraction: float = 0.2  # fail when more than this share of files is rejected
    max_repair_change: float = 0.05  # reject a polygon whose repair changes its area more
    line_width: int = 10  # Labelme's line/linestrip width in pixels
    point_radius: int = 5  # Labelme's point disc radius in pixels
    jobs: int = 0  # worker processes; 0 = all cores


@dataclass(frozen=True)
class SplitParams:
    splits_path: str = "data/splits/splits.csv"
    report_path: str = "reports/split.json"
    val_fraction: float = 0.2
    group_pattern: str | None = None  # regex with a named group "group", applied to the id
    benchmark: str | None = None  # text file of ids never trained on (a fixed eval set)
    seed: int = 0
    version: int = 1  # bump to reshuffle everything deliberately
    # largest allowed |val image share - val_fraction| per class; a class too small for it
    # may deviate by the share of its largest group instead (a group is never cut)
    tolerance: float = 0.05


@dataclass(frozen=True)
class TrainParams:
    model_path: str = "models/model.pt"
    checkpoint_path: str = "models/checkpoint.pt"
    cache_dir: str = "data/cache"
    log_dir: str = "reports/train"
    image_size: int = 128  # square training size in pixels
    depth: int = 4  # number of down-sampling steps
    base_width: int = 16  # channels of the first level; doubles per level
    upsample: str = "bilinear"  # "bilinear" or "transpose"
    loss: str = "ce_dice"  # "ce", "dice" or "ce_dice"
    class_weights: tuple[float, ...] | None = None
    epochs: int = 40
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    scale_min: float = 0.75
    scale_max: float = 1.25
    jitter: float = 0.1  # colour jitter strength (brightness/contrast/saturation)
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), "cuda", "mps" or "cpu"
    amp: str = "auto"  # "auto" (bf16 on cuda), "bf16", "off"
    channels_last: str = "auto"  # "auto" (on cuda), "on", "off"
    compile: bool = False
    workers: int = 0
    threads: int = 0  # torch CPU threads; 0 = all cores
    seed: int = 0
    resize: str = "letterbox"  # fit images to image_size: "letterbox" (keep aspect) or "stretch"
    grad_accum: int = 1  # micro-batches per optimiser step (global batch = batch * accum * procs)
    warmup: float = 0.05  # share of the optimiser steps with linear LR warm-up, then cosine to 0
    resume: bool = True  # continue from checkpoint_path when its data and config match


@dataclass(frozen=True)
class EvaluateParams:
    metrics_path: str = "reports/metrics.json"
    out_dir: str = "reports/eval"
    batch_size: int = 16
    worst_k: int = 8  # overlays for the k worst val images
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N" or "mps"
    workers: int = 0  # threads decoding images; 0 = min(8, cores)
    overlay_size: int = 512  # longest side of each overlay panel in pixels
    overlay_alpha: float = 0.5  # opacity of the class colours over the image


@dataclass(frozen=True)
class GateParams:
    max_drop: float = 0.02  # largest allowed drop of mIoU
    max_class_drop: float = 0.05  # largest allowed drop of any class's IoU


@dataclass(frozen=True)
class Params:
    labels: Labels
    convert: ConvertParams
    split: SplitParams
    train: TrainParams
    evaluate: EvaluateParams
    gate: GateParams


_SECTIONS: dict[str, type] = {
    "convert": ConvertParams,
    "split": SplitParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "gate": GateParams,
}
_LABEL_KEYS = tuple(f.name for f in dataclasses.fields(Labels))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml; a missing file gives all defaults only if `path` does not exist."""
    path = Path(path)
    raw: Any = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, source=str(path))


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    known = (*_LABEL_KEYS, *_SECTIONS)
    problems = [_unknown(source, key, known) for key in raw if key not in known]
    labels_raw = {k: raw[k] for k in _LABEL_KEYS if k in raw}
    sections: dict[str, Any] = {}
    try:
        labels = _build(Labels, labels_raw, source, "")
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
    problems += _check_labels(labels, source)
    if problems:
        raise ParamsError("\n".join(problems))
    return Params(labels=labels, **sections)


def _check_labels(labels: Labels, source: str) -> list[str]:
    problems = []
    if len(labels.classes) < 2:
        problems.append(f"{source}: classes must list the background and at least one class, "
                        f"got {list(labels.classes)}")
    if len(set(labels.classes)) != len(labels.classes):
        dup = sorted({c for c in labels.classes if labels.classes.count(c) > 1})
        problems.append(f"{source}: classes must be unique, got duplicates {dup}")
    if len(labels.classes) > 255:
        problems.append(f"{source}: at most 255 classes fit a uint8 mask (255 is ignore), "
                        f"got {len(labels.classes)}")
    for alias, target in labels.aliases.items():
        if target not in labels.classes and target not in labels.ignore_labels:
            problems.append(f"{source}: aliases.{alias} must name a class, got {target!r}")
    return problems


def _unknown(source: str, key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{source}: unknown key {key!r}{hint}"


def _build(cls: type, raw: dict[str, Any], source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = tuple(f.name for f in dataclasses.fields(cls))
    problems = [_unknown(source, prefix + k, tuple(prefix + n for n in names))
                for k in raw if k not in names]
    values = {}
    for key, value in raw.items():
        if key not in names:
            continue
        try:
            values[key] = _coerce(value, hints[key])
        except TypeError as exc:
            problems.append(f"{source}: {prefix}{key} must be {exc}, got {value!r}")
    if problems:
        raise ParamsError("\n".join(problems))
    return cls(**values)


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
            return float(value)
        raise TypeError("a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError("a string")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError("a list")
        return tuple(_coerce(v, args[0]) for v in value)
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise TypeError("a mapping of strings to strings")
        return dict(value)
    raise TypeError(f"of type {hint}")  # pragma: no cover - a field type we do not support
