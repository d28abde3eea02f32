"""learn/plan.py: the training plan derived from the dataset fingerprint and the device."""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.core.fingerprint import fingerprint, object_stats
from pipeline.learn.plan import LONG_SIDE, PIXEL_BUDGET, Plan, make_plan
from pipeline.params import TrainParams

CLASSES = ("background", "blob", "line")


def dataset(size: tuple[int, int], blob_radius: int, line_width: int | None, n: int = 3):
    """A fingerprint of n synthetic masks (width, height) with discs and, optionally, a
    straight line of the given width: object sizes known exactly."""
    w, h = size
    sizes, stats = [], []
    yy, xx = np.ogrid[0:h, 0:w]
    for i in range(n):
        mask = np.zeros((h, w), np.uint8)
        for cx in (w // 4, 3 * w // 4):
            mask[(yy - h // 2) ** 2 + (xx - cx - i) ** 2 <= blob_radius ** 2] = 1
        if line_width is not None:
            mask[h // 4:h // 4 + line_width, w // 8:7 * w // 8] = 2
        sizes.append((w, h))
        stats.append(object_stats(mask, len(CLASSES)))
    pixels = {"background": 10_000, "blob": 1000, "line": 10 if line_width else 0}
    return fingerprint(sizes, stats, pixels, CLASSES)


def test_a_12_mp_photo_of_thick_objects_trains_at_the_cpus_working_size() -> None:
    fp = dataset((4032, 3024), blob_radius=60, line_width=None)
    plan = make_plan(fp, TrainParams(), CLASSES, "cpu")
    assert plan.scale_mode == "absolute"
    assert plan.scale == round(LONG_SIDE["cpu"] / 4032, 6)
    assert plan.long_side == 1024
    assert plan.working_size(3024, 4032) == (768, 1024)
    assert (plan.patch, plan.depth) == (256, 5)
    assert plan.batch_size == 4
    assert plan.steps == round(PIXEL_BUDGET["cpu"] / (4 * 256 * 256))
    assert plan.class_weights[0] == 0.0 and plan.class_weights[2] == 0.0  # no line objects
    assert any("thinnest class 'blob'" in r for r in plan.reasons)


def test_a_thin_class_forces_a_finer_scale() -> None:
    thin = dataset((4032, 3024), blob_radius=60, line_width=9)
    plan = make_plan(thin, TrainParams(), CLASSES, "cpu")
    assert thin.classes["line"].thickness == 9.0
    assert plan.scale == round(4 / 9, 6)  # 9 px wide lines stay 4 px wide
    assert any("thinnest class 'line' (9 px thick) must stay >= 4 px" in r
               for r in plan.reasons)
    crack = make_plan(dataset((512, 512), 30, line_width=1), TrainParams(), CLASSES, "cpu")
    assert crack.scale == 1.0  # never enlarged for thinness: 1 px cracks train at full size
    # class-aware crops: the rare class as often as the common one
    assert plan.class_weights == (0.0, 1.0, 1.0)


def test_a_large_object_is_made_to_fit_half_a_patch_unless_a_thin_class_forbids() -> None:
    big = dataset((1000, 750), blob_radius=150, line_width=None)  # discs ~266 px across
    plan = make_plan(big, TrainParams(), CLASSES, "cpu")
    side = big.classes["blob"].area ** 0.5
    assert plan.scale == round(0.5 * 256 / side, 6)
    assert plan.patch == 256 and plan.long_side == round(1000 * 0.5 * 256 / side)
    assert any("typical 'blob'" in r and "must fit in 50% of a 256 px patch" in r
               for r in plan.reasons)
    # never below one patch for the whole image: 400 px photos stop at 256 / 400
    huge = dataset((400, 300), blob_radius=140, line_width=None)
    assert make_plan(huge, TrainParams(), CLASSES, "cpu").scale == 256 / 400
    # a 3 px line keeps its pixels: the thin class wins
    thin = dataset((1000, 750), blob_radius=150, line_width=3)
    assert make_plan(thin, TrainParams(), CLASSES, "cpu").scale == 1.0


def test_small_images_train_whole() -> None:
    plan = make_plan(dataset((84, 64), blob_radius=8, line_width=None), TrainParams(),
                     CLASSES, "cpu")
    assert (plan.scale, plan.long_side) == (1.0, 84)
    assert (plan.patch, plan.depth) == (96, 3)  # the whole image, a multiple of 2**depth
    assert plan.batch_size == round(4 * 256 * 256 / 96**2)


def test_mixed_resolutions_of_one_scene_type_resize_each_image() -> None:
    # the same framing photographed at 3 resolutions: objects are a fixed share of the image
    sizes, stats = [], []
    for w in (300, 1200, 3000, 300, 1200, 3000):
        r = w // 10
        sizes.append((w, w * 3 // 4))
        stats.append({1: object_stats_of_disc(r)})
    fp = fingerprint(sizes, stats, {"background": 9, "blob": 1, "line": 0}, CLASSES)
    plan = make_plan(fp, TrainParams(), CLASSES, "cpu")
    assert plan.scale_mode == "relative"
    assert plan.working_size(225, 300) == plan.working_size(2250, 3000)  # one working size


def object_stats_of_disc(r: int):
    mask = np.zeros((2 * r + 3, 2 * r + 3), np.uint8)
    yy, xx = np.ogrid[0:2 * r + 3, 0:2 * r + 3]
    mask[(yy - r - 1) ** 2 + (xx - r - 1) ** 2 <= r * r] = 1
    return object_stats(mask, 2)[1]


def test_params_override_every_planned_value_and_the_plan_round_trips() -> None:
    fp = dataset((640, 480), blob_radius=30, line_width=None)
    cfg = TrainParams(scale=0.5, patch=128, batch_size=6, steps=77, depth=3, base_width=8,
                      fg_share=0.5, ema=0.0, val_every=7)
    plan = make_plan(fp, cfg, CLASSES, "cpu")
    assert (plan.scale_mode, plan.scale, plan.patch, plan.batch_size, plan.steps) == \
        ("absolute", 0.5, 128, 6, 77)
    assert (plan.depth, plan.base_width, plan.fg_share, plan.ema_decay, plan.val_every) == \
        (3, 8, 0.5, 0.0, 7)
    relative = make_plan(fp, TrainParams(long_side=200), CLASSES, "cpu")
    assert relative.scale_mode == "relative" and relative.working_size(480, 640) == (150, 200)
    assert Plan.from_dict(plan.to_dict()) == plan
    gpu = make_plan(fp, TrainParams(), CLASSES, "cuda")
    assert gpu.steps > make_plan(fp, TrainParams(), CLASSES, "cpu").steps
    assert dataclasses.replace(gpu, reasons=()) != gpu  # every choice says why
