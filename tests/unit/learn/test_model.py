"""pipeline.model: the U-Net's shapes, its parts, and the self-describing checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers.learn import tiny_plan

from pipeline.errors import InputError
from pipeline.learn.model import (
    DoubleConv,
    Down,
    ModelInfo,
    UNet,
    UNetConfig,
    Up,
    load_model,
    save_model,
)

TINY = UNetConfig(n_classes=3, depth=2, base_width=4)


def _info(config: UNetConfig = TINY) -> ModelInfo:
    return ModelInfo(config=config, classes=("background", "square", "disc")[:config.n_classes],
                     data_fingerprint="f" * 32, plan=tiny_plan())


@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
@pytest.mark.parametrize("size", [(32, 32), (33, 47), (17, 9), (4, 4)])
def test_logits_have_the_input_size(upsample: str, size: tuple[int, int]) -> None:
    model = UNet(dataclasses.replace(TINY, upsample=upsample)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, *size)


def test_depth_and_width_set_the_levels() -> None:
    model = UNet(UNetConfig(n_classes=5, depth=3, base_width=8))
    assert len(model.downs) == 3 and len(model.ups) == 3
    assert [d[1][0].out_channels for d in model.downs] == [16, 32, 64]
    assert [u.conv[3].out_channels for u in model.ups] == [32, 16, 8]
    assert model.outc.out_channels == 5
    bigger = UNet(UNetConfig(n_classes=5, depth=3, base_width=16))
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in bigger.parameters()) > 3.5 * n_params


def test_parts_read_like_the_diagram() -> None:
    block = DoubleConv(3, 8)
    assert [type(m).__name__ for m in block] == ["Conv2d", "BatchNorm2d", "ReLU"] * 2
    assert block[0].kernel_size == (3, 3) and block[0].padding == (1, 1)
    down = Down(8, 16)
    assert down(torch.rand(1, 8, 9, 9)).shape == (1, 16, 4, 4)  # floor for odd sizes
    up = Up(16, 8, 8, "transpose")
    # the upsampled 8x8 map is padded to the 9x9 skip before the concatenation
    assert up(torch.rand(1, 16, 4, 4), torch.rand(1, 8, 9, 9)).shape == (1, 8, 9, 9)


def test_normalisation_is_inside_the_model() -> None:
    model = UNet(TINY)
    assert "norm.mean" not in model.state_dict()  # constants, not weights
    x = torch.full((1, 3, 8, 8), 0.5)
    normed = model.norm(x)
    assert torch.allclose(normed[0, :, 0, 0],
                          torch.tensor([(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224,
                                        (0.5 - 0.406) / 0.225]))


def test_bad_config_names_every_problem() -> None:
    with pytest.raises(ValueError, match=r"n_classes must be >= 2, got 1; .*upsample must be"):
        UNetConfig(n_classes=1, upsample="nearest")


def test_checkpoint_rebuilds_its_own_model(tmp_path: Path) -> None:
    config = UNetConfig(n_classes=3, depth=3, base_width=4, upsample="transpose")
    torch.manual_seed(0)
    model = UNet(config)
    model.train()
    model(torch.rand(4, 3, 16, 16))  # move the BatchNorm running statistics
    model.eval()
    path = tmp_path / "models" / "model.pt"
    save_model(path, model, _info(config))
    loaded, info = load_model(path)
    assert info == _info(config)
    assert info.plan == tiny_plan() and info.plan.working_size(30, 40) == (30, 40)
    assert not loaded.training
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left


def test_load_model_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model file not found"):
        load_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="must be a model checkpoint written by segpipe train"):
        load_model(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(InputError, match=r"must be a segpipe model \(segpipe-unet/2\), got None"):
        load_model(other)
    good = tmp_path / "good.pt"
    save_model(good, UNet(TINY), _info())
    assert load_model(good)[1].classes == ("background", "square", "disc")  # still loads


def test_saving_the_same_model_twice_writes_the_same_bytes(tmp_path: Path) -> None:
    # dvc.lock records the model's hash: a re-run that reproduces the weights must reproduce
    # the file too (torch.save names its zip archive after the file it writes to)
    torch.manual_seed(0)
    model = UNet(TINY)
    save_model(tmp_path / "a" / "model.pt", model, _info())
    save_model(tmp_path / "b" / "other-name.pt", model, _info())
    assert (tmp_path / "a" / "model.pt").read_bytes() == \
        (tmp_path / "b" / "other-name.pt").read_bytes()
