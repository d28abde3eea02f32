"""pipeline.data: manifest + split -> samples, the uint8 cache, the Dataset, augmentations.

`make_dataset` (also used by test_train.py and test_ddp.py) writes a tiny prepared dataset:
images with coloured squares/discs, class-index masks, manifest.csv and splits.csv.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import data
from pipeline.errors import InputError
from pipeline.io import IGNORE, content_hash, read_mask, read_rgb, write_mask

CLASSES = ("background", "square", "disc")
COLOURS = {1: (220, 40, 40), 2: (40, 60, 220)}


def make_dataset(root: Path, n: int = 12, n_val: int = 4, size: tuple[int, int] = (32, 32),
                 seed: int = 0) -> tuple[Path, Path]:
    """n samples (every 3rd one 40x28, every 5th a JPEG) under root/prepared; returns
    (manifest_csv, splits_csv). Masks: 0 background, 1 square, 2 disc, 255 a corner patch."""
    rng = np.random.default_rng(seed)
    out = root / "prepared"
    rows, split_rows = [], []
    for i in range(n):
        w, h = (40, 28) if i % 3 == 2 else size
        image = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        x0, y0 = rng.integers(2, w // 2), rng.integers(2, h // 2)
        side = int(rng.integers(6, 12))
        square = (xx >= x0) & (xx < x0 + side) & (yy >= y0) & (yy < y0 + side)
        cx, cy, r = rng.integers(w // 2, w - 4), rng.integers(h // 2, h - 4), rng.integers(3, 7)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        for value, region in ((1, square), (2, disc)):
            mask[region] = value
            image[region] = COLOURS[value]
        if i % 4 == 1:
            mask[:3, :3] = IGNORE
        sample_id = f"batch{i % 2}/img_{i:03d}"
        ext = "jpg" if i % 5 == 4 else "png"
        image_path = out / "images" / f"{sample_id}.{ext}"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(image_path, quality=95)
        mask_path = out / "masks" / f"{sample_id}.png"
        write_mask(mask_path, mask)
        rows.append({"id": sample_id, "annotation": f"{sample_id}.json",
                     "image": f"images/{sample_id}.{ext}", "mask": f"masks/{sample_id}.png",
                     "format": "labelme", "width": w, "height": h, "n_shapes": 2,
                     "group": sample_id,
                     "image_hash": content_hash(image_path.read_bytes()),
                     "mask_hash": content_hash(mask_path.read_bytes())})
        split_rows.append({"id": sample_id, "group": sample_id,
                           "split": "val" if i >= n - n_val else "train"})
    manifest_csv = out / "manifest.csv"
    splits_csv = root / "splits" / "splits.csv"
    splits_csv.parent.mkdir(parents=True, exist_ok=True)
    for path, table in ((manifest_csv, rows), (splits_csv, split_rows)):
        table = sorted(table, key=lambda r: r["id"])
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    return manifest_csv, splits_csv


# ---------------------------------------------------------------- manifest + split


def test_load_split_resolves_paths_against_the_manifest_folder(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=6, n_val=2)
    train = data.load_split(manifest, splits, "train")
    val = data.load_split(manifest, splits, "val")
    assert [s.id for s in train] == ["batch0/img_000", "batch0/img_002", "batch1/img_001",
                                     "batch1/img_003"]
    assert [s.id for s in val] == ["batch0/img_004", "batch1/img_005"]
    assert val[0].image == tmp_path / "prepared" / "images" / "batch0" / "img_004.jpg"
    assert val[0].mask == tmp_path / "prepared" / "masks" / "batch0" / "img_004.png"
    assert all(s.image.is_file() and s.mask.is_file() for s in train + val)
    assert len({s.key for s in train + val}) == 6
    assert data.load_split(manifest, splits, "benchmark") == []


def test_load_split_names_ids_missing_from_the_manifest(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=6, n_val=2)
    with splits.open("a") as handle:
        handle.write("gone/img_9,gone/img_9,train\n")
    with pytest.raises(InputError, match=r"1 ids of split 'train' are not in .*gone/img_9"):
        data.load_split(manifest, splits, "train")
    assert len(data.load_split(manifest, splits, "val")) == 2  # the other split still loads


def test_load_split_bad_inputs(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=4, n_val=1)
    with pytest.raises(InputError, match="split must be one of"):
        data.load_split(manifest, splits, "test")
    with pytest.raises(InputError, match=r"nope\.csv: file not found"):
        data.load_split(manifest, tmp_path / "nope.csv", "train")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,image\na,images/a.png\n")
    with pytest.raises(InputError, match=r"missing \['mask'\]"):
        data.load_split(bad, splits, "train")


def test_fingerprint_follows_manifest_and_split_content(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=4, n_val=1)
    first = data.data_fingerprint(manifest, splits)
    assert first == data.data_fingerprint(manifest, splits)
    assert len(first) == 32
    splits.write_text(splits.read_text().replace(",val", ",train"))
    assert data.data_fingerprint(manifest, splits) != first
    with pytest.raises(InputError, match="file not found"):
        data.data_fingerprint(tmp_path / "missing.csv", splits)


# ---------------------------------------------------------------- resizing


def test_letterbox_keeps_aspect_and_fills_the_border_with_ignore() -> None:
    assert data.fit_box(28, 40, 20) == data.Box(top=3, left=0, height=14, width=20)
    assert data.fit_box(40, 28, 20) == data.Box(top=0, left=3, height=20, width=14)
    assert data.fit_box(28, 40, 20, "stretch") == data.Box(0, 0, 20, 20)
    mask = np.zeros((28, 40), np.uint8)
    mask[:, 20:] = 2
    fitted = data.fit_mask(mask, 20)
    assert fitted.shape == (20, 20) and fitted.dtype == np.uint8
    assert (fitted[:3] == IGNORE).all() and (fitted[17:] == IGNORE).all()
    assert (fitted[3:17, :10] == 0).all() and (fitted[3:17, 10:] == 2).all()
    image = np.full((28, 40, 3), 200, np.uint8)
    fitted_image = data.fit_image(image, 20)
    assert (fitted_image[:3] == 0).all() and (fitted_image[3:17] == 200).all()
    assert data.fit_image(image, 20, "stretch").min() == 200
    with pytest.raises(ValueError, match="resize must be one of"):
        data.fit_box(28, 40, 20, "crop")


def test_nearest_resize_keeps_mask_values_exact() -> None:
    rng = np.random.default_rng(1)
    mask = rng.choice(np.array([0, 1, 2, IGNORE], np.uint8), size=(37, 53))
    for size in (16, 24, 64):
        assert set(np.unique(data.fit_mask(mask, size, "stretch"))) <= {0, 1, 2, IGNORE}


def test_unfit_logits_maps_back_to_the_original_frame() -> None:
    logits = torch.zeros(1, 2, 20, 20)
    logits[:, 1, 3:17, 10:] = 5.0  # right half of the letterboxed 40x28 image
    back = data.unfit_logits(logits, 28, 40)
    assert back.shape == (1, 2, 28, 40)
    pred = back.argmax(1)[0]
    assert (pred[:, :19] == 0).all() and (pred[:, 21:] == 1).all()


# ---------------------------------------------------------------- cache + dataset


def test_cache_holds_fitted_samples_and_is_reused(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=6, n_val=2)
    samples = data.load_split(manifest, splits, "train")
    cache = data.build_cache(samples, 16, tmp_path / "cache", n_classes=3)
    assert cache.ids == tuple(s.id for s in samples)
    assert cache.images.shape == (4, 16, 16, 3) and cache.images.dtype == np.uint8
    assert cache.masks.shape == (4, 16, 16) and cache.masks.dtype == np.uint8
    assert isinstance(cache.images, np.memmap)
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(cache.images[i], data.fit_image(read_rgb(sample.image), 16))
        np.testing.assert_array_equal(cache.masks[i], data.fit_mask(read_mask(sample.mask), 16))
    stamp = (cache.path / "images.npy").stat().st_mtime_ns
    again = data.build_cache(samples, 16, tmp_path / "cache", n_classes=3)
    assert again.path == cache.path
    assert (again.path / "images.npy").stat().st_mtime_ns == stamp  # not rebuilt
    # another size is another cache; a changed manifest row replaces the stale one
    assert data.build_cache(samples, 8, tmp_path / "cache").path != cache.path
    changed = [samples[0].__class__(s.id, s.image, s.mask, s.key + "x") for s in samples]
    rebuilt = data.build_cache(changed, 16, tmp_path / "cache")
    assert rebuilt.path != cache.path
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [rebuilt.path.name]


def test_cache_lists_every_bad_sample(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=6, n_val=2)
    samples = data.load_split(manifest, splits, "train")
    samples[1].image.write_bytes(b"not an image")
    write_mask(samples[2].mask, np.full((32, 32), 7, np.uint8))
    with pytest.raises(InputError) as info:
        data.build_cache(samples, 16, tmp_path / "cache", n_classes=3)
    message = str(info.value)
    assert message.startswith("2 of 4 samples cannot be used")
    assert samples[1].id in message
    assert f"{samples[2].id}: mask values [7] must be class indices below 3 or 255" in message
    assert samples[0].id not in message and samples[3].id not in message
    assert not list((tmp_path / "cache").glob("*/ids.json"))  # no half cache left behind
    good = data.build_cache([samples[0], samples[3]], 16, tmp_path / "cache", n_classes=3)
    assert good.ids == (samples[0].id, samples[3].id)


def test_dataset_reads_single_items_and_whole_batches(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=6, n_val=2)
    cache = data.build_cache(data.load_split(manifest, splits, "train"), 16, tmp_path / "c")
    dataset = data.CachedDataset(cache)
    image, mask = dataset[2]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(np.array(cache.images[2])).permute(2, 0, 1))
    assert torch.equal(mask, torch.from_numpy(np.array(cache.masks[2])))
    images, masks = dataset.__getitems__([3, 0])
    assert torch.equal(images[0], dataset[3][0]) and torch.equal(masks[1], dataset[0][1])
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=data.collate_batch)
    first = next(iter(loader))
    assert first[0].shape == (3, 3, 16, 16) and torch.equal(first[1][1], dataset[1][1])
    clone = pickle.loads(pickle.dumps(dataset))  # what a DataLoader worker receives
    assert torch.equal(clone[1][0], dataset[1][0])


# ---------------------------------------------------------------- augmentation


def _draws(**columns: float) -> torch.Tensor:
    """One sample's draws: every transform off (0.9 > 0.5), scale at its minimum, centred."""
    u = torch.tensor([[0.9, 0.9, 0.9, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5]])
    names = {"hflip": 0, "vflip": 1, "rot": 2, "scale": 3, "sx": 4, "sy": 5}
    for name, value in columns.items():
        u[0, names[name]] = value
    return u


