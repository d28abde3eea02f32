"""The training plan: working scale, patch, batch, steps and crop sampling, derived from the
dataset fingerprint and the device (nnU-Net's lesson: plan from the data, then train a fixed
recipe). Pure: `make_plan` takes the fingerprint and the params and returns a `Plan`; every
`auto` field of params.yaml's train section is decided here, every other value is taken as is.

The rules, each with its reason in `Plan.reasons`:
- **working scale**: as large as the device's working size allows (`LONG_SIDE`), never above
  the images' own size; smaller when the largest class's typical object would span more than
  `OBJECT_FIT` of a patch (down to one patch for the whole image); and never so small that
  the thinnest class falls under `THIN_PX` pixels thick (then the thin class wins). Images
  are resized *relatively* (each image's long side to one length) when object sizes relative
  to their image vary less than their sizes in pixels (web photos of mixed resolution), else
  by one absolute factor (one camera).
- **patch**: the device's largest (`PATCH`), or less when the working images are smaller;
  a multiple of 2**depth, so every U-Net level has whole pixels.
- **batch**: a fixed number of pixels per optimiser step (`STEP_PIXELS`), at least `MIN_BATCH`
  crops (BatchNorm needs a few samples per batch).
- **steps**: a budget of crop pixels per device (`PIXEL_BUDGET`, tuned so the sample trains in
  ~7 minutes on 2 CPU cores) divided by the pixels of one step. Steps, not epochs: accuracy
  follows the optimiser step count.
- **crop sampling**: a share (`FG_SHARE`) of the crops is centred on a pixel of a foreground
  class, every class present equally likely (so a class with a thousandth of the pixels is
  seen as often as the most common one: rare classes favoured), the rest uniform over the
  image (nnU-Net oversamples foreground the same way). Weighting by rarity beyond that made
  a rare class's false positives grow on real photos (cvficus: 93% of class crops on 7
  branches, branch precision 0.56).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from pipeline.core.fingerprint import Fingerprint
from pipeline.params import TrainParams

#: A class must stay at least this many pixels thick at the working scale: below ~4 px a
#: structure vanishes after the first two poolings and the decoder cannot bring it back.
THIN_PX = 4.0
#: Largest working long side per device: a 12 MP photo trains at 1024 px on a CPU.
LONG_SIDE = {"cpu": 1024, "cuda": 2048}
#: Largest square patch per device.
PATCH = {"cpu": 256, "cuda": 512}
#: Crop pixels per optimiser step (the batch is this divided by the patch area).
STEP_PIXELS = {"cpu": 4 * 256 * 256, "cuda": 16 * 512 * 512}
MIN_BATCH, MAX_BATCH = 4, 64
#: Crop pixels over the whole run: the sample trains in ~7 minutes (bf16, 2 CPU cores); a
#: GPU gets 27x the pixels (unmeasured here: no GPU was at hand).
PIXEL_BUDGET = {"cpu": 300_000_000, "cuda": 8_000_000_000}
MIN_STEPS, MAX_STEPS = 300, 20_000
#: Share of crops centred on a foreground pixel (nnU-Net: one in three).
FG_SHARE = 0.33
#: Relative resizing is chosen when it makes object sizes vary clearly less than in pixels.
RELATIVE_GAIN = 0.7
#: Most an image is enlarged to reach the working size (relative mode).
MAX_UPSCALE = 4.0
#: The typical object of the largest class should span at most this share of the patch side,
#: so a crop holds it with context around it (a raccoon filling half a web photo is learnt
#: from crops that see its outline, not from crops inside it).
OBJECT_FIT = 0.5
#: Width of the first U-Net level per device (CPU time grows with its square).
BASE_WIDTH = {"cpu": 16, "cuda": 32}


@dataclass(frozen=True)
class Plan:
    """What a run trains with; stored in the model so inference resizes images the same way."""

    scale_mode: str  # "absolute": one factor for every image; "relative": each long side
    scale: float  # absolute: the factor; relative: the factor of the median image
    long_side: int  # relative: every image's working long side; absolute: the median's
    patch: int
    batch_size: int
    steps: int
    depth: int
    base_width: int
    fg_share: float
    class_weights: tuple[float, ...]  # foreground crop sampling weight per class (0: never)
    lr: float
    warmup_steps: int
    ema_decay: float
    val_every: int
    reasons: tuple[str, ...] = ()

    def image_scale(self, height: int, width: int) -> float:
        """The resize factor of one image at the working scale."""
        if self.scale_mode == "relative":
            return min(MAX_UPSCALE, self.long_side / max(height, width))
        return self.scale

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        s = self.image_scale(height, width)
        return max(1, round(height * s)), max(1, round(width * s))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> Plan:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["class_weights"] = tuple(values["class_weights"])  # type: ignore[arg-type]
        values["reasons"] = tuple(values.get("reasons", ()))  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def summary(self) -> str:
        mode = (f"each image's long side -> {self.long_side} px" if self.scale_mode == "relative"
                else f"x{self.scale:.3g} (median long side {self.long_side} px)")
        return (f"plan: scale {mode}; patch {self.patch}, batch {self.batch_size}, "
                f"{self.steps} steps; U-Net depth {self.depth}, width {self.base_width}; "
                f"{self.fg_share:.0%} of crops on a class pixel")


def make_plan(fp: Fingerprint, cfg: TrainParams, classes: Sequence[str], device_type: str
              ) -> Plan:
    """The plan for `fp` on a device of `device_type` ("cuda", else treated as the CPU)."""
    device = "cuda" if device_type == "cuda" else "cpu"
    reasons: list[str] = []
    median_long = max(1.0, fp.long_side[1])

    # 1. working scale
    mode, scale, long_side = _scale(fp, cfg, device, median_long, reasons)

    # 2. patch and network depth
    depth = None if cfg.depth == "auto" else int(cfg.depth)
    if cfg.patch != "auto":
        patch = int(cfg.patch)
        reasons.append(f"patch {patch}: set in params")
    else:
        patch = min(PATCH[device], _round_up(long_side, 32))
        reasons.append(f"patch {patch}: the {device}'s largest ({PATCH[device]}) or the whole "
                       f"working image ({round(long_side)} px), whichever is smaller")
    if depth is None:  # the bottleneck keeps at least 8 x 8 pixels
        depth = max(2, min(5, int(math.log2(patch / 8))))
    patch = _round_up(patch, 2 ** depth)

    # 3. batch, steps, schedule
    if cfg.batch_size != "auto":
        batch = int(cfg.batch_size)
    else:
        batch = max(MIN_BATCH, min(MAX_BATCH, round(STEP_PIXELS[device] / patch**2)))
    if cfg.steps != "auto":
        steps = int(cfg.steps)
        reasons.append(f"steps {steps}: set in params")
    else:
        steps = max(MIN_STEPS, min(MAX_STEPS, round(PIXEL_BUDGET[device] / (batch * patch**2))))
        reasons.append(f"steps {steps}: the {device} budget of {PIXEL_BUDGET[device]:,} crop "
                       f"pixels / ({batch} x {patch}x{patch}) per step")

    # 4. crop sampling: every foreground class with pixels equally likely
    weights = [0.0 if value == 0 or name not in fp.classes
               or fp.classes[name].pixel_share <= 0 else 1.0
               for value, name in enumerate(classes)]
    fg_share = FG_SHARE if cfg.fg_share == "auto" else float(cfg.fg_share)
    ema = (round(1.0 - 1.0 / max(20.0, steps / 10.0), 6) if cfg.ema == "auto"
           else float(cfg.ema))
    return Plan(
        scale_mode=mode, scale=round(scale, 6), long_side=round(long_side), patch=patch,
        batch_size=batch, steps=steps, depth=depth,
        base_width=BASE_WIDTH[device] if cfg.base_width == "auto" else int(cfg.base_width),
        fg_share=fg_share, class_weights=tuple(weights), lr=cfg.lr,
        warmup_steps=round(cfg.warmup * steps), ema_decay=ema,
        val_every=max(1, steps // 10) if cfg.val_every == "auto" else int(cfg.val_every),
        reasons=tuple(reasons))


def _scale(fp: Fingerprint, cfg: TrainParams, device: str, median_long: float,
           reasons: list[str]) -> tuple[str, float, float]:
    """(mode, factor of the median image, working long side of the median image)."""
    if cfg.long_side != "auto":
        long_side = float(cfg.long_side)
        reasons.append(f"scale: every image's long side -> {long_side:g} px (set in params)")
        return "relative", long_side / median_long, long_side
    if cfg.scale != "auto":
        scale = float(cfg.scale)
        reasons.append(f"scale x{scale:g}: set in params")
        return "absolute", scale, median_long * scale
    thinnest = min(fp.classes.items(), key=lambda kv: kv[1].thickness, default=None)
    scale = min(1.0, LONG_SIDE[device] / median_long)
    why = (f"the median image's long side {median_long:g} px fits the {device}'s working "
           f"size {LONG_SIDE[device]}" if scale >= 1.0
           else f"{median_long:g} px down to the {device}'s working size {LONG_SIDE[device]}")
    largest = max(fp.classes.items(), key=lambda kv: kv[1].area, default=None)
    if largest is not None:
        name, big = largest
        side, limit = math.sqrt(big.area), OBJECT_FIT * PATCH[device]
        if side * scale > limit and median_long * scale > PATCH[device]:
            # smaller until the object fits, but no smaller than one patch for the whole image
            scale = max(limit / side, PATCH[device] / median_long)
            why = (f"the typical {name!r} ({side:.0f} px across) must fit in "
                   f"{OBJECT_FIT:.0%} of a {PATCH[device]} px patch (or the whole image in one)")
    if thinnest is not None:
        name, thin = thinnest
        needed = min(1.0, THIN_PX / max(thin.thickness, 1e-6))
        if needed > scale:
            scale = needed
            why = (f"the thinnest class {name!r} ({thin.thickness:g} px thick) must stay "
                   f">= {THIN_PX:g} px thick")
        else:
            why += f"; the thinnest class {name!r} stays {thin.thickness * scale:.1f} px thick"
    relative = _relative_is_steadier(fp)
    mode = "relative" if relative else "absolute"
    reasons.append(f"scale x{scale:.3g} ({mode}): {why}" + (
        "; objects vary less relative to their image than in pixels: each image is resized "
        "to the same long side" if relative else ""))
    return mode, scale, median_long * scale


def _relative_is_steadier(fp: Fingerprint) -> bool:
    """True when sizing images relatively makes the typical object size clearly steadier."""
    if fp.size_spread < 0.5:  # images of (nearly) one size: both rules agree
        return False
    weighted = [(c.images, c.area_spread, c.relative_spread) for c in fp.classes.values()]
    total = sum(n for n, _, _ in weighted)
    if not total:
        return False
    absolute = sum(n * a for n, a, _ in weighted) / total
    relative = sum(n * r for n, _, r in weighted) / total
    return relative < RELATIVE_GAIN * absolute


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)
