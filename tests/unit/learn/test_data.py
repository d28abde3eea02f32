"""learn/data.py: the cache at the working scale, class-aware crops, augmentations (on the
tiny dataset of tests/helpers/learn.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.learn import CLASSES, make_dataset, tiny_plan
from PIL import Image

from pipeline.core.manifest import ManifestRow, read_manifest, read_splits, select
from pipeline.core.records import IGNORE
from pipeline.errors import InputError
from pipeline.learn import data
from pipeline.storage.images import read_rgb
from pipeline.storage.masks import read_mask, write_mask


def rows_of(manifest_csv: Path, splits_csv: Path, split: str) -> list[ManifestRow]:
    return select(read_manifest(manifest_csv, CLASSES), read_splits(splits_csv), split)


# ---------------------------------------------------------------- cache


def test_cache_holds_samples_at_the_working_scale_and_is_reused(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=6, n_val=2)
    root = manifest.parent
    samples = rows_of(manifest, splits, "train")
    plan = tiny_plan(scale=0.5)
    cache = data.build_cache(samples, root, plan, tmp_path / "cache", n_classes=3)
    assert cache.ids == tuple(s.id for s in samples)
    # 32x32 images become 16x16, the 40x28 one 20x14 (rows, columns = height, width)
    assert cache.shapes.tolist() == [[16, 16], [14, 20], [16, 16], [16, 16]]
    assert isinstance(cache.images, np.memmap) and cache.images.dtype == np.uint8
    for i, sample in enumerate(samples):
        h, w = cache.shapes[i]
        rgb = read_rgb(root / sample.image)
        expected = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(cache.image(i), expected)
        mask = read_mask(root / sample.mask)
        nearest = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
        np.testing.assert_array_equal(cache.mask(i), nearest)
    stamp = (cache.path / "images.npy").stat().st_mtime_ns
    again = data.build_cache(samples, root, plan, tmp_path / "cache", n_classes=3)
    assert again.path == cache.path
    assert (again.path / "images.npy").stat().st_mtime_ns == stamp  # not rebuilt
    # another scale is another cache; a changed manifest row replaces the stale one
    assert data.build_cache(samples, root, tiny_plan(), tmp_path / "cache").path != cache.path
    changed = [dataclasses.replace(s, fingerprint=s.fingerprint + "x") for s in samples]
    rebuilt = data.build_cache(changed, root, plan, tmp_path / "cache")
    assert rebuilt.path != cache.path
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [rebuilt.path.name]


def test_class_locations_are_pixels_of_their_class(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=6, n_val=2)
    samples = rows_of(manifest, splits, "train")
    cache = data.build_cache(samples, manifest.parent, tiny_plan(), tmp_path / "cache")
    table = cache.locations
    assert set(table[:, 0].tolist()) == {1, 2}  # background and ignore are never sampled
    for value, image, y, x in table.tolist():
        assert cache.mask(image)[y, x] == value
    for i in range(len(cache)):
        for value in (1, 2):
            count = int((cache.mask(i) == value).sum())
            kept = int(((table[:, 0] == value) & (table[:, 1] == i)).sum())
            assert kept == min(count, data.LOCATIONS_PER_CLASS)
    mask = read_mask(manifest.parent / samples[0].mask)
    np.testing.assert_array_equal(data.class_locations(mask, 0, samples[0].id),
                                  data.class_locations(mask, 0, samples[0].id))


def test_cache_lists_every_bad_sample(tmp_path: Path) -> None:
    manifest, splits = make_dataset(tmp_path, n=6, n_val=2)
    root = manifest.parent
    samples = rows_of(manifest, splits, "train")
    (root / samples[1].image).write_bytes(b"not an image")
    write_mask(root / samples[2].mask, np.full((32, 32), 7, np.uint8))
    with pytest.raises(InputError) as info:
        data.build_cache(samples, root, tiny_plan(), tmp_path / "cache", n_classes=3)
    message = str(info.value)
    assert message.startswith("2 of 4 samples cannot be used")
    assert samples[1].id in message
    assert f"{samples[2].id}: mask values [7] must be class indices below 3 or 255" in message
    assert samples[0].id not in message and samples[3].id not in message
    assert not list((tmp_path / "cache").glob("*/ids.json"))  # no half cache left behind
    good = data.build_cache([samples[0], samples[3]], root, tiny_plan(), tmp_path / "cache",
                            n_classes=3)
    assert good.ids == (samples[0].id, samples[3].id)


# ---------------------------------------------------------------- crops


@pytest.fixture
def cache(tmp_path: Path) -> data.Cache:
    manifest, splits = make_dataset(tmp_path, n=12, n_val=0)
    return data.build_cache(rows_of(manifest, splits, "train"), manifest.parent, tiny_plan(),
                            tmp_path / "cache")


def test_class_aware_crops_centre_on_the_drawn_classes(cache: data.Cache) -> None:
    only_discs = tiny_plan(fg_share=1.0, class_weights=(0.0, 0.0, 1.0))
    crops = data.draw_crops(cache, only_discs, 200, np.random.default_rng(0))
    values = [cache.mask(i)[y, x] for i, y, x in zip(crops.image, crops.y, crops.x, strict=True)]
    assert values == [2] * 200
    mixed = tiny_plan(fg_share=1.0, class_weights=(0.0, 1.0, 3.0))
    crops = data.draw_crops(cache, mixed, 4000, np.random.default_rng(1))
    values = np.array([cache.mask(i)[y, x] for i, y, x in zip(crops.image, crops.y, crops.x,
                                                              strict=True)])
    assert set(values.tolist()) == {1, 2}
    assert abs((values == 2).mean() - 0.75) < 0.03  # weights 1 : 3
    # uniform crops: any image, any position; a fixed generator gives the same crops
    uniform = data.draw_crops(cache, tiny_plan(fg_share=0.0), 500, np.random.default_rng(2))
    assert len(set(uniform.image.tolist())) == len(cache)
    again = data.draw_crops(cache, tiny_plan(fg_share=0.0), 500, np.random.default_rng(2))
    assert np.array_equal(uniform.y, again.y) and np.array_equal(uniform.image, again.image)
    assert all(0 <= y < cache.shapes[i, 0] for i, y in zip(uniform.image, uniform.y,
                                                           strict=True))


def test_windows_move_inside_the_image_and_pad_with_ignore(cache: data.Cache) -> None:
    at = data.Crops(np.array([0, 0]), np.array([16, 0]), np.array([16, 31]))
    images, masks = data.extract(cache, at, 16)
    assert images.shape == (2, 3, 16, 16) and masks.shape == (2, 16, 16)
    np.testing.assert_array_equal(masks[0].numpy(), cache.mask(0)[8:24, 8:24])
    np.testing.assert_array_equal(masks[1].numpy(), cache.mask(0)[0:16, 16:32])  # moved inside
    np.testing.assert_array_equal(images[1].permute(1, 2, 0).numpy(),
                                  cache.image(0)[0:16, 16:32])
    big = data.Crops(np.array([0]), np.array([16]), np.array([16]))
    images, masks = data.extract(cache, big, 48)  # larger than the 32x32 image: padded
    np.testing.assert_array_equal(masks[0, 8:40, 8:40].numpy(), cache.mask(0))
    assert (masks[0, :8] == IGNORE).all() and (masks[0, :, 40:] == IGNORE).all()
    assert (images[0, :, :8] == 0).all()


# ---------------------------------------------------------------- augmentation


def _draws(**columns: float) -> torch.Tensor:
    """One crop's draws: every transform off, zoom at its minimum, view centred."""
    u = torch.tensor([[0.9, 0.9, 0.9, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.0]])
    names = {"hflip": 0, "vflip": 1, "rot": 2, "zoom": 3, "sx": 4, "sy": 5, "blur": 10,
             "sigma": 11}
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
        x, y = data.apply_augment(image, mask, aug, draws, patch=8)
        assert torch.equal(y, expected(mask.long())), name
        assert torch.equal(x, expected(image.float() / 255)), name
    # flip then transpose is a rotation by 90 degrees
    assert torch.equal(data.apply_augment(image, mask, aug, _draws(rot=0.1, hflip=0.1), 8)[1],
                       torch.rot90(mask.long(), k=1, dims=(-2, -1)))


