"""`segpipe predict`: masks at the original (EXIF-upright) size, palettes, bad files skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import segpipe
from helpers.learn import tiny_plan
from PIL import Image

from pipeline.errors import InputError
from pipeline.learn.model import ModelInfo, UNet, UNetConfig, load_model, pick_device, save_model
from pipeline.learn.predict import plan_jobs, predict_files
from pipeline.storage.masks import read_mask, voc_palette

CLASSES = ("background", "a", "b")


def _model(path: Path, constant: int = 2) -> Path:
    """An untrained U-Net that predicts `constant` on every pixel."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(n_classes=3, depth=2, base_width=4))
    with torch.no_grad():
        model.outc.weight.zero_()
        model.outc.bias.zero_()
        model.outc.bias[constant] = 5.0
    save_model(path, model.eval(), ModelInfo(model.config, CLASSES, data_fingerprint="test",
                                             plan=tiny_plan(patch=16)))
    return path


def _image(path: Path, width: int, height: int, *, orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(width * height).integers(0, 256, (height, width, 3),
                                                           dtype=np.uint8)
    image = Image.fromarray(rgb)
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation  # 6: the camera was turned; viewers rotate 90 degrees
        image.save(path, exif=exif)
    return path


def _photos(root: Path) -> Path:
    photos = root / "photos"
    _image(photos / "wide.png", 37, 21)
    _image(photos / "sub" / "tall.jpg", 9, 30)
    _image(photos / "camera.jpg", 30, 20, orientation=6)  # stored 30x20, upright 20x30
    _image(photos / ".hidden.png", 8, 8)
    (photos / "notes.txt").write_text("not an image, not looked at")
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = (photos / "wide.png").read_bytes()
    (photos / "sub" / "truncated.png").write_bytes(good[: len(good) // 2])
    return photos


def test_masks_have_the_original_upright_size_and_the_voc_palette(tmp_path: Path) -> None:
    model, info = load_model(_model(tmp_path / "model.pt"))
    photos = _photos(tmp_path)
    out = tmp_path / "out"
    jobs = plan_jobs([photos], out)
    assert [j.image.relative_to(photos).as_posix() for j in jobs] == [
        "broken.png", "camera.jpg", "wide.png", "sub/tall.jpg", "sub/truncated.png"]
    written, problems = predict_files(model, info, jobs, torch.device("cpu"), batch_size=2,
                                      kinds=("mask", "overlay"), progress=False)
    assert written == 3
    assert len(problems) == 2
    assert problems[0].startswith(f"{photos / 'broken.png'}: cannot read image: ")
    assert problems[1].startswith(f"{photos / 'sub' / 'truncated.png'}: cannot read image: ")
    expected = {"wide.png": (37, 21), "sub/tall.png": (9, 30), "camera.png": (20, 30)}
    for name, size in expected.items():
        with Image.open(out / name) as mask:
            assert mask.mode == "P"
            assert mask.size == size
            assert mask.getpalette()[:9] == voc_palette()[:9]
            assert np.array_equal(np.asarray(mask), np.full(size[::-1], 2, dtype=np.uint8))
        with Image.open(out / name.replace(".png", ".overlay.png")) as overlay:
            assert overlay.mode == "RGB"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "camera.overlay.png", "camera.png", "sub/tall.overlay.png", "sub/tall.png",
        "wide.overlay.png", "wide.png"]


def test_cli_skips_a_corrupt_image_says_so_and_exits_1(tmp_path: Path) -> None:
    model = _model(tmp_path / "model.pt", constant=1)
    good = _image(tmp_path / "good.png", 13, 11)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    result = segpipe("predict", str(model), str(bad), str(good), "--out",
                     str(tmp_path / "out"), "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"skipped {bad}: cannot read image: " in result.stderr
    assert "wrote the mask of 1 image(s)" in result.stderr
    assert "Traceback" not in result.stderr
    with Image.open(tmp_path / "out" / "good.png") as mask:
        assert mask.size == (13, 11)
        assert np.asarray(mask).max() == 1
    assert not (tmp_path / "out" / "bad.png").exists()


def test_outputs_that_clash_or_overwrite_inputs_are_refused(tmp_path: Path) -> None:
    a_jpg = _image(tmp_path / "in" / "a.jpg", 8, 8)
    a_png = _image(tmp_path / "in" / "a.png", 8, 8)
    with pytest.raises(InputError, match=r"a\.png: written by .*a\.jpg, .*a\.png"):
        plan_jobs([a_jpg, a_png], tmp_path / "out")
    with pytest.raises(InputError, match="would overwrite the input image"):
        plan_jobs([tmp_path / "in"], tmp_path / "in")
    assert not (tmp_path / "out").exists()


def test_the_output_folder_inside_the_input_folder_is_not_read_again(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _image(photos / "x.png", 8, 8)
    _image(photos / "masks" / "x.png", 8, 8)  # an earlier run's output
    jobs = plan_jobs([photos], photos / "masks")
    assert [j.image for j in jobs] == [photos / "x.png"]
    assert jobs[0].mask == photos / "masks" / "x.png"


def test_device_names_are_checked() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    mps = getattr(torch.backends, "mps", None)
    expected = "cuda" if torch.cuda.is_available() else \
        "mps" if mps is not None and mps.is_available() else "cpu"
    assert pick_device("auto").type == expected
    with pytest.raises(InputError, match="--device must be auto, cpu, cuda, cuda:N or mps, "
                                         "got 'gpu'"):
        pick_device("gpu", setting="--device")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device is 'cuda' but CUDA is not available here"):
            pick_device("cuda", setting="--device")


class ColourModel(torch.nn.Module):
    """A real torch model with fixed weights: class 1 where the image is red, 2 where it is
    blue, background elsewhere (each pixel on its own: clean, smooth shapes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        return torch.stack([0.5 + 0 * r, 4 * (r - g - b), 4 * (b - r - g)], dim=1)


def _scene(path: Path) -> np.ndarray:
    """An image with red and blue objects (a ring with an object in its hole, a thin bar);
    returns the mask the ColourModel predicts for it."""
    h, w = 90, 120
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.zeros((h, w), np.uint8)
    labels[(yy - 40) ** 2 + (xx - 40) ** 2 <= 30 ** 2] = 1
    labels[(yy - 40) ** 2 + (xx - 40) ** 2 <= 12 ** 2] = 0
    labels[(yy - 40) ** 2 + (xx - 40) ** 2 <= 5 ** 2] = 2
    labels[60:85, 80:115] = 2
    labels[20:23, 80:118] = 1
    rgb = np.full((h, w, 3), 200, np.uint8)
    rgb[labels == 1] = (230, 20, 20)
    rgb[labels == 2] = (20, 20, 230)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return labels


def test_labelme_pre_annotations_convert_back_to_the_predicted_masks(tmp_path: Path) -> None:
    model_path = tmp_path / "model.pt"
    info = ModelInfo(UNetConfig(n_classes=3, depth=2, base_width=4), CLASSES, "test",
                     tiny_plan(patch=32))
    save_model(model_path, UNet(info.config), info)  # a valid file; ColourModel predicts
    raw = tmp_path / "raw"
    expected = {name: _scene(raw / "batch" / f"{name}.png") for name in ("one", "two")}
    jobs = plan_jobs([raw / "batch"], raw / "batch", ("labelme",))
    written, problems = predict_files(ColourModel(), info, jobs, torch.device("cpu"),
                                      kinds=("labelme",), progress=False)
    assert (written, problems) == (2, [])
    doc = json.loads((raw / "batch" / "one.json").read_text())
    assert doc["imagePath"] == "one.png" and doc["imageData"] is None
    assert doc["flags"] == {"predicted": True}
    assert {s["label"] for s in doc["shapes"]} == {"a", "b", "background"}  # hole kept
    assert all(s["description"] == "predicted" for s in doc["shapes"])
    # the annotator's round trip: convert the files back
    (tmp_path / "params.yaml").write_text(
        "classes: [background, a, b]\nconvert: {raw_dir: raw, out_dir: prepared, "
        "reports_dir: reports}\n")
    assert segpipe("convert", "-j", "1", cwd=tmp_path).returncode == 0
    for name, labels in expected.items():
        back = read_mask(tmp_path / "prepared" / "masks" / "batch" / f"{name}.png")
        for value in (1, 2):
            inter = ((back == value) & (labels == value)).sum()
            union = ((back == value) | (labels == value)).sum()
            assert inter / union >= 0.99, (name, value, inter / union)
    # an existing Labelme file (an annotator may have corrected it) is never replaced
    with pytest.raises(InputError, match=r"one\.json: a Labelme file is there already"):
        plan_jobs([raw / "batch"], raw / "batch", ("labelme",))
