"""learn/train.py and learn/losses.py: the training stage on a tiny dataset (16 px patches,
depth 2, width 4, 12 steps), resume after a stop, the EMA, DVCLive logs, the CLI, the losses."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers.learn import CLASSES, make_dataset, tiny_params

from pipeline.cli import main
from pipeline.core.manifest import data_fingerprint
from pipeline.core.records import IGNORE
from pipeline.errors import ParamsError
from pipeline.learn.losses import cross_entropy, dice_loss, make_loss
from pipeline.learn.model import load_model
from pipeline.learn.train import lr_at, train, update_ema
from pipeline.params import Params, parse_params


def _params(root: Path, **train: Any) -> Params:
    return parse_params(tiny_params(root, **train))


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    make_dataset(tmp_path, n=12, n_val=4)
    return tmp_path


def test_training_writes_model_checkpoint_plan_and_logs(tiny: Path) -> None:
    result = train(_params(tiny, amp="off"), progress=False)
    assert result.start_step == 0 and result.steps_done == 12
    assert [h.step for h in result.history] == [4, 8, 12]  # validated every val_every steps
    losses = [h.loss for h in result.history]
    assert losses[2] < losses[0]  # it learns
    model, info = load_model(tiny / "models" / "model.pt")
    assert info.classes == CLASSES and info.plan == result.plan
    assert (info.plan.patch, info.plan.steps, info.config.depth, info.config.base_width) == \
        (16, 12, 2, 4)
    assert info.dataset["classes"]["square"]["images"] == 12  # the fingerprint it came from
    manifest = tiny / "prepared" / "manifest.csv"
    assert info.data_fingerprint == data_fingerprint(manifest, tiny / "splits/splits.csv")
    ckpt = torch.load(tiny / "models" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 12
    assert set(ckpt) >= {"model", "ema", "optimizer", "data_fingerprint", "resume_key"}
    _assert_same_state(ckpt["ema"], model.state_dict())  # the model file holds the EMA weights
    assert not torch.equal(ckpt["model"]["state_dict"]["outc.weight"],
                           model.state_dict()["outc.weight"])
    plan = json.loads((tiny / "reports" / "plan.json").read_text())
    assert plan["plan"]["steps"] == 12 and plan["amp"] is False
    assert plan["fingerprint"]["images"] == 12
    logs = tiny / "reports" / "train"
    metrics = json.loads((logs / "metrics.json").read_text())
    assert metrics["step"] == 12 and set(metrics) >= {"train", "val"}
    assert set(metrics["val"]) >= {"miou", "iou"}
    loss_rows = (logs / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in loss_rows] == ["step", "4", "8", "12"]
    assert not (logs / "dvc.yaml").exists()


def test_same_seed_same_weights_other_seed_other_weights(tiny: Path) -> None:
    first = train(_params(tiny, resume=False), progress=False).weights_hash
    again = train(_params(tiny, resume=False), progress=False).weights_hash
    other = train(_params(tiny, resume=False, seed=1), progress=False).weights_hash
    assert first == again and other != first


def test_a_stopped_run_resumes_to_the_same_weights(tiny: Path) -> None:
    full = train(_params(tiny, model_path="full/model.pt", checkpoint_path="full/ckpt.pt"),
                 progress=False)
    kw = {"model_path": "parts/model.pt", "checkpoint_path": "parts/ckpt.pt"}
    part = train(_params(tiny, **kw), stop_after=3, progress=False)  # a kill between validations
    assert part.steps_done == 3 and not (tiny / "parts" / "model.pt").exists()
    part = train(_params(tiny, **kw), stop_after=6, progress=False)
    assert (part.start_step, part.steps_done) == (3, 9)
    rest = train(_params(tiny, **kw), progress=False)
    assert (rest.start_step, rest.steps_done) == (9, 12)
    _assert_same_state(_state(tiny / "full" / "model.pt"), _state(tiny / "parts" / "model.pt"))
    assert rest.weights_hash == full.weights_hash
    assert [h.val_miou for h in rest.history if h.step in (4, 8, 12)] == \
        [h.val_miou for h in full.history]
    # a finished checkpoint: nothing left to train, the model is written again
    again = train(_params(tiny, **kw), progress=False)
    assert (again.start_step, again.steps_done, again.weights_hash) == (12, 12, full.weights_hash)


def test_checkpoint_of_other_config_or_data_is_not_resumed(tiny: Path, capsys) -> None:
    train(_params(tiny), stop_after=4, progress=False)
    capsys.readouterr()
    other = train(_params(tiny, lr=0.02), stop_after=4, progress=False)
    assert other.start_step == 0
    assert "starting fresh: " in capsys.readouterr().err
    # a changed split changes the data fingerprint
    splits = tiny / "splits" / "splits.csv"
    splits.write_text(splits.read_text().replace("img_000,train", "img_000,val"))
    fresh = train(_params(tiny, lr=0.02), stop_after=4, progress=False)
    assert fresh.start_step == 0
    assert "trained on other data" in capsys.readouterr().err
    # the resume-irrelevant fields (threads, paths of logs) do not block a resume
    resumed = train(_params(tiny, lr=0.02, threads=2), progress=False)
    assert resumed.start_step == 4 and resumed.steps_done == 12


def test_config_errors_are_reported_together(tiny: Path) -> None:
    with pytest.raises(ParamsError) as info:
        _params(tiny, loss="focal", amp="fp16", batch_size=0, patch="big")
    assert str(info.value).splitlines() == [
        "params.yaml: train.patch must be auto or an integer, got 'big'",
        "params.yaml: train.batch_size must be auto or in [1, 4096], got 0",
        "params.yaml: train.loss must be one of ['ce', 'dice', 'ce_dice'], got 'focal'",
        "params.yaml: train.amp must be one of ['auto', 'bf16', 'off'], got 'fp16'"]
    with pytest.raises(ParamsError) as info:  # checks between fields, once each field is valid
        _params(tiny, patch=12, depth=4, scale_min=2.0, scale_max=1.5, scale=0.5, long_side=80)
    assert str(info.value).splitlines() == [
        "params.yaml: train.patch must be >= 2**depth = 16, got 12",
        "params.yaml: train.scale and train.long_side must not both be set (one resizes every "
        "image by a factor, the other to a long side), got 0.5 and 80",
        "params.yaml: train.scale_min must be <= train.scale_max, got 2.0 > 1.5"]


def test_bf16_autocast_trains_on_cpu(tiny: Path) -> None:
    fp32 = train(_params(tiny, amp="off", resume=False), progress=False)
    fp32_state = _state(tiny / "models" / "model.pt")
    bf16 = train(_params(tiny, amp="bf16", channels_last="on", resume=False), progress=False)
    assert bf16.history[-1].loss < bf16.history[0].loss  # it learns in bf16 too
    assert abs(bf16.history[0].loss - fp32.history[0].loss) < 0.05 * fp32.history[0].loss
    model, info = load_model(tiny / "models" / "model.pt")
    assert info.amp and info.channels_last  # recorded with the model
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    assert bf16.weights_hash != fp32.weights_hash  # autocast really ran in bf16
    assert not torch.equal(model.state_dict()["outc.weight"], fp32_state["outc.weight"])


def test_the_ema_follows_the_weights_with_its_decay() -> None:
    ema, model = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        ema.weight.fill_(1.0)
        model.weight.fill_(3.0)
    update_ema(ema, model, 0.75)
    torch.testing.assert_close(ema.weight, torch.full((1, 2), 1.5))  # 0.75 * 1 + 0.25 * 3
    update_ema(ema, model, 0.0)
    torch.testing.assert_close(ema.weight, model.weight)


def test_cli_trains_and_reports_errors_in_one_line(tiny: Path, monkeypatch, capsys) -> None:
    params_file = tiny / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params(tiny, steps=4)))
    monkeypatch.chdir(tiny)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    assert main(["train", "--params", str(params_file)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("plan: scale x1")  # the plan comes first, with its reasons
    assert "  steps 4: set in params" in err and "step 4/4: loss" in err
    assert (tiny / "models" / "model.pt").is_file()
    (tiny / "prepared" / "manifest.csv").unlink()
    assert main(["train", "--params", str(params_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().endswith("manifest.csv: file not found")
    assert "Traceback" not in err


def test_lr_warms_up_then_decays_to_zero() -> None:
    values = [lr_at(step, 100, 10, 1.0) for step in range(101)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))


# ---------------------------------------------------------------- losses


def _logits_target(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    target[0, :3] = IGNORE
    return logits, target


def test_cross_entropy_ignores_255_and_weights_classes() -> None:
    logits, target = _logits_target()
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    assert torch.allclose(cross_entropy(logits, target),
                          F.cross_entropy(logits, target, ignore_index=IGNORE))
    assert torch.allclose(cross_entropy(logits, target, weight),
                          F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE))
    assert cross_entropy(logits, torch.full_like(target, IGNORE)).item() == 0.0  # not NaN


def test_dice_skips_ignored_pixels() -> None:
    logits, target = _logits_target()
    changed = logits.clone()
    changed[0, :, :3] = 100.0 * torch.randn(4, 3, 8)  # anything at ignored pixels
    assert torch.equal(dice_loss(logits, target), dice_loss(changed, target))
    perfect = F.one_hot(torch.where(target == IGNORE, 0, target), 4).permute(0, 3, 1, 2) * 50.0
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < dice_loss(logits, target).item() < 1.0


def test_make_loss_combines_and_checks() -> None:
    logits, target = _logits_target()
    both = make_loss("ce_dice", 4)(logits, target)
    assert torch.allclose(both, cross_entropy(logits, target) + dice_loss(logits, target))
    assert torch.equal(make_loss("dice", 4)(logits, target), dice_loss(logits, target))
    with pytest.raises(ValueError, match="loss must be one of"):
        make_loss("focal", 4)
    with pytest.raises(ValueError, match=r"one weight per class \(4\), got 2"):
        make_loss("ce", 4, (1.0, 2.0))
