"""pipeline.io: image probing (corrupt, truncated, bomb), EXIF handling, masks, file helpers."""

from __future__ import annotations

import io as stdio
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.files import png_header_only
from PIL import Image, ImageOps

from pipeline.convert.frame import ImageInfo, prepared_image, probe_image
from pipeline.core.hashing import content_hash
from pipeline.core.records import IGNORE
from pipeline.storage.files import (
    FileStamp,
    atomic_path,
    file_hash,
    file_stamp,
    make_dirs,
    prune_files,
    read_stamped,
    remove_temp_files,
    replace_bytes,
    write_bytes,
    write_csv,
)
from pipeline.storage.images import ImageError
from pipeline.storage.masks import inspect_mask, mask_png_bytes


def jpeg_bytes(width: int, height: int, orientation: int = 1, seed: int = 0) -> bytes:
    """A noisy JPEG (so a truncation cuts real entropy-coded data), optionally with EXIF."""
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = stdio.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()



def decode(data: bytes) -> np.ndarray:
    with Image.open(stdio.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def test_probe_reads_size_format_and_orientation() -> None:
    info = probe_image(jpeg_bytes(40, 20, orientation=6))
    assert info == ImageInfo("JPEG", 40, 20, 6)
    assert info.rotated_size == (20, 40)
    assert info.extension == "jpg"
    flipped = probe_image(jpeg_bytes(40, 20, orientation=3))
    assert flipped.rotated_size == (40, 20)  # 180 degrees keeps the size


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_jpeg_is_corrupt(cut: float) -> None:
    data = jpeg_bytes(64, 48)
    with pytest.raises(ImageError, match="image does not decode: image file is truncated") as e:
        probe_image(data[: int(len(data) * cut)])
    assert e.value.check == "image_corrupt"


def test_unknown_bytes_are_corrupt_with_a_stable_message() -> None:
    with pytest.raises(ImageError) as e:
        probe_image(b"this is not an image at all")
    assert e.value.check == "image_corrupt"
    assert str(e.value) == ("not a readable image: unknown or unsupported format (must be JPEG, "
                            "PNG, BMP, GIF, TIFF or WebP)")


# 20000^2 is over twice Pillow's limit (its error); 10000^2 over it once (its warning, which
# must be an error too). Both are refused from the header: nothing is allocated or decoded.
@pytest.mark.parametrize("side", [20000, 10000])
def test_decompression_bombs_are_refused_from_the_header(side: int) -> None:
    with pytest.raises(ImageError, match="decompression-bomb limit") as e:
        probe_image(png_header_only(side, side))
    assert e.value.check == "image_too_large"


def test_prepared_image_keeps_original_bytes_without_orientation() -> None:
    data = jpeg_bytes(40, 20)
    assert prepared_image(data, probe_image(data), rotate=False) == (data, "jpg")


def test_prepared_image_raw_frame_only_resets_the_orientation_tag() -> None:
    data = jpeg_bytes(40, 20, orientation=6)
    out, ext = prepared_image(data, probe_image(data), rotate=False)
    assert ext == "jpg"
    assert len(out) == len(data)
    assert sum(a != b for a, b in zip(out, data, strict=True)) == 1  # the tag's low byte
    assert probe_image(out) == ImageInfo("JPEG", 40, 20, 1)
    assert np.array_equal(decode(out), decode(data))  # lossless: same pixels


def test_prepared_image_rotated_frame_writes_rotated_png() -> None:
    data = jpeg_bytes(40, 20, orientation=6)
    out, ext = prepared_image(data, probe_image(data), rotate=True)
    assert ext == "png"
    assert probe_image(out) == ImageInfo("PNG", 20, 40, 1)
    with Image.open(stdio.BytesIO(data)) as raw:
        expected = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    assert np.array_equal(decode(out), expected)


def test_mask_png_round_trip_and_inspect() -> None:
    mask = np.zeros((5, 7), np.uint8)
    mask[1, 2:4] = 3
    mask[0, 0] = IGNORE
    data = mask_png_bytes(mask)
    with Image.open(stdio.BytesIO(data)) as image:
        assert image.mode == "P"
        assert image.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    info = inspect_mask(data)
    assert (info.mode, info.dtype, info.channels, info.width, info.height) == ("P", "uint8", 1,
                                                                              7, 5)
    assert (info.counts[0], info.counts[3], info.counts[255], sum(info.counts)) == (32, 2, 1, 35)
    assert inspect_mask(data, mask) == info


def test_inspect_mask_reports_rgb_and_16_bit() -> None:
    buffer = stdio.BytesIO()
    Image.new("RGB", (3, 2)).save(buffer, "PNG")
    rgb = inspect_mask(buffer.getvalue())
    assert (rgb.mode, rgb.dtype, rgb.channels, rgb.counts) == ("RGB", "uint8", 3, ())
    buffer = stdio.BytesIO()
    Image.fromarray(np.zeros((2, 3), np.uint16)).save(buffer, "PNG")
    assert inspect_mask(buffer.getvalue()).dtype == "uint16"


def test_file_hash_and_csv(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"abc")
    assert file_hash(tmp_path / "a.bin") == content_hash(b"abc")
    assert file_hash(tmp_path / "missing.bin") is None
    write_csv(tmp_path / "t.csv", pd.DataFrame({"id": ["a", "b"], "n": [1, 2]}))
    assert (tmp_path / "t.csv").read_bytes() == b"id,n\na,1\nb,2\n"


def test_remove_temp_files_and_prune(tmp_path: Path) -> None:
    (tmp_path / "masks" / "a").mkdir(parents=True)
    (tmp_path / "masks" / "a" / "x.png").write_bytes(b"1")
    (tmp_path / "masks" / "a" / ".x.png.k3j2.tmp").write_bytes(b"half")
    (tmp_path / "masks" / "b").mkdir()
    (tmp_path / "masks" / "b" / "gone.png").write_bytes(b"1")
    (tmp_path / "masks" / "keep.png").write_bytes(b"1")
    assert remove_temp_files(tmp_path) == 1
    removed = prune_files(tmp_path / "masks", {"a/x.png", "keep.png"})
    assert removed == ["b/gone.png"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "masks", "masks/a", "masks/a/x.png", "masks/keep.png"]


def test_atomic_writes_leave_nothing_on_failure_and_use_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.rglob("*")) == [tmp_path / "sub"]
    write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_replace_bytes_needs_its_directory_and_make_dirs_makes_each_once(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.bin"
    with pytest.raises(FileNotFoundError):
        replace_bytes(target, b"x")
    assert list(tmp_path.iterdir()) == []
    make_dirs([target, tmp_path / "a" / "b" / "other.bin", tmp_path / "c" / "d.bin"])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "a", "a/b", "c"]
    replace_bytes(target, b"first")
    replace_bytes(target, memoryview(b"second, longer"))  # replaces, never appends
    assert target.read_bytes() == b"second, longer"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]  # no temp file left