def test_flips_and_rotations_move_image_and_mask_together() -> None:
    image = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    mask = torch.arange(64, dtype=torch.uint8).view(1, 8, 8)
    mask[0, 0, :] = IGNORE
    aug = data.Augment()
    cases = {
        "hflip": (_draws(hflip=0.1), lambda t: t.flip(-1)),
        "vflip": (_draws(vflip=0.1), lambda t: t.flip(-2)),
        "rot90": (_draws(rot=0.1, hflip=0.1), lambda t: t.flip(-1).transpose(-1, -2)),
        "none": (_draws(), lambda t: t),
    }
    for name, (draws, expected) in cases.items():
        x, y = data.apply_augment(image, mask, aug, draws)
        assert torch.equal(y, expected(mask.long())), name
        assert torch.equal(x, expected(image.float() / 255)), name
    # flip then transpose is a rotation by 90 degrees
    assert torch.equal(data.apply_augment(image, mask, aug, _draws(rot=0.1, hflip=0.1))[1],
                       torch.rot90(mask.long(), k=1, dims=(-2, -1)))


def test_scale_crop_is_nearest_for_masks_and_pads_with_ignore() -> None:
    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    mask = torch.arange(64, dtype=torch.uint8).view(1, 8, 8)
    zoom_in = data.Augment(hflip=False, vflip=False, rot90=False, scale_min=2.0, scale_max=2.0)
    _, y = data.apply_augment(image, mask, zoom_in, _draws())
    expected = mask.long()[:, 2:6, 2:6].repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.equal(y, expected)  # the centre window, every pixel doubled
    _, y = data.apply_augment(image, mask, zoom_in, _draws(sx=0.0, sy=0.0))
    assert torch.equal(y, mask.long()[:, :4, :4].repeat_interleave(2, 1).repeat_interleave(2, 2))
    zoom_out = data.Augment(hflip=False, vflip=False, rot90=False, scale_min=0.5, scale_max=0.5)
    _, y = data.apply_augment(image, mask, zoom_out, _draws())
    assert (y[:, :2] == IGNORE).all() and (y[:, 6:] == IGNORE).all()
    assert (y[:, :, :2] == IGNORE).all() and (y[:, :, 6:] == IGNORE).all()
    inner = y[:, 2:6, 2:6]
    assert set(inner.unique().tolist()) <= set(range(64)) and inner.unique().numel() == 16


