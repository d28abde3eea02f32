"""learn/review.py: the label-quality score, suspect regions and their kinds, folds, and the
mapping of a suspect back to the shape an annotator must open (pure parts, exact cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.core.manifest import ManifestRow
from pipeline.core.records import IGNORE, Record, Shape
from pipeline.learn.review import (
    Region,
    Scored,
    Suspect,
    assign_folds,
    find_regions,
    images_csv,
    label_quality,
    overlay_names,
    owner,
    ranked,
    review_csv,
)

TYPICAL = [400.0, 100.0, 100.0]  # typical object area per class at this scale


def confident(pred: np.ndarray, n: int = 3, p: float = 0.95) -> np.ndarray:
    """Probabilities that say `pred` with probability p everywhere."""
    probs = np.full((n, *pred.shape), (1 - p) / (n - 1), np.float32)
    np.put_along_axis(probs, pred[None].astype(np.int64), p, 0)
    return probs


def square(mask: np.ndarray, y: int, x: int, side: int, value: int) -> None:
    mask[y:y + side, x:x + side] = value


def test_label_quality_is_a_softmin_of_the_given_labels_probability() -> None:
    labels = np.array([[0, 1], [1, IGNORE]], np.uint8)
    probs = confident(labels.clip(max=2))
    assert label_quality(probs, labels) == pytest.approx(0.95)  # agreement everywhere
    probs[:, 0, 1] = [0.9, 0.05, 0.05]  # one pixel's label contradicted
    w = np.exp(-np.array([0.95, 0.05, 0.95]) / 0.1)
    expected = float((w * [0.95, 0.05, 0.95]).sum() / w.sum())
    assert label_quality(probs, labels) == pytest.approx(expected)
    assert label_quality(probs, labels) < 0.2  # the worst pixel dominates
    assert math.isnan(label_quality(probs, np.full((2, 2), IGNORE, np.uint8)))


def test_a_deleted_shape_is_a_missing_object_at_its_place() -> None:
    truth = np.zeros((40, 40), np.uint8)
    square(truth, 5, 5, 10, 1)
    square(truth, 20, 22, 10, 2)
    labels = truth.copy()
    labels[20:30, 22:32] = 0  # the annotator forgot the second square
    regions = find_regions(confident(truth), labels, TYPICAL)
    assert [(r.kind, r.given, r.predicted, r.box, r.area) for r in regions] == [
        ("missing", 0, 2, (22, 20, 31, 29), 100)]
    assert regions[0].score == pytest.approx(0.95)


def test_a_swapped_label_is_a_wrong_class_and_a_removed_object_is_extra() -> None:
    truth = np.zeros((40, 40), np.uint8)
    square(truth, 5, 5, 10, 1)
    labels = truth.copy()
    labels[5:15, 5:15] = 2  # labelled as the other class
    square(labels, 25, 25, 10, 1)  # an object the model does not see
    kinds = [(r.kind, r.given, r.predicted) for r in find_regions(confident(truth), labels,
                                                                  TYPICAL)]
    assert sorted(kinds) == [("extra", 1, 0), ("wrong_class", 2, 1)]


def test_a_grown_outline_is_a_boundary_band_and_a_clean_mask_has_no_suspect() -> None:
    truth = np.zeros((60, 60), np.uint8)
    square(truth, 10, 10, 40, 1)
    grown = truth.copy()
    grown[8:52, 8:52] = 1  # dilated by 2 px
    regions = find_regions(confident(truth), grown, [400.0, 100.0, 100.0], min_area=0.05)
    assert [r.kind for r in regions] == ["boundary"]
    assert regions[0].score == pytest.approx(0.5 * 0.95 * min(1.0, regions[0].area / 100))
    assert find_regions(confident(truth), truth, TYPICAL) == []
    unsure = confident(truth, p=0.45)  # the model disagrees, but not confidently
    assert find_regions(unsure, grown, TYPICAL) == []
    tiny = truth.copy()
    tiny[0:2, 0:2] = 2  # 4 px: under min_area of a typical 100 px object
    assert [r.kind for r in find_regions(confident(truth), tiny, TYPICAL)] == []


def test_folds_keep_groups_whole_balanced_and_fixed_by_the_seed() -> None:
    ids = [f"s{i:02d}_{j}" for i in range(10) for j in range(i % 3 + 1)]
    groups = {i: i.split("_")[0] for i in ids}
    folds = assign_folds(ids, groups, 3, seed=0)
    assert set(folds.values()) == {0, 1, 2}
    for group in set(groups.values()):
        assert len({folds[i] for i in ids if groups[i] == group}) == 1
    sizes = [sum(1 for f in folds.values() if f == k) for k in range(3)]
    assert max(sizes) - min(sizes) <= 3  # the largest group has 3 samples
    assert assign_folds(ids, groups, 3, seed=0) == folds
    assert assign_folds(ids, groups, 3, seed=1) != folds


def test_a_suspect_is_mapped_to_the_last_drawn_shape_covering_it() -> None:
    big = Shape("circle", "polygon", ((0, 0), (39, 0), (39, 39), (0, 39)), 0, source="a.json")
    small = Shape("star", "rectangle", ((10, 10), (19, 19)), 1, source="a.json")
    other = Shape("circle", "rectangle", ((30, 30), (35, 35)), 2, source="a.json")
    record = Record("a", "a.json", "labelme", "a.png", None, 40, 40, (big, small, other))
    inside = np.ones((5, 5), bool)
    region = Region("wrong_class", 2, 1, 25, 0.9, 0.9, (6, 6, 10, 10), inside)  # half-scale
    assert owner(record, region, (0.5, 0.5), [1, 2, 1], 10, 5) == small
    elsewhere = Region("extra", 1, 0, 4, 0.9, 0.9, (1, 1, 2, 2), np.ones((2, 2), bool))
    assert owner(record, elsewhere, (0.5, 0.5), [1, 2, 1], 10, 5) == big
    assert owner(record, elsewhere, (0.5, 0.5), [-1, -1, -1], 10, 5) is None  # no class


def test_a_band_outside_a_shrunk_outline_names_the_shape_it_borders() -> None:
    # the annotator drew the square 2 px inside its edge; a skipped shape (unknown label) and
    # a shape of another class come first in the file
    unknown = Shape("stra", "rectangle", ((50, 50), (55, 55)), 0, source="a.json")
    other = Shape("star", "rectangle", ((0, 0), (5, 5)), 1, source="a.json")
    shrunk = Shape("circle", "rectangle", ((12, 12), (47, 47)), 2, source="a.json")
    record = Record("a", "a.json", "labelme", "a.png", None, 60, 60, (unknown, other, shrunk))
    truth = np.zeros((60, 60), np.uint8)
    square(truth, 10, 10, 40, 1)
    given = np.zeros((60, 60), np.uint8)
    square(given, 12, 12, 36, 1)
    regions = find_regions(confident(truth), given, TYPICAL)
    assert [(r.kind, r.given, r.predicted) for r in regions] == [("boundary", 0, 1)]
    assert owner(record, regions[0], (1.0, 1.0), [-1, 2, 1], 10, 5) == shrunk
    assert owner(record, regions[0], (1.0, 1.0), [-1, 2, 2], 10, 5) is None  # no circle there


def test_review_csv_ranks_suspects_and_names_one_overlay_per_shown_image() -> None:
    def suspect(image: str, score: float, shape: int | None) -> Suspect:
        return Suspect(image, f"{image}.json", shape, "circle", "missing", score, "circle", 50,
                       0.9, 0.4, (1, 2, 3, 4))
    suspects = [suspect("a/x", 0.9, 0), suspect("b", 0.5, None), suspect("a/x", 0.7, 2),
                suspect("c", 0.3, 1)]
    order = sorted(suspects, key=lambda s: -s.score)
    names = overlay_names(order, top=3)  # a/x twice, then b: two pictures; c not shown
    assert names == {"a/x": "overlays/01_a__x.png", "b": "overlays/02_b.png"}
    lines = review_csv(order, names).splitlines()
    assert lines[0] == ("rank,id,annotation,shape,label,kind,score,predicted,area,confidence,"
                        "image_score,x0,y0,x1,y1,overlay")
    assert lines[1:] == [
        "1,a/x,a/x.json,0,circle,missing,0.9000,circle,50,0.9000,0.4000,1,2,3,4,overlays/01_a__x.png",
        "2,a/x,a/x.json,2,circle,missing,0.7000,circle,50,0.9000,0.4000,1,2,3,4,overlays/01_a__x.png",
        "3,b,b.json,,circle,missing,0.5000,circle,50,0.9000,0.4000,1,2,3,4,overlays/02_b.png",
        "4,c,c.json,1,circle,missing,0.3000,circle,50,0.9000,0.4000,1,2,3,4,"]


def test_images_rank_by_label_quality_and_suspects_follow_their_image() -> None:
    def scored(image: str, quality: float, scores: tuple[float, ...], fold: int) -> Scored:
        row = ManifestRow(image, f"{image}.json", f"images/{image}.png", f"masks/{image}.png",
                          8, 8, "", "", image, (64,), "")
        suspects = tuple(Suspect(image, f"{image}.json", k, "circle", "extra", score, "background",
                                 10, 0.9, quality, (k, 0, k, 0)) for k, score in enumerate(scores))
        return Scored(row, quality, suspects, (), fold)
    results = [scored("a", 0.30, (0.9,), 0), scored("b", 0.02, (0.2, 0.6), 1),
               scored("c", math.nan, (), 2), scored("d", 0.10, (), 0)]
    # the worst image first, even with the weaker suspects; within it, the strongest first
    assert [(s.id, s.score) for s in ranked(results)] == [("b", 0.6), ("b", 0.2), ("a", 0.9)]
    assert images_csv(results).splitlines() == [
        "rank,id,annotation,image_score,suspects,fold",
        "1,b,b.json,0.020000,2,1", "2,d,d.json,0.100000,0,0", "3,a,a.json,0.300000,1,0",
        "4,c,c.json,nan,0,2"]
