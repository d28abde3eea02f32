"""`segpipe evaluate` end to end on a tiny dataset written in tmp_path."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.learn import manifest_row, tiny_plan, write_table
from PIL import Image

from pipeline.core.hashing import content_hash
from pipeline.core.manifest import data_fingerprint
from pipeline.errors import InputError
from pipeline.learn.evaluate import command, run_evaluate
from pipeline.learn.model import ModelInfo, UNet, UNetConfig, load_model, save_model
from pipeline.learn.predict import plan_jobs, predict_files
from pipeline.params import load_params
from pipeline.storage.masks import write_mask

CLASSES = ("background", "a", "b")


def _masks() -> dict[str, np.ndarray]:
    img0 = np.zeros((10, 12), dtype=np.uint8)
    img0[:5, :6] = 1  # 30 px of class a
    img0[9, :] = 255  # 12 ignored px
    img1 = np.full((8, 8), 2, dtype=np.uint8)
    img1[:4, :4] = 1  # 16 px of a, 48 px of b
    img2 = np.full((6, 5), 2, dtype=np.uint8)  # benchmark
    img3 = np.zeros((4, 4), dtype=np.uint8)  # train: its image is broken and never read
    return {"img0": img0, "img1": img1, "img2": img2, "img3": img3}


SPLIT = {"img0": "val", "img1": "val", "img2": "benchmark", "img3": "train"}


def _dataset(root: Path, *, benchmark: bool = True) -> None:
    prepared = root / "data" / "prepared"
    rng = np.random.default_rng(0)
    rows = []
    for sample_id, mask in _masks().items():
        image_path = prepared / "images" / f"{sample_id}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        if sample_id == "img3":
            image_path.write_bytes(b"not an image")
        else:
            rgb = rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(image_path)
        rows.append(manifest_row(prepared, sample_id, f"images/{sample_id}.png", mask, CLASSES))
    write_table(prepared / "manifest.csv", rows)
    splits = root / "data" / "splits" / "splits.csv"
    splits.parent.mkdir(parents=True)
    with splits.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "group", "split"])
        for sample_id, split in SPLIT.items():
            if split == "benchmark" and not benchmark:
                split = "train"
            writer.writerow([sample_id, sample_id, split])
    (root / "params.yaml").write_text(
        "classes: [background, a, b]\n"
        "evaluate:\n  batch_size: 1\n  worst_k: 8\n  device: cpu\n  workers: 1\n")


def _model(root: Path, constant: int | None = None, seed: int = 0) -> UNet:
    """An untrained U-Net; `constant` makes it predict that class everywhere, else its output
    layer is scaled up so the prediction varies from pixel to pixel."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig(n_classes=3, depth=2, base_width=4))
    with torch.no_grad():
        model.outc.weight.mul_(30.0)
        model.outc.bias.zero_()
    if constant is not None:
        with torch.no_grad():
            model.outc.weight.zero_()
            model.outc.bias.copy_(torch.tensor([0.0, 0.0, 0.0]))
            model.outc.bias[constant] = 5.0
    prepared = root / "data" / "prepared"
    fp = data_fingerprint(prepared / "manifest.csv", root / "data" / "splits" / "splits.csv")
    save_model(root / "models" / "model.pt", model.eval(),
               ModelInfo(model.config, CLASSES, data_fingerprint=fp,
                         plan=tiny_plan(patch=16)))
    return model


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_constant_model_gives_the_hand_computed_metrics(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _dataset(tmp_path)
    _model(tmp_path, constant=1)  # predicts "a" on every pixel
    monkeypatch.chdir(tmp_path)
    command.main(["--params", "params.yaml"], standalone_mode=False)

    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    # val: gt background 78 px, a 30 + 16 = 46 px, b 48 px (12 ignored), all predicted "a"
    assert metrics["split"] == "val"
    assert metrics["n_images"] == 2
    assert metrics["support"] == {"background": 78, "a": 46, "b": 48}
    assert metrics["iou"] == {"background": 0.0, "a": 46 / 172, "b": 0.0}
    assert metrics["dice"] == {"background": 0.0, "a": 92 / 218, "b": 0.0}
    assert metrics["precision"] == {"background": None, "a": 46 / 172, "b": None}
    assert metrics["recall"] == {"background": 0.0, "a": 1.0, "b": 0.0}
    assert metrics["aacc"] == 46 / 172
    assert metrics["miou"] == pytest.approx(46 / 172 / 3)
    assert metrics["miou_fg"] == pytest.approx(46 / 172 / 2)
    ids_hashes = sorted(
        (r["id"], r["image_hash"], r["mask_hash"])
        for r in _read_csv(tmp_path / "data" / "prepared" / "manifest.csv")
        if SPLIT[r["id"]] == "val")
    assert metrics["eval_fingerprint"] == content_hash(
        "\n".join("\t".join(t) for t in ids_hashes).encode())
    assert metrics["data_fingerprint"] == data_fingerprint(
        tmp_path / "data" / "prepared" / "manifest.csv",
        tmp_path / "data" / "splits" / "splits.csv")

    # benchmark: img2 is 30 px of "b", all predicted "a"; background absent from both: null
    bench = metrics["benchmark"]
    assert bench["split"] == "benchmark" and bench["n_images"] == 1
    assert bench["iou"] == {"background": None, "a": 0.0, "b": 0.0}
    assert bench["miou"] == 0.0 and bench["miou_fg"] == 0.0
    assert bench["eval_fingerprint"] != metrics["eval_fingerprint"]

    out = tmp_path / "reports" / "eval"
    assert _read_csv(out / "per_class.csv")[1] == {
        "class": "a", "iou": str(46 / 172), "dice": str(92 / 218),
        "precision": str(46 / 172), "recall": "1.0", "support": "46"}
    assert _read_csv(out / "per_class.csv")[0]["precision"] == ""  # undefined, not 0
    confusion = _read_csv(out / "confusion.csv")
    assert len(confusion) == 9
    assert {(r["gt"], r["pred"]): int(r["count"]) for r in confusion if r["count"] != "0"} == {
        ("background", "a"): 78, ("a", "a"): 46, ("b", "a"): 48}
    assert len(_read_csv(out / "benchmark" / "confusion.csv")) == 9

    # worst first by the image's own mIoU: img1 (0.25 + 0) / 2 = 0.125, img0 (0 + 30/108) / 2
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["01_img1.png", "02_img0.png"]
    with Image.open(out / "overlays" / "02_img0.png") as image:
        assert image.mode == "RGB"
        assert image.height > 10 and image.width > 3 * 12
    report = (out / "report.md").read_text()
    assert "| a | 0.2674 | 0.4220 | 0.2674 | 1.0000 | 46 | 26.7 % |" in report
    assert "| 1 | img1 | 0.1250 | [01_img1.png](overlays/01_img1.png) |" in report
    assert "| 2 | img0 | 0.1389 | [02_img0.png](overlays/02_img0.png) |" in report
    assert "## benchmark (1 images, 30 pixels)" in report


def test_metrics_equal_those_recomputed_from_predict_outputs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A random model: metrics.json must equal a numpy confusion matrix built from the
    full-size masks that `segpipe predict` writes for the same images."""
    _dataset(tmp_path, benchmark=False)
    (tmp_path / "params.yaml").write_text(
        "classes: [background, a, b]\n"
        "evaluate:\n  batch_size: 1\n  worst_k: 1\n  device: cpu\n  workers: 2\n")
    _model(tmp_path, seed=2)
    stale = tmp_path / "reports" / "eval" / "overlays" / "07_old.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    monkeypatch.chdir(tmp_path)
    metrics = run_evaluate(load_params("params.yaml"), progress=False)
    assert "benchmark" not in metrics
    assert json.loads(Path("reports/metrics.json").read_text())["miou"] == metrics["miou"]

    images = [Path(f"data/prepared/images/{i}.png") for i in ("img0", "img1")]
    loaded, info = load_model("models/model.pt")
    written, problems = predict_files(loaded, info, plan_jobs(images, Path("pred")),
                                      torch.device("cpu"), batch_size=1, progress=False)
    assert (written, problems) == (2, [])
    cm = np.zeros((3, 3), dtype=np.int64)
    for sample_id, gt in _masks().items():
        if SPLIT[sample_id] != "val":
            continue
        with Image.open(f"pred/{sample_id}.png") as image:
            pred = np.asarray(image)
        assert pred.shape == gt.shape
        assert len(np.unique(pred)) > 1  # a prediction that varies
        keep = gt != 255
        cm += np.bincount(3 * gt[keep].astype(np.int64) + pred[keep], minlength=9).reshape(3, 3)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = [tp[i] / union[i] if union[i] else math.nan for i in range(3)]
    for i, name in enumerate(CLASSES):
        got = metrics["iou"][name]  # type: ignore[index]
        assert (math.isnan(iou[i]) and math.isnan(got)) or got == pytest.approx(iou[i], abs=1e-12)
    assert metrics["support"] == dict(zip(CLASSES, cm.sum(1).tolist(), strict=True))
    assert metrics["aacc"] == pytest.approx(tp.sum() / cm.sum())
    confusion = _read_csv(Path("reports/eval/confusion.csv"))
    assert [int(r["count"]) for r in confusion] == cm.reshape(-1).tolist()
    # worst_k: 1 -> one overlay; the stale one from an earlier run is gone
    assert len(list(Path("reports/eval/overlays").iterdir())) == 1
    assert not stale.exists()


def test_images_json_has_each_images_group_and_counts_that_sum_to_the_metrics(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dataset(tmp_path)
    splits = tmp_path / "data" / "splits" / "splits.csv"
    # img0 and img1 are frames of one scene: one split group, what the gate resamples
    splits.write_text("id,group,split\nimg0,sceneA,val\nimg1,sceneA,val\nimg2,img2,benchmark\n"
                      "img3,img3,train\n")
    _model(tmp_path, constant=1)  # predicts "a" on every pixel
    monkeypatch.chdir(tmp_path)
    metrics = run_evaluate(load_params("params.yaml"), progress=False)
    text = Path("reports/images.json").read_text()
    val_fp = metrics["eval_fingerprint"]
    bench_fp = metrics["benchmark"]["eval_fingerprint"]  # type: ignore[index]
    # img0: 78 background + 30 a px scored (12 ignored); img1: 16 a + 48 b; img2: 30 b
    assert text == """{
  "classes": ["background", "a", "b"],
  "val": {
    "eval_fingerprint": "VAL",
    "images": [
      {"id": "img0", "group": "sceneA", "intersection": [0, 30, 0], "union": [78, 108, 0]},
      {"id": "img1", "group": "sceneA", "intersection": [0, 16, 0], "union": [0, 64, 48]}
    ]
  },
  "benchmark": {
    "eval_fingerprint": "BENCH",
    "images": [
      {"id": "img2", "group": "img2", "intersection": [0, 0, 0], "union": [0, 30, 30]}
    ]
  }
}
""".replace("VAL", str(val_fp)).replace("BENCH", str(bench_fp))
    assert metrics["iou"] == {"background": 0.0, "a": 46 / 172, "b": 0.0}  # = (30+16)/(108+64)


def test_unusable_samples_are_all_named_and_nothing_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dataset(tmp_path)
    _model(tmp_path, constant=0)
    prepared = tmp_path / "data" / "prepared"
    (prepared / "images" / "img0.png").write_bytes(b"truncated")
    bad = _masks()["img1"].copy()
    bad[0, 0] = 7  # not a class
    write_mask(prepared / "masks" / "img1.png", bad)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        run_evaluate(load_params("params.yaml"), progress=False)
    message = str(info.value)
    assert message.startswith("2 of 2 val samples cannot be evaluated:")
    assert "img0: cannot identify image file" in message
    assert "img1: mask class values must be in [0, 3) or 255 (ignore), got [7]" in message
    assert not (tmp_path / "reports" / "metrics.json").exists()


def test_model_with_other_classes_is_a_clear_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _dataset(tmp_path)
    _model(tmp_path)
    (tmp_path / "params.yaml").write_text("classes: [background, a, c]\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"the model's classes \['background', 'a', 'b'\] "
                                         r"must equal params classes \['background', 'a', 'c'\]"):
        run_evaluate(load_params("params.yaml"), progress=False)