def test_zoom_is_nearest_for_masks_and_pads_with_ignore() -> None:
    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    mask = torch.arange(64, dtype=torch.uint8).view(1, 8, 8)
    zoom_in = data.Augment(hflip=False, vflip=False, rot90=False, scale_min=0.5, scale_max=0.5)
    _, y = data.apply_augment(image, mask, zoom_in, _draws(), patch=8)
    expected = mask.long()[:, 2:6, 2:6].repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.equal(y, expected)  # the centre half, every pixel doubled
    _, y = data.apply_augment(image, mask, zoom_in, _draws(sx=0.0, sy=0.0), patch=8)
    assert torch.equal(y, mask.long()[:, :4, :4].repeat_interleave(2, 1).repeat_interleave(2, 2))
    zoom_out = data.Augment(hflip=False, vflip=False, rot90=False, scale_min=2.0, scale_max=2.0)
    _, y = data.apply_augment(image, mask, zoom_out, _draws(), patch=8)
    assert (y[:, :2] == IGNORE).all() and (y[:, 6:] == IGNORE).all()
    assert (y[:, :, :2] == IGNORE).all() and (y[:, :, 6:] == IGNORE).all()
    for i in range(4):  # each output pixel is one of the 2 x 2 input pixels it covers
        for j in range(4):
            block = mask.long()[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            assert int(y[0, 2 + i, 2 + j]) in block.flatten().tolist()
    # a window larger than the patch: zoom 1 is the patch-sized centre of the window
    big = torch.arange(144, dtype=torch.uint8).view(1, 12, 12)
    _, y = data.apply_augment(torch.zeros(1, 3, 12, 12, dtype=torch.uint8), big,
                              data.Augment(hflip=False, vflip=False, rot90=False), _draws(), 8)
    assert torch.equal(y, big.long()[:, 2:10, 2:10])


def test_colour_jitter_changes_images_only() -> None:
    # left half (0.2, 0.4, 0.6), right half (0.6, 0.4, 0.2): mean 0.4
    image = torch.zeros(1, 3, 2, 2)
    image[0, :, :, 0] = torch.tensor([0.2, 0.4, 0.6]).view(3, 1)
    image[0, :, :, 1] = torch.tensor([0.6, 0.4, 0.2]).view(3, 1)
    mask = torch.tensor([[[1, 2], [0, IGNORE]]], dtype=torch.uint8)
    aug = data.Augment(hflip=False, vflip=False, rot90=False, jitter=0.5)

    def jitter(brightness: float, contrast: float, saturation: float) -> torch.Tensor:
        draws = _draws()  # factor = 1 + jitter * (2u - 1): u = (factor - 1) / (2 * 0.5) + 0.5
        draws[0, 6:9] = torch.tensor([brightness, contrast, saturation]) - 1.0 + 0.5
        x, y = data.apply_augment(image, mask, aug, draws, patch=2)
        assert torch.equal(y, mask.long())  # masks never change
        return x[0, :, 0, :]  # channels x (left, right)

    torch.testing.assert_close(jitter(1.0, 1.0, 1.0), image[0, :, 0, :])
    torch.testing.assert_close(jitter(1.5, 1.0, 1.0),
                               torch.tensor([[0.3, 0.9], [0.6, 0.6], [0.9, 0.3]]))
    # contrast 1.5 about the mean 0.4
    torch.testing.assert_close(jitter(1.0, 1.5, 1.0),
                               torch.tensor([[0.1, 0.7], [0.4, 0.4], [0.7, 0.1]]))
    # saturation 0.5: every pixel halfway to its grey value (0.299 r + 0.587 g + 0.114 b)
    grey = torch.tensor([0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6,
                         0.299 * 0.6 + 0.587 * 0.4 + 0.114 * 0.2])
    torch.testing.assert_close(jitter(1.0, 1.0, 0.5), (image[0, :, 0, :] + grey) / 2)


def test_hue_turns_colours_about_the_grey_axis() -> None:
    x = torch.tensor([[0.8, 0.3, 0.1], [0.5, 0.5, 0.5]]).T.reshape(1, 3, 1, 2)
    for turns, check in ((0.0, "same"), (1.0, "same"), (0.5, "other")):
        out = data._hue_shift(x, torch.tensor([turns]))
        torch.testing.assert_close(out[..., 1], x[..., 1])  # grey stays grey
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3)
        assert abs(float((luma @ out[0, :, 0, :1]) - (luma @ x[0, :, 0, :1]))) < 1e-5
        if check == "same":
            torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
        else:
            assert float((out[..., 0] - x[..., 0]).abs().max()) > 0.1


