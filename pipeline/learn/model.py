"""A classic U-Net, written to read like the diagram: parts first, assembly last.

    x ─ Normalize ─ DoubleConv ──────────────────────────────────── Up ─ OutConv ─ logits
                        └ Down ─────────────────────────────── Up ┘
                             └ Down ─ ... ─ Down (bottleneck) ┘

Level i has `base_width * 2**i` channels (i = 0 .. depth). Down halves the size (max-pool,
floor for odd sizes), Up doubles it and pads to the skip's size, so any H x W works
(H and W at least 2**depth, so the bottleneck is not empty).

The file written by `save_model` rebuilds its own model: it holds the config, the class names,
the training plan (working scale, patch: how to resize an image for it), the dataset
fingerprint the plan came from, the precision it ran in and the data version, next to the
weights (the EMA weights, see learn/train.py).
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import InputError
from pipeline.learn.plan import Plan
from pipeline.params import UPSAMPLE_MODES
from pipeline.storage.files import write_bytes

MODEL_FORMAT = "segpipe-unet/2"
# ImageNet statistics: inputs arrive as RGB floats in [0, 1]
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class UNetConfig:
    n_classes: int
    in_channels: int = 3
    depth: int = 4  # number of down-sampling steps
    base_width: int = 16  # channels of the first level; doubles per level
    upsample: str = "bilinear"  # "bilinear" or "transpose"

    def __post_init__(self) -> None:
        problems = []
        if self.n_classes < 2:
            problems.append(f"n_classes must be >= 2, got {self.n_classes}")
        if self.in_channels < 1:
            problems.append(f"in_channels must be >= 1, got {self.in_channels}")
        if self.depth < 1:
            problems.append(f"depth must be >= 1, got {self.depth}")
        if self.base_width < 1:
            problems.append(f"base_width must be >= 1, got {self.base_width}")
        if self.upsample not in UPSAMPLE_MODES:
            problems.append(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about its model besides the weights."""

    config: UNetConfig
    classes: tuple[str, ...]
    data_fingerprint: str  # hash of manifest + split the model was trained on
    plan: Plan  # working scale and patch: how images are resized and tiled for it
    dataset: dict[str, Any] = field(default_factory=dict)  # the fingerprint the plan came from
    amp: bool = False  # bf16 autocast in training (and so in inference)
    channels_last: bool = False
    device: str = "cpu"  # the device type it was trained on


# ---------------------------------------------------------------- parts


class Normalize(nn.Module):
    """RGB in [0, 1] -> zero mean, unit variance per channel (ImageNet statistics)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        mean = _MEAN if in_channels == 3 else (0.5,) * in_channels
        std = _STD if in_channels == 3 else (0.25,) * in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Upsample x2 (bilinear or transposed conv), pad to the skip's size, concat, DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int,
                 mode: str = "bilinear") -> None:
        super().__init__()
        if mode == "bilinear":
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            up_channels = in_channels
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            up_channels = in_channels // 2
        self.conv = DoubleConv(up_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        if dy or dx:  # odd input sizes: the pooled map was floored
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Conv2d):
    """1x1 conv to one logit per class."""

    def __init__(self, in_channels: int, n_classes: int) -> None:
        super().__init__(in_channels, n_classes, kernel_size=1)


# ---------------------------------------------------------------- assembly


class UNet(nn.Module):
    """x: float N x in_channels x H x W in [0, 1] (any H, W) -> logits N x n_classes x H x W."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_width * 2**i for i in range(config.depth + 1)]
        self.norm = Normalize(config.in_channels)
        self.inc = DoubleConv(config.in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(config.depth))
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], config.upsample)
            for i in reversed(range(config.depth))
        )
        self.outc = OutConv(widths[0], config.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(self.norm(x))
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottleneck is x itself
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


# ---------------------------------------------------------------- device


def pick_device(name: str = "auto", local_rank: int = 0, setting: str = "device") -> torch.device:
    """"auto": CUDA (this process's GPU), then MPS, then the CPU; or exactly the device named,
    which must exist here. `setting` names the parameter in error messages."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("mps") if mps_ok else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"{setting} must be auto, cpu, cuda, cuda:N or mps, got {name!r}") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{setting} is {name!r} but CUDA is not available here")
    if device.type == "mps" and not mps_ok:
        raise InputError(f"{setting} is {name!r} but MPS is not available here")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


# ---------------------------------------------------------------- checkpoint


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def model_payload(model: nn.Module, info: ModelInfo,
                  state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The self-describing dict `save_model` writes (also embedded in training checkpoints).
    `state`: the weights to store (default: the model's own)."""
    weights = state if state is not None else unwrap(model).state_dict()
    return {
        "format": MODEL_FORMAT,
        "config": dataclasses.asdict(info.config),
        "classes": list(info.classes),
        "data_fingerprint": str(info.data_fingerprint),
        "plan": info.plan.to_dict(),
        "dataset": info.dataset,
        "precision": {"amp": info.amp, "channels_last": info.channels_last,
                      "device": info.device},
        "state_dict": {k: v.detach().cpu() for k, v in weights.items()},
    }


def model_from_payload(payload: Any, source: str = "checkpoint") -> tuple[UNet, ModelInfo]:
    """Rebuild the model and its info from a `model_payload` dict."""
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InputError(f"{source}: must be a segpipe model ({MODEL_FORMAT}), got {got!r}; "
                         "train it again with this version")
    try:
        config = UNetConfig(**payload["config"])
        precision = payload["precision"]
        info = ModelInfo(config=config, classes=tuple(payload["classes"]),
                         data_fingerprint=str(payload["data_fingerprint"]),
                         plan=Plan.from_dict(payload["plan"]), dataset=dict(payload["dataset"]),
                         amp=bool(precision["amp"]),
                         channels_last=bool(precision["channels_last"]),
                         device=str(precision["device"]))
        model = UNet(config)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{source}: broken model checkpoint: {exc}") from None
    if len(info.classes) != config.n_classes:
        raise InputError(f"{source}: has {config.n_classes} outputs but "
                         f"{len(info.classes)} class names")
    return model, info


def write_torch(path: str | Path, obj: Any) -> None:
    """torch.save, atomically and byte-reproducibly: saved to memory first, because a file
    saved directly names its zip archive after the (random) temp file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def save_model(path: str | Path, model: nn.Module, info: ModelInfo,
               state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the model atomically (weights on CPU; DDP/compile wrappers removed)."""
    write_torch(path, model_payload(model, info, state))


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[UNet, ModelInfo]:
    """Read a model written by `save_model`; it is returned in eval mode on `map_location`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{path}: must be a model checkpoint written by segpipe train, got an "
                         f"unreadable file ({type(exc).__name__})") from None
    model, info = model_from_payload(payload, str(path))
    return model.to(map_location).eval(), info