def test_file_stamps_follow_every_write(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    assert file_stamp(path) is None
    assert file_stamp(tmp_path) is None  # a directory is not a file
    path.write_bytes(b"abc")
    data, stamp = read_stamped(path)
    assert data == b"abc"
    assert stamp == file_stamp(path)
    assert stamp.size == 3
    os.utime(path, ns=(stamp.mtime_ns, stamp.mtime_ns))  # touching metadata moves ctime ...
    after = file_stamp(path)
    assert after is not None and after.mtime_ns == stamp.mtime_ns
    assert after.ctime_ns >= stamp.ctime_ns  # ... (on a coarse clock maybe within one tick)
    recent = max(stamp.mtime_ns, stamp.ctime_ns)
    assert not stamp.settled(recent, margin_s=1.0, fine_margin_s=0.1)  # changed just now
    assert stamp.settled(recent + 2_000_000_000, margin_s=1.0, fine_margin_s=0.1)
    assert not stamp.settled(recent, margin_s=0.0, fine_margin_s=0.0)  # same instant
    fine = FileStamp(3, 5_000_000_123, 5_000_000_456, 1, 1)  # sub-second clock
    coarse = FileStamp(3, 5_000_000_000, 6_000_000_000, 1, 1)  # whole seconds only
    assert fine.settled(5_200_000_456) and not fine.settled(5_050_000_456)
    assert not coarse.settled(6_500_000_000) and coarse.settled(7_000_000_001)
    with pytest.raises(FileNotFoundError):
        read_stamped(tmp_path / "missing")


def test_inspect_mask_from_the_header_equals_decoding() -> None:
    mask = np.zeros((6, 9), np.uint8)
    mask[2:4, 1:7] = 2
    mask[5, 8] = IGNORE
    data = mask_png_bytes(mask)
    fast = inspect_mask(data, mask)
    assert fast == inspect_mask(data)  # header + array == decoding the PNG
    assert (fast.mode, fast.width, fast.height, fast.counts[2]) == ("P", 9, 6, 12)
    gray = stdio.BytesIO()
    Image.fromarray(mask, mode="L").save(gray, "PNG")
    assert inspect_mask(gray.getvalue(), mask) == inspect_mask(gray.getvalue())
    assert inspect_mask(gray.getvalue(), mask).mode == "L"
    broken = bytearray(data)
    broken[29] ^= 0xFF  # IHDR CRC: the header is not trusted, PIL decides
    with pytest.raises(Image.UnidentifiedImageError):  # as before: PIL refuses it
        inspect_mask(bytes(broken), mask)
