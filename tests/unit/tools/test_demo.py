"""`segpipe demo-data`: deterministic, annotated as the tools write it, masks = drawn pixels."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import PROJECT_ROOT, Run, segpipe
from PIL import Image

from pipeline.convert import formats, raster
from pipeline.core.records import is_error
from pipeline.params import load_params
from pipeline.tools import demo

N = 60  # smallest sample that still plants every defect and has every tool


@pytest.fixture(scope="module")
def sample() -> demo.DemoSummary:
    return demo.build(n=N, seed=0)


def _segpipe(*args: str, cwd: Path | None = None) -> Run:
    return segpipe(*args, cwd=cwd or Path.cwd())


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_runs_write_byte_identical_files(tmp_path: Path) -> None:
    for name in ("a", "b"):
        result = _segpipe("demo-data", str(tmp_path / name), "--n", str(N), "--seed", "3")
        assert result.returncode == 0, result.stderr
    first, second = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert len(first) > N
    assert first == second
    other = demo.build(n=N, seed=4)
    assert other.files != demo.build(n=N, seed=3).files


def test_if_empty_leaves_a_dir_with_files_alone(tmp_path: Path) -> None:
    (tmp_path / "mine.json").write_text("{}")
    result = _segpipe("demo-data", str(tmp_path), "--if-empty")
    assert result.returncode == 0, result.stderr
    assert "left as it is" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["mine.json"]


def test_counts_per_format_and_layout(sample: demo.DemoSummary) -> None:
    kinds = Counter(sample.samples.values())
    assert sum(kinds.values()) == N
    assert kinds == {"labelme": 41, "voc": 13, "labelme+voc": 6}
    # VOC-only scenes live under labelimg/ with their images beside the XML
    voc_ids = [i for i, k in sample.samples.items() if k == "voc"]
    assert all(i.startswith("labelimg/scene") for i in voc_ids)
    assert all(f"{i}.xml" in sample.files for i in voc_ids)
    suffixes = Counter(Path(p).suffix for p in sample.files)
    assert suffixes[".json"] == kinds["labelme"] + kinds["labelme+voc"]
    assert suffixes[".xml"] == kinds["voc"] + kinds["labelme+voc"]
    # every image but the two planted missing ones is on disk
    assert suffixes[".jpg"] + suffixes[".png"] == N - 2


def test_classes_match_params_yaml() -> None:
    assert load_params(PROJECT_ROOT / "params.yaml").labels.classes == demo.CLASSES


def test_every_defect_is_planted_once(sample: demo.DemoSummary) -> None:
    assert sorted(sample.defects) == sorted(demo.DEFECTS)
    assert len(set(sample.defects.values())) == len(demo.DEFECTS)
    f = sample.files
    ids = sample.defects
    with pytest.raises(json.JSONDecodeError):
        json.loads(f[ids["corrupt_json"] + ".json"])
    missing = json.loads(f[ids["missing_image"] + ".json"])
    assert missing["imageData"] is None
    assert not any(p.startswith(ids["missing_image"] + ".") and not p.endswith(".json")
                   for p in f)
    wrong = json.loads(f[ids["wrong_image_path"] + ".json"])
    assert wrong["imagePath"].startswith("export_2023/") and wrong["imageData"]
    assert json.loads(f[ids["no_shapes"] + ".json"])["shapes"] == []
    two = json.loads(f[ids["two_point_polygon"] + ".json"])["shapes"][-1]
    assert (two["shape_type"], len(two["points"])) == ("polygon", 2)
    labels = {s["label"] for s in json.loads(f[ids["unknown_label"] + ".json"])["shapes"]}
    assert labels & {"cirle", "sqaure", "triangel", "stra"}
    dup = ids["duplicate"]
    assert f[f"{dup}.jpg" if f"{dup}.jpg" in f else f"{dup}.png"] == f.get(
        f"{dup}_copy.jpg", f.get(f"{dup}_copy.png"))


def test_labelme_json_is_what_labelme_5_writes(sample: demo.DemoSummary) -> None:
    labels: Counter[str] = Counter()
    embedded = external = 0
    for path, data in sample.files.items():
        if not path.endswith(".json") or path.startswith(sample.defects["corrupt_json"]):
            continue
        doc = json.loads(data)
        assert list(doc)[:4] == ["version", "flags", "shapes", "imagePath"]
        assert doc["version"].startswith("5.") and doc["flags"] == {}
        for shape in doc["shapes"]:
            assert {"label", "points", "group_id", "description", "shape_type",
                    "flags"} <= set(shape)
            labels[shape["label"]] += 1
            assert shape["shape_type"] in ("polygon", "rectangle", "circle")
        if doc["imageData"]:
            embedded += 1
            Image.open(io.BytesIO(base64.b64decode(doc["imageData"]))).verify()
        else:
            external += 1
    assert embedded > 0 and external > 0
    assert {"tri", "box", "Circle"} <= set(labels)  # the spellings annotators use
    assert set(labels) - {"tri", "box", "Circle", "cirle", "sqaure", "triangel", "stra"} <= set(
        demo.CLASSES[1:])


def test_painted_pixels_match_the_annotation_masks(sample: demo.DemoSummary) -> None:
    """On lossless PNG frames the pixels inside each class region look like that region's
    shape colour, i.e. the image was painted from the geometry the annotation holds."""
    checked = 0
    for sample_id, frame in sample.frames.items():
        if frame.ext != "png" or f"{sample_id}.png" not in sample.files or not frame.shapes:
            continue
        pixels = np.asarray(Image.open(io.BytesIO(sample.files[f"{sample_id}.png"])), dtype=float)
        mask = demo.frame_mask(frame)
        top = demo._draw_order(frame.shapes)[-1]  # the last drawn shape is fully visible
        region = demo.shape_mask(top.kind, top.points, frame.width, frame.height)
        assert np.all(mask[region] == demo.CLASSES.index(top.cls))
        mean = pixels[region].mean(axis=0)
        assert np.abs(mean - np.array(top.colour)).max() < 30
        checked += 1
    assert checked >= 3


def test_readers_read_the_files_as_intended(tmp_path: Path, sample: demo.DemoSummary) -> None:
    """The project's readers see the planted read errors only; every other sample rasterises
    to exactly the mask its image was painted from."""
    demo.write(tmp_path, sample)
    records: dict[str, list] = {}
    errors: set[str] = set()
    for path in formats.find_annotations(tmp_path):
        record, issues = formats.read_annotation(path, tmp_path)
        if record is None or is_error(issues):
            errors.add(path.relative_to(tmp_path).with_suffix("").as_posix())
            continue
        records.setdefault(record.id, []).append(record)
    # the other planted errors (labels, sizes, 2-point polygons) are found by validation
    assert errors == {sample.defects["corrupt_json"], sample.defects["missing_image"]}
    assert len(records) == N - 2
    merged = {i: formats.merge_records(r) if len(r) > 1 else r[0] for i, r in records.items()}
    assert Counter(r.format for r in merged.values()) == {"labelme": 39, "voc": 13,
                                                          "voc+labelme": 6}
    classes = {c: i for i, c in enumerate(demo.CLASSES)}
    aliases = {"tri": "triangle", "box": "square"}
    planted = set(sample.defects.values())
    for sample_id, record in merged.items():
        if sample_id in planted and sample_id not in (sample.defects["past_border"],
                                                      sample.defects["no_shapes"]):
            continue
        frame = sample.frames[sample_id]
        pairs = [(s, classes[aliases.get(s.label, s.label.lower())]) for s in record.shapes]
        got = raster.rasterize(pairs, frame.width, frame.height)
        np.testing.assert_array_equal(got, demo.frame_mask(frame), err_msg=sample_id)


def test_shipped_benchmark_list_names_clean_samples_of_the_default_sample() -> None:
    # `make run` splits the default sample with split.benchmark = data/benchmark.txt: every id
    # there must be a sample the default demo writes, and none a planted defect
    params = load_params(PROJECT_ROOT / "params.yaml")
    listed = (PROJECT_ROOT / params.split.benchmark).read_text().split()
    default = demo.build()
    assert len(listed) == 26
    assert set(listed) <= set(default.samples)
    assert not set(listed) & set(default.defects.values())