def test_random_batches_keep_mask_values_and_ignore_pixels(tmp_path: Path) -> None:
    mask = torch.randint(0, 3, (16, 24, 24), dtype=torch.uint8)
    mask[:, :, :4] = IGNORE
    image = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8)
    aug = data.Augment(scale_min=0.75, scale_max=1.25, jitter=0.2)
    x, y = data.augment_batch(image, mask, aug, torch.Generator().manual_seed(3))
    assert x.dtype == torch.float32 and x.min() >= 0.0 and x.max() <= 1.0
    assert y.dtype == torch.int64 and set(y.unique().tolist()) <= {0, 1, 2, IGNORE}
    assert (y == IGNORE).sum() > 0
    x2, y2 = data.augment_batch(image, mask, aug, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(y, y2)  # same generator seed, same batch


def test_colour_jitter_changes_images_only() -> None:
    image = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mask = torch.randint(0, 3, (4, 8, 8), dtype=torch.uint8)
    aug = data.Augment(hflip=False, vflip=False, rot90=False, jitter=0.3)
    x, y = data.augment_batch(image, mask, aug, torch.Generator().manual_seed(0))
    assert torch.equal(y, mask.long())
    assert not torch.equal(x, image.float() / 255)


def test_real_labelme2voc_masks_keep_their_values_in_the_cache(realdata: Path,
                                                               tmp_path: Path) -> None:
    voc = realdata / "labelme-examples" / "examples" / "semantic_segmentation" / "data_dataset_voc"
    ids = sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg"))
    assert ids
    manifest, splits = tmp_path / "manifest.csv", tmp_path / "splits.csv"
    with manifest.open("w", newline="") as handle:  # absolute paths: realdata stays read-only
        csv.writer(handle).writerows([("id", "image", "mask"), *(
            (i, voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png")
            for i in ids)])
    with splits.open("w", newline="") as handle:
        csv.writer(handle).writerows([("id", "split"), *((i, "train") for i in ids)])
    samples = data.load_split(manifest, splits, "train")
    cache = data.build_cache(samples, 64, tmp_path / "cache", n_classes=21)
    for i, sample in enumerate(samples):
        mask = read_mask(sample.mask)
        box = data.fit_box(*mask.shape, 64)
        assert box.height < 64 or box.width < 64  # the VOC photos are not square
        inside = cache.masks[i][box.top:box.top + box.height, box.left:box.left + box.width]
        assert set(np.unique(inside)) <= set(np.unique(mask))
        assert set(np.unique(inside)) - {0, IGNORE}  # the objects survive the downscale
        assert (cache.masks[i][:box.top] == IGNORE).all()
