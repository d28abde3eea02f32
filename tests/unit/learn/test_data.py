"""learn/data.py and learn/inference.py's fitting: the uint8 cache, the Dataset,
augmentations, letterbox fitting (on the tiny dataset of tests/helpers/learn.py)."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.learn import CLASSES, make_dataset

from pipeline.core.manifest import ManifestRow, read_manifest, read_splits, select
from pipeline.core.records import IGNORE
from pipeline.errors import InputError
from pipeline.learn import data
from pipeline.learn.inference import fit_box, fit_image, fit_mask
from pipeline.storage.images import read_rgb
from pipeline.storage.masks import read_mask, write_mask

# ---------------------------------------------------------------- cache + dataset


def rows_of(manifest_csv: Path, splits_csv: Path, split: str) -> list[ManifestRow]:
    manifest = read_manifest(manifest_csv, CLASSES)
    return select(manifest, read_splits(splits_csv), split)


def test_cache_holds_fitted_samples_and_is_reused(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=6, n_val=2)
    root = manifest.parent
    samples = rows_of(manifest, splits, "train")
    cache = data.build_cache(samples, root, 16, tmp_path / "cache", n_classes=3)
    assert cache.ids == tuple(s.id for s in samples)
    assert cache.images.shape == (4, 16, 16, 3) and cache.images.dtype == np.uint8
    assert cache.masks.shape == (4, 16, 16) and cache.masks.dtype == np.uint8
    assert isinstance(cache.images, np.memmap)
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(cache.images[i], fit_image(read_rgb(root / sample.image),
                                                                 16))
        np.testing.assert_array_equal(cache.masks[i], fit_mask(read_mask(root / sample.mask),
                                                               16))
    stamp = (cache.path / "images.npy").stat().st_mtime_ns
    again = data.build_cache(samples, root, 16, tmp_path / "cache", n_classes=3)
    assert again.path == cache.path
    assert (again.path / "images.npy").stat().st_mtime_ns == stamp  # not rebuilt
    # another size is another cache; a changed manifest row replaces the stale one
    assert data.build_cache(samples, root, 8, tmp_path / "cache").path != cache.path
    changed = [replace(s, fingerprint=s.fingerprint + "x") for s in samples]
    rebuilt = data.build_cache(changed, root, 16, tmp_path / "cache")
    assert rebuilt.path != cache.path
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [rebuilt.path.name]


def test_cache_lists_every_bad_sample(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=6, n_val=2)
    root = manifest.parent
    samples = rows_of(manifest, splits, "train")
    (root / samples[1].image).write_bytes(b"not an image")
    write_mask(root / samples[2].mask, np.full((32, 32), 7, np.uint8))
    with pytest.raises(InputError) as info:
        data.build_cache(samples, root, 16, tmp_path / "cache", n_classes=3)
    message = str(info.value)
    assert message.startswith("2 of 4 samples cannot be used")
    assert samples[1].id in message
    assert f"{samples[2].id}: mask values [7] must be class indices below 3 or 255" in message
    assert samples[0].id not in message and samples[3].id not in message
    assert not list((tmp_path / "cache").glob("*/ids.json"))  # no half cache left behind
    good = data.build_cache([samples[0], samples[3]], root, 16, tmp_path / "cache",
                            n_classes=3)
    assert good.ids == (samples[0].id, samples[3].id)


def test_dataset_reads_single_items_and_whole_batches(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=6, n_val=2)
    cache = data.build_cache(rows_of(manifest, splits, "train"), manifest.parent, 16,
                             tmp_path / "c")
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
    # left half (0.2, 0.4, 0.6), right half (0.6, 0.4, 0.2): mean 0.4, grey 0.4 - 0.06 / 0.4 + 0.06
    image = torch.zeros(1, 3, 2, 2)
    image[0, :, :, 0] = torch.tensor([0.2, 0.4, 0.6]).view(3, 1)
    image[0, :, :, 1] = torch.tensor([0.6, 0.4, 0.2]).view(3, 1)
    mask = torch.tensor([[[1, 2], [0, IGNORE]]], dtype=torch.uint8)
    aug = data.Augment(hflip=False, vflip=False, rot90=False, jitter=0.5)

    def jitter(brightness: float, contrast: float, saturation: float) -> torch.Tensor:
        draws = _draws()  # factor = 1 + jitter * (2u - 1): u = (factor - 1) / (2 * 0.5) + 0.5
        draws[0, 6:9] = torch.tensor([brightness, contrast, saturation]) - 1.0 + 0.5
        x, y = data.apply_augment(image, mask, aug, draws)
        assert torch.equal(y, mask.long())  # masks never change
        return x[0, :, 0, :]  # channels x (left, right)

    torch.testing.assert_close(jitter(1.0, 1.0, 1.0), image[0, :, 0, :])
    torch.testing.assert_close(jitter(1.5, 1.0, 1.0),
                               torch.tensor([[0.3, 0.9], [0.6, 0.6], [0.9, 0.3]]))
    # contrast 1.5 about the mean 0.4
    torch.testing.assert_close(jitter(1.0, 1.5, 1.0),
                               torch.tensor([[0.1, 0.7], [0.4, 0.4], [0.7, 0.1]]))
    # saturation 0: every pixel becomes its grey value (0.299 r + 0.587 g + 0.114 b)
    grey = torch.tensor([0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6,
                         0.299 * 0.6 + 0.587 * 0.4 + 0.114 * 0.2])
    torch.testing.assert_close(jitter(1.0, 1.0, 0.5), (image[0, :, 0, :] + grey) / 2)


def test_real_labelme2voc_masks_keep_their_values_in_the_cache(realdata: Path,
                                                               tmp_path: Path) -> None:
    voc = realdata / "labelme-examples" / "examples" / "semantic_segmentation" / "data_dataset_voc"
    ids = sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg"))
    assert ids
    # absolute paths (root / absolute = absolute): the real data stays read-only
    samples = [ManifestRow(i, str(voc / "JPEGImages" / f"{i}.jpg"),
                           str(voc / "SegmentationClass" / f"{i}.png"), "", "", i, (), i)
               for i in ids]
    cache = data.build_cache(samples, tmp_path, 64, tmp_path / "cache", n_classes=21)
    for i, sample in enumerate(samples):
        mask = read_mask(sample.mask)
        box = fit_box(*mask.shape, 64)
        assert box.height < 64 or box.width < 64  # the VOC photos are not square
        inside = cache.masks[i][box.top:box.top + box.height, box.left:box.left + box.width]
        assert set(np.unique(inside)) <= set(np.unique(mask))
        assert set(np.unique(inside)) - {0, IGNORE}  # the objects survive the downscale
        assert (cache.masks[i][:box.top] == IGNORE).all()
