"""Training and inference throughput: our loader + model vs a plain reference.

    .venv/bin/python bench/train.py                      # synthetic JPEG/PNG set, CPU
    .venv/bin/python bench/train.py --data data/prepared --splits data/splits/splits.csv
    .venv/bin/python bench/train.py --sizes 128 --widths 16 --steps 3 --threads 2

Rows (images/s; higher is better), per image size and base width:
- reference: the seed-style U-Net (milesial/Pytorch-UNet layout: transposed-conv up, no
  normalisation inside), fp32, contiguous tensors, every image and mask decoded from its
  PNG/JPEG file and resized with PIL in every step (num_workers=0), plain CE loss.
- ours fp32: the uint8 cache (decoded + resized once, memory-mapped), vectorised batch
  augmentation, our U-Net, CE + Dice, fp32 (the CPU default).
- ours bf16+cl: the same with bf16 autocast and channels_last (`train.amp: bf16`,
  `train.channels_last: on`).
`wait` is the share of a training step spent getting the batch (loading/decoding and, for us,
augmenting) rather than in forward/backward/step. Inference: eval mode, no_grad, no loss.
The machine this runs on may be shared: run it twice and trust only large differences.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.learn import data  # noqa: E402
from pipeline.learn.losses import make_loss  # noqa: E402
from pipeline.learn.model import UNet, UNetConfig  # noqa: E402
from pipeline.storage.masks import write_mask  # noqa: E402

N_CLASSES = 5


# ---------------------------------------------------------------- the reference (seed style)


class RefDoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class RefUp(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
        self.conv = RefDoubleConv(cin, cout)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        dy, dx = x2.size(2) - x1.size(2), x2.size(3) - x1.size(3)
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class RefUNet(nn.Module):
    """milesial/Pytorch-UNet's UNet (bilinear=False), with a configurable base width."""

    def __init__(self, n_classes: int, base: int = 64) -> None:
        super().__init__()
        w = [base * 2**i for i in range(5)]
        self.inc = RefDoubleConv(3, w[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), RefDoubleConv(w[i], w[i + 1]))
                                   for i in range(4))
        self.ups = nn.ModuleList(RefUp(w[i + 1], w[i]) for i in reversed(range(4)))
        self.outc = nn.Conv2d(w[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [self.inc(x)]
        for down in self.downs:
            xs.append(down(xs[-1]))
        x = xs.pop()
        for up in self.ups:
            x = up(x, xs.pop())
        return self.outc(x)


class FileDataset(torch.utils.data.Dataset):
    """Decode + resize every image and mask from its file at every access (the seed loader)."""

    def __init__(self, samples: list[data.Sample], size: int) -> None:
        self.samples, self.size = samples, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[i]
        with Image.open(sample.image) as image:
            rgb = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
        with Image.open(sample.mask) as mask:
            m = mask.resize((self.size, self.size), Image.Resampling.NEAREST)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        return x, torch.from_numpy(np.asarray(m, dtype=np.int64))


# ---------------------------------------------------------------- data


def synthetic_set(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """n camera-like 640x480 JPEGs (every 4th a PNG) with random shape masks."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        h, w = 480, 640
        yy, xx = np.mgrid[0:h, 0:w]
        mask = np.zeros((h, w), np.uint8)
        image = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
        for cls in range(1, N_CLASSES):
            cx, cy, r = rng.integers(60, w - 60), rng.integers(60, h - 60), rng.integers(20, 60)
            region = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            mask[region] = cls
            image[region] = rng.integers(0, 255, 3)
        ext = "png" if i % 4 == 3 else "jpg"
        Image.fromarray(image).save(root / f"img{i:03d}.{ext}", quality=90)
        write_mask(root / f"img{i:03d}.png.mask.png", mask)
        rows.append((f"img{i:03d}", f"img{i:03d}.{ext}", f"img{i:03d}.png.mask.png"))
    manifest, splits = root / "manifest.csv", root / "splits.csv"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows([("id", "image", "mask"), *rows])
    with splits.open("w", newline="") as handle:
        csv.writer(handle).writerows([("id", "split"), *((r[0], "train") for r in rows)])
    return manifest, splits


def cycle(loader: torch.utils.data.DataLoader) -> Iterator:
    while True:
        yield from loader


# ---------------------------------------------------------------- timing


def timed_steps(next_batch: Callable[[], tuple], step: Callable[[tuple], None], steps: int,
                batch: int) -> tuple[float, float]:
    """images/s over `steps` steps after one warm-up step, and the share spent in next_batch."""
    step(next_batch())
    wait = work = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        item = next_batch()
        t1 = time.perf_counter()
        step(item)
        t2 = time.perf_counter()
        wait, work = wait + t1 - t0, work + t2 - t1
    return steps * batch / (wait + work), wait / (wait + work)


def bench_one(samples: list[data.Sample], cache: data.Cache, size: int, width: int, batch: int,
              steps: int) -> list[tuple[str, str, float, float]]:
    rows = []
    loss_fn = make_loss("ce_dice", N_CLASSES)
    aug = data.Augment(scale_min=0.75, scale_max=1.25, jitter=0.1)

    # reference: decode every step, fp32, contiguous
    torch.manual_seed(0)
    ref = RefUNet(N_CLASSES, base=width)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    files = cycle(torch.utils.data.DataLoader(FileDataset(samples, size), batch_size=batch,
                                              shuffle=True, drop_last=True))

    def ref_step(item: tuple) -> None:
        x, y = item
        F.cross_entropy(ref(x), y, ignore_index=255).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ips, wait = timed_steps(lambda: next(files), ref_step, steps, batch)
    rows.append(("reference", "train", ips, wait))
    ref.eval()
    with torch.no_grad():
        ips, wait = timed_steps(lambda: next(files), lambda item: ref(item[0]), steps, batch)
    rows.append(("reference", "infer", ips, wait))

    # ours: cache + batch augmentation, fp32 and bf16 + channels_last
    dataset = data.CachedDataset(cache)
    for name, amp, memory_format in (("ours fp32", False, torch.contiguous_format),
                                     ("ours bf16+cl", True, torch.channels_last)):
        torch.manual_seed(0)
        model = UNet(UNetConfig(N_CLASSES, base_width=width)).to(memory_format=memory_format)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loader = cycle(torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True,
                                                   drop_last=True,
                                                   collate_fn=data.collate_batch))
        gen = torch.Generator().manual_seed(0)

        def next_ours(loader: Iterator = loader, gen: torch.Generator = gen,
                      memory_format: torch.memory_format = memory_format) -> tuple:
            images, masks = next(loader)
            x, y = data.augment_batch(images, masks, aug, gen)
            return x.contiguous(memory_format=memory_format), y

        def our_step(item: tuple, model: nn.Module = model, opt: torch.optim.Optimizer = opt,
                     amp: bool = amp) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = model(item[0])
            loss_fn(logits, item[1]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        ips, wait = timed_steps(next_ours, our_step, steps, batch)
        rows.append((name, "train", ips, wait))
        model.eval()

        def next_plain(loader: Iterator = loader,
                       memory_format: torch.memory_format = memory_format) -> tuple:
            images, _ = next(loader)
            return (data.to_float(images).contiguous(memory_format=memory_format),)

        def infer(item: tuple, model: nn.Module = model, amp: bool = amp) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                model(item[0])

        with torch.inference_mode():
            ips, wait = timed_steps(next_plain, infer, steps, batch)
        rows.append((name, "infer", ips, wait))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="folder with manifest.csv (default: synthetic)")
    parser.add_argument("--splits", type=Path, help="splits.csv for --data")
    parser.add_argument("--n", type=int, default=48, help="synthetic images")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            manifest, splits = args.data / "manifest.csv", args.splits
        else:
            manifest, splits = synthetic_set(Path(tmp), args.n)
        samples = data.load_split(manifest, splits, "train")
        print(f"# {len(samples)} train images from {manifest if args.data else 'synthetic'}; "
              f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
              f"{args.steps} timed steps; CPU")
        print(f"{'size':>5} {'width':>5}  {'pipeline':<13} {'mode':<6} {'img/s':>8} {'wait':>6}")
        for size in args.sizes:
            t0 = time.perf_counter()
            cache = data.build_cache(samples, size, Path(tmp) / "cache", resize="stretch",
                                     threads=args.threads)
            print(f"# cache {size}px: {len(samples)} images in {time.perf_counter() - t0:.1f} s "
                  f"(once per data version)")
            for width in args.widths:
                for name, mode, ips, wait in bench_one(samples, cache, size, width, args.batch,
                                                       args.steps):
                    print(f"{size:>5} {width:>5}  {name:<13} {mode:<6} {ips:>8.1f} "
                          f"{wait:>6.1%}", flush=True)


if __name__ == "__main__":
    main()
