"""`segpipe review` end to end on a tiny sample with planted mistakes: real convert, split and
fold training (tiny models), the suspects ranked and mapped back to file and shape."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from helpers import segpipe

from pipeline.tools import demo

PARAMS = {
    "classes": list(demo.CLASSES), "aliases": {"tri": "triangle", "box": "square"},
    "convert": {"raw_dir": "raw", "jobs": 1},
    "split": {"group_pattern": r"(?P<group>scene\d+)_"},
    "train": {"patch": 64, "depth": 3, "base_width": 8, "batch_size": 8, "lr": 0.01,
              "threads": 2},
    "review": {"folds": 3, "steps": 200, "top": 5},
}


def plant(raw: Path) -> tuple[str, int]:
    """Delete the first circle of one Labelme file (the annotator forgot it); returns the
    file and the index the circle had."""
    for path in sorted(raw.glob("scene*.json")):
        doc = json.loads(path.read_text())
        for i, shape in enumerate(doc["shapes"]):
            if shape["label"] == "circle" and shape["shape_type"] == "circle":
                del doc["shapes"][i]
                path.write_text(json.dumps(doc))
                return path.name, i
    raise AssertionError("no circle to delete")


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("review")
    demo.write(root / "raw", demo.build(n=60, seed=0, defects=False))
    planted, _ = plant(root / "raw")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for stage in ("convert", "split", "review"):
        done = segpipe(stage, cwd=root)
        assert done.returncode == 0, done.stderr
    return root, planted


def rows(root: Path) -> list[dict[str, str]]:
    with (root / "reports" / "review" / "review.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_forgotten_object_is_the_top_suspect_at_its_place(reviewed) -> None:
    root, planted = reviewed
    found = rows(root)
    assert found, "no suspect at all"
    top = found[0]
    assert (top["annotation"], top["kind"], top["predicted"], top["shape"]) == \
        (planted, "missing", "circle", "")
    metrics = json.loads((root / "reports" / "review.json").read_text())
    assert metrics["images"] == 60 and metrics["kinds"]["missing"] >= 1
    md = (root / "reports" / "review" / "review.md").read_text()
    assert f"`{planted}`" in md and (root / "reports" / "review" / "overlays").is_dir()


def test_the_ranking_is_deterministic_for_a_fixed_seed(reviewed) -> None:
    root, _ = reviewed
    before = (root / "reports" / "review" / "review.csv").read_bytes()
    done = segpipe("review", cwd=root)  # the fold models are reused: the scores again
    assert done.returncode == 0, done.stderr
    assert (root / "reports" / "review" / "review.csv").read_bytes() == before
