"""`segpipe train`: the U-Net training stage, a flat loop in the style of nanoGPT.

    1. the plan (learn/plan.py) from the dataset fingerprint and the device; precision
    2. data: uint8 caches at the working scale      3. model, EMA, optimiser, loss
    4. resume from the checkpoint                    5. DVCLive
    6. steps: class-aware crops -> augment on the device -> forward, loss, backward, AdamW
       (warm-up + cosine LR) -> EMA; every val_every steps: val mIoU of the EMA weights,
       DVCLive, checkpoint
    7. the processes agree; models/model.pt holds the EMA weights, the plan and the fingerprint

Device: `train.device: auto` picks CUDA, then MPS, then the CPU. `train.amp: auto` uses bf16
autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX: 2-3x faster), fp32
elsewhere; channels_last goes with it. On the CPU deterministic algorithms are on: the same
seed on the same machine gives the same weights. On CUDA: pinned memory, non-blocking copies,
cudnn.benchmark; `train.compile` adds torch.compile.

Multi-GPU / multi-node: the same script under `torchrun` (one process per GPU, NCCL; gloo on
the CPU). Step k's global batch is G = batch_size * grad_accum * W crops, drawn from
(seed, k) alone on every process; process r's micro-batch m takes the crops at positions
r + W*m, r + W*m + W*A, ... with the augmentation numbers drawn for those positions. So W
processes with grad_accum A and one process with grad_accum W*A compute the same micro-batches
and average the same gradients: their weights agree exactly (tested with 2 gloo processes vs 1
process with grad_accum 2), except the BatchNorm running statistics, which DDP keeps per
process (rank 0's are broadcast at every validation). Only rank 0 writes files.

Resume: at every validation rank 0 writes train.checkpoint_path (weights, EMA weights,
optimiser, step, history, the result-relevant config and plan). A run starts from it when the
data fingerprint and that config match, else it starts fresh and says why. Crops and
augmentation of a step come from (seed, step) alone, so a run killed at any point and resumed
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.core.fingerprint import Fingerprint
from pipeline.core.hashing import content_hash
from pipeline.core.manifest import (
    ManifestRow,
    data_fingerprint,
    load_dataset,
    manifest_path,
    select,
)
from pipeline.errors import InputError, StageFailed
from pipeline.learn import data
from pipeline.learn.inference import Precision, cpu_has_bf16, logit_bands
from pipeline.learn.losses import make_loss
from pipeline.learn.metrics import confusion_matrix, segmentation_metrics
from pipeline.learn.model import (
    ModelInfo,
    UNet,
    UNetConfig,
    model_payload,
    pick_device,
    save_model,
    unwrap,
    write_torch,
)
from pipeline.learn.plan import Plan, make_plan
from pipeline.params import Params, TrainParams, params_option
from pipeline.progress import Progress
from pipeline.storage.files import folder_lock, write_json

TRAIN_CHECKPOINT_FORMAT = "segpipe-train/2"
#: TrainParams fields that do not change the weights a run ends with (not part of the resume key)
NOT_RESULT_FIELDS = frozenset({"model_path", "checkpoint_path", "cache_dir", "log_dir",
                               "plan_path", "device", "threads", "compile", "resume"})


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class TrainData:
    fingerprint: str  # of the manifest + split the model trains on
    train: data.Cache
    val: data.Cache | None


@dataclass(frozen=True)
class ValLog:
    step: int  # optimiser steps done
    loss: float  # mean training loss since the previous validation (all processes)
    lr: float  # learning rate at the last step
    val_miou: float  # of the EMA weights at the working scale; NaN without a val split
    val_iou: tuple[float, ...]
    seconds: float  # since the previous validation


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    plan: Plan
    start_step: int  # steps already done when this run started (0 = fresh)
    steps_done: int
    history: tuple[ValLog, ...]  # every validation since the fresh start (resumed included)
    weights_hash: str  # content hash of the final EMA weights (equal on every process)

    @property
    def val_miou(self) -> float:
        return self.history[-1].val_miou if self.history else math.nan


# ---------------------------------------------------------------- the stage


def train(params: Params, *, stop_after: int | None = None, progress: bool = True,
          log: TextIO | None = None) -> TrainResult:
    """Train (or resume) the model described by params.train on the manifest + split.

    stop_after: end this run after that many optimiser steps (a checkpoint is written); the
    next run resumes. `log`: where status lines go (default stderr).
    """
    cfg = params.train
    env = dist_from_env()
    device = pick_device(cfg.device, env.local_rank, "train.device")
    if env.world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // env.local_world_size)
    owned = [Path(cfg.model_path).parent, Path(cfg.checkpoint_path).parent, cfg.cache_dir,
             cfg.log_dir]  # rank 0 writes them; two runs at once would mix checkpoints
    try:
        with folder_lock(owned, "train") if env.main else contextlib.nullcontext(), \
                torch_settings(threads, deterministic=device.type == "cpu",
                               benchmark=device.type == "cuda"):
            return _run(params, env, device, stop_after, progress, log or sys.stderr, threads)
    finally:
        if env.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _backward(model: nn.Module, micro: Sequence[Micro],
              aug: data.Augment, plan: Plan, precision: Precision, loss_fn: nn.Module,
              env: Dist, device: torch.device) -> torch.Tensor:
    """Forward and backward of one optimiser step's micro-batches; returns the step's loss
    (the sum of the micro-batches' share of it, detached)."""
    total = torch.zeros((), device=device)
    for m, (windows, masks, draws) in enumerate(micro):
        x, y = data.apply_augment(windows.to(device, non_blocking=True),
                                  masks.to(device, non_blocking=True), aug, draws, plan.patch)
        x = x.contiguous(memory_format=precision.memory_format)
        # DDP: average the gradients once, after the last micro-batch
        sync = model.no_sync() if env.world_size > 1 and m < len(micro) - 1 and hasattr(
            model, "no_sync") else contextlib.nullcontext()
        with sync:
            with precision.autocast(device):
                logits = model(x)
            loss = loss_fn(logits, y) / len(micro)
            loss.backward()
        total += loss.detach()
    return total


def _run(params: Params, env: Dist, device: torch.device, stop_after: int | None,
         progress: bool, log: TextIO, threads: int) -> TrainResult:
    cfg, classes = params.train, tuple(params.labels.classes)
    cuda = device.type == "cuda"

    def say(text: str) -> None:
        if env.main:
            print(text, file=log, flush=True)

    # 1. the data version, the plan from the dataset fingerprint, precision for this device
    version = data_fingerprint(manifest_path(params.convert.out_dir), params.split.splits_path)
    fingerprint = read_fingerprint(Path(params.convert.reports_dir) / "data.json")
    plan = make_plan(fingerprint, cfg, classes, device.type)
    precision = choose_precision(cfg, device)
    say(plan.summary())
    for reason in plan.reasons:
        say(f"  {reason}")
    if env.main:
        write_json(cfg.plan_path, {"plan": plan.to_dict(), "fingerprint": fingerprint.to_dict(),
                                   "device": device.type, "amp": precision.amp,
                                   "channels_last": precision.channels_last})

    # 2. data: uint8 caches at the working scale (rank 0 builds them, the others wait)
    prepared = load_data(params, plan, version, env, threads)
    global_batch = plan.batch_size * cfg.grad_accum * env.world_size
    aug = data.Augment(hflip=cfg.hflip, vflip=cfg.vflip, rot90=cfg.rot90,
                       scale_min=cfg.scale_min, scale_max=cfg.scale_max, jitter=cfg.jitter,
                       hue=cfg.hue, blur=cfg.blur)

    # 3. model, its EMA, optimiser (no weight decay on BatchNorm and biases), loss
    config = UNetConfig(n_classes=len(classes), depth=plan.depth, base_width=plan.base_width,
                        upsample=cfg.upsample)
    info = ModelInfo(config=config, classes=classes, data_fingerprint=prepared.fingerprint,
                     plan=plan, dataset=fingerprint.to_dict(), amp=precision.amp,
                     channels_last=precision.channels_last, device=device.type)
    torch.manual_seed(cfg.seed)
    raw_model = UNet(config).to(device, memory_format=precision.memory_format)
    ema = copy.deepcopy(raw_model).eval()  # the weights that are evaluated and saved
    optimizer = make_optimizer(raw_model, cfg, fused=cuda)
    loss_fn = make_loss(cfg.loss, len(classes), cfg.class_weights, device)

    # 4. resume from the checkpoint when it was made with this data, config and plan
    key = resume_key(cfg, plan, classes, env.world_size)
    ckpt_path = Path(cfg.checkpoint_path)
    start, history = resume(ckpt_path, raw_model, ema, optimizer, prepared.fingerprint, key,
                            cfg.resume, plan.steps, say)
    model: nn.Module = raw_model
    if env.world_size > 1:
        model = DistributedDataParallel(raw_model, device_ids=[device.index] if cuda else None)
    if cfg.compile:
        model = torch.compile(model)

    # 5. DVCLive (rank 0 only)
    live = open_live(cfg.log_dir, resume=start > 0) if env.main else None
    say(f"train: {len(prepared.train)} train / {len(prepared.val or ())} val images on "
        f"{device} ({env.world_size} process(es), {threads} thread(s) each, "
        f"amp={'bf16' if precision.amp else 'off'}, channels_last={precision.channels_last}), "
        f"global batch {global_batch}, steps {start}..{plan.steps}")

    # 6. the loop
    end = plan.steps if stop_after is None else min(plan.steps, start + stop_after)
    bar = Progress(end - start, "train", "steps", enabled=env.main and progress, stream=log)
    lr, loss_sum, losses, t0 = plan.lr, torch.zeros((), device=device), 0, time.perf_counter()
    model.train()
    batches = prefetched(prepared.train, plan, aug, cfg.seed, range(start, end), global_batch,
                         env, cfg.grad_accum, cuda)
    for step, micro in zip(range(start, end), batches, strict=True):
        lr = lr_at(step, plan.steps, plan.warmup_steps, plan.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = _backward(model, micro, aug, plan, precision, loss_fn, env, device)
        loss_sum += loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # EMA of the weights: evaluated and saved, it smooths the last steps' noise (the
        # decay warms up so the first steps are not averaged with the random init)
        update_ema(ema, raw_model, min(plan.ema_decay, (1 + step) / (10 + step)))
        losses += 1
        bar.update(1)
        if env.main and (step % 10 == 0 or step == end - 1):
            bar.note(step=f"{step + 1}/{plan.steps}", loss=f"{loss.item():.3f}")

        # every val_every steps, and at the end: BatchNorm statistics from rank 0, mean loss,
        # val mIoU of the EMA weights (all ranks), DVCLive, checkpoint
        done = step + 1
        if done % plan.val_every and done != end:
            continue
        if env.world_size > 1:
            for tensors in (raw_model.buffers(), ema.buffers()):
                for buffer in tensors:
                    dist.broadcast(buffer, 0)
            dist.all_reduce(loss_sum)
        mean_loss = loss_sum.item() / (losses * env.world_size)
        miou, ious = validation_scores(ema, prepared.val, classes, device, env, plan, precision)
        entry = ValLog(step=done, loss=mean_loss, lr=lr, val_miou=miou, val_iou=ious,
                       seconds=time.perf_counter() - t0)
        history.append(entry)
        if env.main:
            log_validation(live, entry, classes)
            save_checkpoint(ckpt_path, raw_model, ema, optimizer, info, key, done, history)
        bar.write(f"step {done}/{plan.steps}: loss {mean_loss:.4f}, lr {lr:.2e}, val mIoU "
                  f"{miou:.4f} (EMA weights, {entry.seconds:.1f} s)")
        loss_sum, losses, t0 = torch.zeros((), device=device), 0, time.perf_counter()
    bar.close()

    # 7. the end: processes must agree; rank 0 writes the EMA model
    digest = agree_on_weights(ema, env, say)
    done = history[-1].step if history else 0
    if env.main and done == plan.steps:
        save_model(cfg.model_path, ema, info)
        say(f"wrote {cfg.model_path} (val mIoU {history[-1].val_miou:.4f})")
    if live is not None:
        live.end()
    return TrainResult(model_path=Path(cfg.model_path), plan=plan, start_step=start,
                       steps_done=done, history=tuple(history), weights_hash=digest)


# ---------------------------------------------------------------- the steps


def dist_from_env() -> Dist:
    """The process's place in a torchrun job (a single process when not under torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                world_size=world,
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


@contextlib.contextmanager
def torch_settings(threads: int, deterministic: bool, benchmark: bool) -> Iterator[None]:
    """Set torch's process-wide knobs for the run and put them back afterwards."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = benchmark
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.benchmark = saved[3]


def read_fingerprint(path: Path) -> Fingerprint:
    """The dataset fingerprint convert wrote into reports/data.json."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Fingerprint.from_dict(raw["fingerprint"])
    except FileNotFoundError:
        raise InputError(f"{path}: not found; run `segpipe convert` first (it writes the "
                         "dataset fingerprint the training plan comes from)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: must hold the dataset fingerprint convert writes, got "
                         f"{type(exc).__name__}: {exc}; run `segpipe convert` again") from None


def choose_precision(cfg: TrainParams, device: torch.device) -> Precision:
    """bf16 autocast where it is native (CUDA; CPUs with AVX512-BF16/AMX), else fp32;
    channels_last with it (it is what makes bf16 convolutions fast on the CPU)."""
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and native)
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and amp)
    return Precision(amp=amp, channels_last=channels_last)


def load_data(params: Params, plan: Plan, version: str, env: Dist, threads: int
              ) -> TrainData:
    """The train and val rows of the manifest, resized once into uint8 caches. Rank 0 builds
    the caches while the other processes wait, then they map them."""
    cfg = params.train
    manifest_csv, splits_csv = manifest_path(params.convert.out_dir), params.split.splits_path
    manifest, splits = load_dataset(manifest_csv, splits_csv, params.labels.classes)
    rows: dict[str, list[ManifestRow]] = {
        split: select(manifest, splits, split, str(splits_csv)) for split in ("train", "val")}
    caches: dict[str, data.Cache] = {}
    for turn in (0, 1):
        if (turn == 0) == env.main:
            for split, chosen in rows.items():
                if chosen:
                    caches[split] = data.build_cache(
                        chosen, manifest.root, plan, cfg.cache_dir, split=split,
                        n_classes=len(params.labels.classes), threads=threads)
        if env.world_size > 1:
            dist.barrier()
    if "train" not in caches:
        raise InputError(f"{splits_csv}: split 'train' has no samples")
    return TrainData(version, caches["train"], caches.get("val"))


Micro = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # windows, masks, augment draws


def step_batch(cache: data.Cache, plan: Plan, aug: data.Augment, seed: int, step: int,
               global_batch: int, env: Dist, grad_accum: int, pin: bool) -> list[Micro]:
    """This process's micro-batches of one step: the global batch's crops and augmentation
    numbers are drawn from (seed, step) alone; this process takes every (W * A)-th of them."""
    crops = data.draw_crops(cache, plan, global_batch, data.step_rng(seed, step))
    draws = data.draw_augment(global_batch, torch.Generator().manual_seed(
        int(seed) * 1_000_003 + int(step) + 1))
    slots = grad_accum * env.world_size
    window = data.window_size(plan, aug)
    micro = []
    for m in range(grad_accum):
        mine = slice(env.rank + env.world_size * m, None, slots)
        part = data.Crops(crops.image[mine], crops.y[mine], crops.x[mine])
        windows, masks = data.extract(cache, part, window)
        if pin:
            windows, masks = windows.pin_memory(), masks.pin_memory()
        micro.append((windows, masks, draws[mine]))
    return micro


def prefetched(cache: data.Cache, plan: Plan, aug: data.Augment, seed: int, steps: range,
               global_batch: int, env: Dist, grad_accum: int, pin: bool
               ) -> Iterator[list[Micro]]:
    """`step_batch` for each step, the next two prepared in a thread while this one trains
    (crops are numpy slices of the memory-mapped cache: the step never waits on decoding)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: list[Future[list[Micro]]] = []
        todo = iter(steps)
        for _ in range(2):
            step = next(todo, None)
            if step is not None:
                pending.append(pool.submit(step_batch, cache, plan, aug, seed, step,
                                           global_batch, env, grad_accum, pin))
        while pending:
            batch = pending.pop(0).result()
            step = next(todo, None)
            if step is not None:
                pending.append(pool.submit(step_batch, cache, plan, aug, seed, step,
                                           global_batch, env, grad_accum, pin))
            yield batch


def make_optimizer(model: nn.Module, cfg: TrainParams, fused: bool) -> torch.optim.Optimizer:
    """AdamW; no weight decay on BatchNorm weights and biases (1-D parameters)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=fused or None)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, for every weight and floating buffer."""
    for e, m in zip(ema.state_dict().values(), unwrap(model).state_dict().values(), strict=True):
        if e.dtype.is_floating_point:
            e.mul_(decay).add_(m.detach(), alpha=1.0 - decay)
        else:
            e.copy_(m)


def resume_key(cfg: TrainParams, plan: Plan, classes: tuple[str, ...], world_size: int) -> str:
    """The config a checkpoint must match to be resumed (JSON, stable)."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_RESULT_FIELDS}
    planned = {k: v for k, v in plan.to_dict().items() if k != "reasons"}
    return json.dumps({**fields, "plan": planned, "classes": list(classes),
                       "world_size": world_size}, sort_keys=True)


def load_checkpoint(path: Path, fingerprint: str, key: str) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint when it can be resumed, else None and why not."""
    if not path.is_file():
        return None, "no checkpoint"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        return None, f"{path} is unreadable ({type(exc).__name__})"
    if not isinstance(ckpt, dict) or ckpt.get("format") != TRAIN_CHECKPOINT_FORMAT:
        return None, f"{path} is not a {TRAIN_CHECKPOINT_FORMAT} checkpoint"
    if ckpt.get("data_fingerprint") != fingerprint:
        return None, f"{path} was trained on other data (fingerprint differs)"
    if ckpt.get("resume_key") != key:
        return None, f"{path} was trained with another train config or plan"
    return ckpt, ""


def resume(path: Path, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
           fingerprint: str, key: str, enabled: bool, total: int, say: Callable[[str], None]
           ) -> tuple[int, list[ValLog]]:
    """Load the checkpoint into model, EMA and optimiser when it can be resumed; returns
    (steps done, their validation logs), (0, []) for a fresh start."""
    ckpt, why = load_checkpoint(path, fingerprint, key) if enabled else (None, "off")
    if ckpt is None:
        if path.exists() or why != "no checkpoint":
            say(f"starting fresh: {why}")
        return 0, []
    model.load_state_dict(ckpt["model"]["state_dict"])
    ema.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    start = int(ckpt["step"])
    say(f"resuming from {path} after step {start}/{total}")
    return start, [ValLog(**{**h, "val_iou": tuple(h["val_iou"])}) for h in ckpt["history"]]


def open_live(log_dir: str, resume: bool) -> Any:
    """DVCLive's logger (imported here: only rank 0 logs). dvcyaml=False: dvc.yaml declares
    the plots itself."""
    from dvclive import Live

    return Live(log_dir, resume=resume, dvcyaml=False, save_dvc_exp=False)


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float) -> float:
    """Linear warm-up to `lr`, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def validation_scores(model: nn.Module, cache: data.Cache | None, classes: tuple[str, ...],
                      device: torch.device, env: Dist, plan: Plan, precision: Precision
                      ) -> tuple[float, tuple[float, ...]]:
    """mIoU and per-class IoU on the val cache at the working scale, by the same sliding
    window as inference (each process takes every W-th image; the confusion matrices are
    summed). NaN when there is no val split."""
    n = len(classes)
    if cache is None:
        return math.nan, (math.nan,) * n
    confusion = torch.zeros(n, n, dtype=torch.int64, device=device)
    model.eval()
    for i in range(env.rank, len(cache), env.world_size):
        mask = torch.from_numpy(cache.mask(i).copy()).to(device)
        for row, band in logit_bands(model, cache.image(i), plan.patch, device, precision):
            pred = band.argmax(0)
            confusion += confusion_matrix(mask[row:row + pred.shape[0]].long(), pred, n)
    if env.world_size > 1:
        dist.all_reduce(confusion)
    metrics = segmentation_metrics(confusion, classes)
    return metrics.miou, tuple(metrics.iou)


def log_validation(live: Any, entry: ValLog, classes: tuple[str, ...]) -> None:
    live.step = entry.step
    live.log_metric("train/loss", entry.loss)
    live.log_metric("train/lr", entry.lr)
    if not math.isnan(entry.val_miou):
        live.log_metric("val/miou", entry.val_miou)
        for name, iou in zip(classes, entry.val_iou, strict=True):
            if not math.isnan(iou):
                live.log_metric(f"val/iou/{name}", iou)
    live.next_step()


def save_checkpoint(path: Path, model: nn.Module, ema: nn.Module,
                    optimizer: torch.optim.Optimizer, info: ModelInfo, key: str, step: int,
                    history: list[ValLog]) -> None:
    """What a killed run needs to continue exactly: weights, EMA, optimiser, step. (No RNG
    state: every step's random numbers come from (seed, step).)"""
    ckpt = {
        "format": TRAIN_CHECKPOINT_FORMAT,
        "model": model_payload(model, info),
        "ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "step": step,
        "data_fingerprint": info.data_fingerprint,
        "resume_key": key,
        "history": [dataclasses.asdict(h) for h in history],
    }
    write_torch(path, ckpt)


def weights_hash(model: nn.Module) -> str:
    """Content hash of every parameter and buffer (bit-exact comparison across processes)."""
    parts = []
    for name, tensor in unwrap(model).state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        parts.append(name.encode() + array.tobytes())
    return content_hash(b"\0".join(parts))


def agree_on_weights(model: nn.Module, env: Dist, say: Callable[[str], None]) -> str:
    """The weights' hash, which every DDP process must share (else the run fails)."""
    digest = weights_hash(model)
    if env.world_size > 1:
        digests: list[str | None] = [None] * env.world_size
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise StageFailed(f"DDP processes ended with different weights: {digests}")
        say(f"all {env.world_size} processes hold the same weights ({digest})")
    return digest


# ---------------------------------------------------------------- CLI


@click.command("train", help="""Train the U-Net on the train split; write train.model_path.

Plans the run from the dataset fingerprint in <convert.reports_dir>/data.json (working scale,
patch, batch, steps, crop sampling; every choice printed, written to train.plan_path and
stored with the model; each one can be set in params.yaml). Resizes the images once into a
uint8 cache under train.cache_dir; logs loss, LR and val mIoU with DVCLive to train.log_dir;
writes a checkpoint at every validation to train.checkpoint_path and resumes from it when data,
config and plan match. Uses CUDA, then MPS, then the CPU (train.device).
Multi-GPU: torchrun --nproc_per_node N -m pipeline train.""")
@params_option
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Stop after this many steps (checkpoint written); the next run resumes.")
def command(params: Params, stop_after: int | None) -> int:
    train(params, stop_after=stop_after)
    return 0
