"""core/fingerprint.py: object sizes measured on masks, aggregated over a dataset."""

from __future__ import annotations

import math

import numpy as np

from pipeline.core.fingerprint import Fingerprint, ObjectStats, fingerprint, object_stats


def disc(mask: np.ndarray, cy: int, cx: int, r: int, value: int) -> None:
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value


def test_object_stats_measure_area_and_width() -> None:
    mask = np.zeros((60, 80), np.uint8)
    disc(mask, 15, 15, 10, 1)  # 317 px; its centre's nearest outside pixel is (10, 1) away
    disc(mask, 40, 60, 10, 1)
    mask[50, 5:45] = 2  # a 1 px line, 40 px long
    mask[2:5, 40:70] = 2  # a 3 px bar
    mask[55:58, 70:73] = 255  # ignore is no class
    stats = object_stats(mask, 3)
    assert set(stats) == {1, 2}
    assert stats[1] == ObjectStats(objects=2, median_area=317.0,
                                   median_thickness=round(2 * math.sqrt(101) - 1, 3))
    assert stats[2].objects == 2 and stats[2].median_area == (40 + 90) / 2
    assert stats[2].median_thickness == 2.0  # the median of 1 (line) and 3 (bar)
    diagonal = np.eye(30, dtype=np.uint8)  # 8-connected: one object
    assert object_stats(diagonal, 2)[1].objects == 1
    assert object_stats(np.zeros((5, 5), np.uint8), 3) == {}


def test_fingerprint_aggregates_over_samples_and_round_trips() -> None:
    sizes = [(400, 300), (800, 600), (400, 300)]
    stats = [{1: ObjectStats(2, 100.0, 10.0)}, {1: ObjectStats(1, 400.0, 20.0),
                                                2: ObjectStats(5, 30.0, 3.0)}, {}]
    fp = fingerprint(sizes, stats, {"background": 900, "cell": 90, "speck": 10},
                     ("background", "cell", "speck"))
    assert fp.images == 3
    assert fp.long_side[1] == 400.0 and fp.short_side[1] == 300.0
    cell = fp.classes["cell"]
    assert (cell.images, cell.objects, cell.pixel_share) == (2, 3, 0.09)
    assert cell.area == 100.0  # the median over the 3 objects: 100, 100, 400
    assert cell.thickness == 10.0
    assert cell.relative_area == round(100 / (400 * 300), 8)
    assert fp.classes["speck"].thickness == 3.0
    assert "background" not in fp.classes
    assert Fingerprint.from_dict(fp.to_dict()) == fp
