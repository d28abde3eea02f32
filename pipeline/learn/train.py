"""`segpipe train`: the U-Net training stage, a flat loop in the style of nanoGPT.

    1. device and precision      2. data: uint8 caches, the loader     3. model, optimiser, loss
    4. resume from the checkpoint 5. DVCLive
    6. epochs: steps (augment on the device, forward, loss, backward, AdamW, warm-up + cosine
       LR) -> val mIoU -> DVCLive -> checkpoint
    7. the processes agree; models/model.pt

Device: `train.device: auto` picks CUDA, then MPS, then the CPU. On CUDA: bf16 autocast,
channels_last, pinned memory and non-blocking copies, cudnn.benchmark; `train.compile` adds
torch.compile. On the CPU: fp32 and deterministic algorithms by default (the same seed gives
the same weights); `train.amp: bf16` turns on bf16 autocast there too (much faster on CPUs
with AVX512-BF16/AMX).

Multi-GPU / multi-node: the same script under `torchrun` (one process per GPU, NCCL; gloo on
the CPU). Each process reads its share of every global batch through a DistributedSampler;
gradients are averaged by DDP; BatchNorm running statistics are taken from rank 0 at each
epoch end; val metrics are summed over the processes; only rank 0 writes files. At the end
the processes compare a hash of their weights and the run fails if they differ.

What a run with W processes computes exactly: step k's global batch is the sampler's
permutation [k*G, (k+1)*G), G = batch_size * grad_accum * W. Process r's micro-batch m takes
the samples at positions r + W*m, r + W*m + W*A, ... with the augmentation numbers drawn for
those positions. So W processes with grad_accum A and one process with grad_accum W*A compute
the same micro-batches and average the same gradients: their weights agree exactly (tested
with 2 gloo processes vs 1 process with grad_accum 2), except the BatchNorm running statistics,
which DDP keeps per process.

Resume: after every epoch rank 0 writes train.checkpoint_path (weights, optimiser, LR step,
epoch, RNG states, model config, class names, data fingerprint, the result-relevant config).
A run starts from it when the data fingerprint and that config match, else it starts fresh and
says why. The shuffling and augmentation of an epoch come from (seed, epoch) alone, so a run
stopped after any epoch and resumed ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from pipeline.core.hashing import content_hash
from pipeline.core.manifest import (
    ManifestRow,
    data_fingerprint,
    manifest_path,
    read_manifest,
    read_splits,
    select,
)
from pipeline.errors import InputError, StageFailed
from pipeline.learn import data
from pipeline.learn.inference import to_float
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
from pipeline.params import Params, TrainParams, params_option
from pipeline.progress import Progress

TRAIN_CHECKPOINT_FORMAT = "segpipe-train/1"
#: TrainParams fields that do not change the weights a run ends with (not part of the resume key)
NOT_RESULT_FIELDS = frozenset({"model_path", "checkpoint_path", "cache_dir", "log_dir",
                               "device", "workers", "threads", "compile", "resume"})
Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


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
class Precision:
    """How the model computes: bf16 autocast or not, channels_last or not."""

    amp: bool
    channels_last: bool
    device_type: str

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp)


@dataclass(frozen=True)
class TrainData:
    fingerprint: str  # of the manifest + split the model trains on
    train: data.Cache
    val: data.Cache | None
    n_train: int
    n_val: int


@dataclass(frozen=True)
class EpochLog:
    epoch: int  # 1-based
    loss: float  # mean training loss over the epoch's steps (all processes)
    lr: float  # learning rate at the epoch's last step
    val_miou: float  # NaN without a val split
    val_iou: tuple[float, ...]
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    start_epoch: int  # epochs already done when this run started (0 = fresh)
    epochs_done: int
    history: tuple[EpochLog, ...]  # every epoch since the fresh start (resumed ones included)
    weights_hash: str  # content hash of the final state_dict (equal on every process)

    @property
    def val_miou(self) -> float:
        return self.history[-1].val_miou if self.history else math.nan


# ---------------------------------------------------------------- the stage


def train(params: Params, *, stop_after: int | None = None, progress: bool = True,
          log: TextIO | None = None) -> TrainResult:
    """Train (or resume) the model described by params.train on the manifest + split.

    stop_after: end this run after that many epochs (a checkpoint is written as usual); the
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
    try:
        with torch_settings(threads, deterministic=device.type == "cpu",
                            benchmark=device.type == "cuda"):
            return _run(params, env, device, stop_after, progress, log or sys.stderr, threads)
    finally:
        if env.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run(params: Params, env: Dist, device: torch.device, stop_after: int | None,
         progress: bool, log: TextIO, threads: int) -> TrainResult:
    cfg, classes = params.train, tuple(params.labels.classes)
    cuda = device.type == "cuda"

    def say(text: str) -> None:
        if env.main:
            print(text, file=log, flush=True)

    # 1. device and precision
    precision = choose_precision(cfg, device)

    # 2. data: uint8 caches (rank 0 builds them, the others wait and map them), the loader
    prepared = load_data(params, env, threads)
    train_set = data.CachedDataset(prepared.train)
    global_batch = cfg.batch_size * cfg.grad_accum * env.world_size
    if len(train_set) < global_batch:
        raise InputError(f"the train split has {len(train_set)} samples, fewer than one global "
                         f"batch (batch_size * grad_accum * processes = {global_batch})")
    sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank,
                                 shuffle=True, seed=cfg.seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=cfg.batch_size * cfg.grad_accum, sampler=sampler,
                        drop_last=True, collate_fn=data.collate_batch, num_workers=cfg.workers,
                        pin_memory=cuda, persistent_workers=cfg.workers > 0)
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup * total_steps)
    aug = data.Augment(hflip=cfg.hflip, vflip=cfg.vflip, rot90=cfg.rot90,
                       scale_min=cfg.scale_min, scale_max=cfg.scale_max, jitter=cfg.jitter)

    # 3. model, optimiser (no weight decay on BatchNorm and biases), loss
    config = UNetConfig(n_classes=len(classes), depth=cfg.depth, base_width=cfg.base_width,
                        upsample=cfg.upsample)
    info = ModelInfo(config=config, classes=classes, image_size=cfg.image_size,
                     data_fingerprint=prepared.fingerprint, resize=cfg.resize)
    torch.manual_seed(cfg.seed)
    raw_model = UNet(config).to(device, memory_format=precision.memory_format)
    optimizer = make_optimizer(raw_model, cfg, fused=cuda)
    loss_fn = make_loss(cfg.loss, len(classes), cfg.class_weights, device)

    # 4. resume from the checkpoint when it was made with this data and config
    key = resume_key(cfg, classes, env.world_size)
    ckpt_path = Path(cfg.checkpoint_path)
    start_epoch, history = resume(ckpt_path, raw_model, optimizer, prepared.fingerprint, key,
                                  cfg, device, say)
    model: nn.Module = raw_model
    if env.world_size > 1:
        model = DistributedDataParallel(raw_model, device_ids=[device.index] if cuda else None)
    if cfg.compile:
        model = torch.compile(model)

    # 5. DVCLive (rank 0 only)
    live = open_live(cfg.log_dir, resume=start_epoch > 0) if env.main else None
    say(f"train: {prepared.n_train} train / {prepared.n_val} val images at "
        f"{cfg.image_size}px on {device} ({env.world_size} process(es), {threads} thread(s) "
        f"each, amp={'bf16' if precision.amp else 'off'}, "
        f"channels_last={precision.channels_last}), {steps_per_epoch} steps/epoch, "
        f"global batch {global_batch}")

    # 6. the loop
    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    bar = Progress((end_epoch - start_epoch) * steps_per_epoch, "train", "steps",
                   enabled=env.main and progress, stream=log)
    slots = cfg.grad_accum * env.world_size
    lr = cfg.lr
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        generator = data.epoch_generator(cfg.seed, epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        for i, (images, masks) in enumerate(loader):
            step = epoch * steps_per_epoch + i
            lr = lr_at(step, total_steps, warmup_steps, cfg.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            draws = data.draw_augment(global_batch, generator)  # same numbers on every process
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            for m in range(cfg.grad_accum):
                slot = env.rank + env.world_size * m
                x, y = data.apply_augment(images[m::cfg.grad_accum], masks[m::cfg.grad_accum],
                                          aug, draws[slot::slots])
                x = x.contiguous(memory_format=precision.memory_format)
                last = m == cfg.grad_accum - 1
                # DDP: average the gradients once, after the last micro-batch
                sync = model.no_sync() if env.world_size > 1 and not last and hasattr(
                    model, "no_sync") else contextlib.nullcontext()
                with sync:
                    with precision.autocast():
                        logits = model(x)
                    loss = loss_fn(logits, y) / cfg.grad_accum
                    loss.backward()
                loss_sum += loss.detach()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            if env.main and (i % 10 == 0 or i == steps_per_epoch - 1):
                seen = (i + 1) * global_batch
                bar.note(epoch=f"{epoch + 1}/{cfg.epochs}", step=step + 1,
                         loss=f"{loss.item() * cfg.grad_accum:.3f}",
                         img_s=f"{seen / (time.perf_counter() - t0):.1f}")

        # epoch end: BatchNorm statistics from rank 0, mean loss, val mIoU on all ranks
        if env.world_size > 1:
            for buffer in raw_model.buffers():
                dist.broadcast(buffer, 0)
            dist.all_reduce(loss_sum)
        mean_loss = loss_sum.item() / (steps_per_epoch * env.world_size)
        miou, ious = validation_scores(raw_model, prepared.val, classes, device, env,
                                       cfg.batch_size, precision)
        entry = EpochLog(epoch=epoch + 1, loss=mean_loss, lr=lr, val_miou=miou, val_iou=ious,
                         seconds=time.perf_counter() - t0)
        history.append(entry)
        if env.main:
            log_epoch(live, entry, classes)
            save_checkpoint(ckpt_path, raw_model, optimizer, info, key, epoch + 1,
                            (epoch + 1) * steps_per_epoch, history, cuda)
        if env.main:
            bar.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {mean_loss:.4f}, lr {lr:.2e}, "
                      f"val mIoU {miou:.4f} ({entry.seconds:.1f} s)")
    bar.close()

    # 7. the end: processes must agree; rank 0 writes the model
    digest = agree_on_weights(raw_model, env, say)
    done = history[-1].epoch if history else 0
    if env.main and done == cfg.epochs:
        save_model(cfg.model_path, raw_model, info)
        say(f"wrote {cfg.model_path} (val mIoU {history[-1].val_miou:.4f})")
    if live is not None:
        live.end()
    return TrainResult(model_path=Path(cfg.model_path), start_epoch=start_epoch,
                       epochs_done=done, history=tuple(history), weights_hash=digest)


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


def choose_precision(cfg: TrainParams, device: torch.device) -> Precision:
    """bf16 autocast and channels_last: on CUDA by default (`auto`), or as the params say."""
    cuda = device.type == "cuda"
    return Precision(amp=cfg.amp == "bf16" or (cfg.amp == "auto" and cuda),
                     channels_last=cfg.channels_last == "on"
                     or (cfg.channels_last == "auto" and cuda),
                     device_type=device.type)


def load_data(params: Params, env: Dist, threads: int) -> TrainData:
    """The train and val rows of the manifest, resized once into uint8 caches. Rank 0 builds
    the caches while the other processes wait, then they map them."""
    cfg = params.train
    manifest_csv, splits_csv = manifest_path(params.convert.out_dir), params.split.splits_path
    fingerprint = data_fingerprint(manifest_csv, splits_csv)
    manifest = read_manifest(manifest_csv, params.labels.classes)
    splits = read_splits(splits_csv)
    if splits is None:
        raise InputError(f"{splits_csv}: file not found; run `segpipe split` first")
    rows: dict[str, list[ManifestRow]] = {
        split: select(manifest, splits, split, str(splits_csv)) for split in ("train", "val")}
    caches: dict[str, data.Cache] = {}
    for turn in (0, 1):
        if (turn == 0) == env.main:
            for split, chosen in rows.items():
                if chosen:
                    caches[split] = data.build_cache(
                        chosen, manifest.root, cfg.image_size, cfg.cache_dir, split=split,
                        resize=cfg.resize, n_classes=len(params.labels.classes),
                        threads=threads)
        if env.world_size > 1:
            dist.barrier()
    if "train" not in caches:
        raise InputError(f"{splits_csv}: split 'train' has no samples")
    return TrainData(fingerprint, caches["train"], caches.get("val"), len(rows["train"]),
                     len(rows["val"]))


def make_optimizer(model: nn.Module, cfg: TrainParams, fused: bool) -> torch.optim.Optimizer:
    """AdamW; no weight decay on BatchNorm weights and biases (1-D parameters)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=fused or None)


def resume_key(cfg: TrainParams, classes: tuple[str, ...], world_size: int) -> str:
    """The config a checkpoint must match to be resumed (JSON, stable)."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_RESULT_FIELDS}
    return json.dumps({**fields, "classes": list(classes), "world_size": world_size},
                      sort_keys=True)


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
        return None, f"{path} was trained with another train config"
    return ckpt, ""


def resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, fingerprint: str,
           key: str, cfg: TrainParams, device: torch.device, say: Callable[[str], None]
           ) -> tuple[int, list[EpochLog]]:
    """Load the checkpoint into model and optimiser when it can be resumed (and the torch RNG
    state it saved); returns (epochs done, their logs), (0, []) for a fresh start."""
    ckpt, why = load_checkpoint(path, fingerprint, key) if cfg.resume else (None, "off")
    if ckpt is None:
        if path.exists() or why != "no checkpoint":
            say(f"starting fresh: {why}")
        return 0, []
    model.load_state_dict(ckpt["model"]["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    start = int(ckpt["epoch"])
    say(f"resuming from {path} after epoch {start}/{cfg.epochs}")
    return start, [EpochLog(**{**h, "val_iou": tuple(h["val_iou"])}) for h in ckpt["history"]]


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
                      device: torch.device, env: Dist, batch_size: int, precision: Precision
                      ) -> tuple[float, tuple[float, ...]]:
    """mIoU and per-class IoU on the val cache (each process takes every W-th image; the
    confusion matrices are summed). NaN when there is no val split."""
    n = len(classes)
    if cache is None:
        return math.nan, (math.nan,) * n
    dataset = data.CachedDataset(cache)
    mine = list(range(env.rank, len(dataset), env.world_size))
    confusion = torch.zeros(n, n, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    for start in range(0, len(mine), batch_size):
        images, masks = dataset.__getitems__(mine[start:start + batch_size])
        x = to_float(images.to(device, non_blocking=True)).contiguous(
            memory_format=precision.memory_format)
        with precision.autocast():
            pred = model(x).argmax(dim=1)
        confusion += confusion_matrix(masks.to(device).long(), pred, n)
    model.train(was_training)
    if env.world_size > 1:
        dist.all_reduce(confusion)
    metrics = segmentation_metrics(confusion, classes)
    return metrics.miou, tuple(metrics.iou)


def log_epoch(live: Any, entry: EpochLog, classes: tuple[str, ...]) -> None:
    live.step = entry.epoch - 1
    live.log_metric("train/loss", entry.loss)
    live.log_metric("train/lr", entry.lr)
    if not math.isnan(entry.val_miou):
        live.log_metric("val/miou", entry.val_miou)
        for name, iou in zip(classes, entry.val_iou, strict=True):
            if not math.isnan(iou):
                live.log_metric(f"val/iou/{name}", iou)
    live.next_step()


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    info: ModelInfo, key: str, epoch: int, step: int,
                    history: list[EpochLog], cuda: bool) -> None:
    """What a killed run needs to continue exactly: weights, optimiser, epoch, torch RNG."""
    rng = {"torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state() if cuda else None}
    ckpt = {
        "format": TRAIN_CHECKPOINT_FORMAT,
        "model": model_payload(model, info),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"step": step},  # the LR is a pure function of the step (lr_at)
        "epoch": epoch,
        "rng": rng,
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

Reads <convert.out_dir>/manifest.csv and split.splits_path; resizes the images once into a
uint8 cache under train.cache_dir; logs loss, LR and val mIoU per epoch with DVCLive to
train.log_dir; writes a checkpoint after every epoch to train.checkpoint_path and resumes
from it when data and config match. Uses CUDA, then MPS, then the CPU (train.device).
Multi-GPU: torchrun --nproc_per_node N -m pipeline train.""")
@params_option
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Stop after this many epochs (checkpoint written); the next run resumes.")
def command(params: Params, stop_after: int | None) -> int:
    train(params, stop_after=stop_after)
    return 0