def test_blur_keeps_flat_regions_and_masks() -> None:
    x = torch.zeros(2, 3, 9, 9)
    x[:, :, :, 4:] = 1.0  # a vertical edge
    out = data._blur(x, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out[0], x[0])  # sigma 0: untouched
    torch.testing.assert_close(out[1, :, :, 0], x[1, :, :, 0])  # far from the edge: flat
    assert 0.0 < float(out[1, 0, 4, 3]) < 0.5 < float(out[1, 0, 4, 4]) < 1.0  # edge softened
    torch.testing.assert_close(out[1].sum(), x[1].sum(), atol=1e-4, rtol=0)  # mass kept
    mask = torch.randint(0, 3, (1, 8, 8), dtype=torch.uint8)
    aug = data.Augment(hflip=False, vflip=False, rot90=False, blur=1.0)
    _, y = data.apply_augment(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), mask, aug,
                              _draws(blur=0.0, sigma=0.5), patch=8)
    assert torch.equal(y, mask.long())


def test_augmented_batches_are_reproducible(cache: data.Cache) -> None:
    plan, aug = tiny_plan(), data.Augment(scale_min=0.75, scale_max=1.25, jitter=0.2, hue=0.05,
                                          blur=0.2)
    window = data.window_size(plan, aug)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        crops = data.draw_crops(cache, plan, 8, data.step_rng(0, step))
        images, masks = data.extract(cache, crops, window)
        draws = data.draw_augment(8, torch.Generator().manual_seed(step))
        return data.apply_augment(images, masks, aug, draws, plan.patch)

    x, y = batch(3)
    assert x.shape == (8, 3, plan.patch, plan.patch) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert set(y.unique().tolist()) <= {0, 1, 2, IGNORE}
    x2, y2 = batch(3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(batch(4)[1], y)
