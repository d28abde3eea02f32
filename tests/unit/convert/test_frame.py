"""convert/frame.py: which frame an annotation was drawn in, decided per file from the
declared size, the stored size and the EXIF-rotated size; never rotated blindly."""

from __future__ import annotations

import pytest

from pipeline.convert.frame import ImageFrame, ImageInfo, decide_frame


def info(width: int, height: int, orientation: int) -> ImageInfo:
    return ImageInfo("JPEG", width, height, orientation)


@pytest.mark.parametrize(
    ("declared", "image", "fmt", "version", "frame"),
    [
        ((40, 20), info(40, 20, 1), "labelme", "5.0.1", ImageFrame(40, 20, False)),
        (None, info(40, 20, 1), "yolo", None, ImageFrame(40, 20, False)),
        ((20, 40), info(40, 20, 6), "labelme", "3.6.0", ImageFrame(20, 40, True)),  # rotated only
        ((40, 20), info(40, 20, 6), "labelme", "5.0.1", ImageFrame(40, 20, False)),  # raw only
        ((40, 20), info(40, 20, 3), "labelme", "5.0.1", ImageFrame(40, 20, True)),  # ambiguous
        ((40, 20), info(40, 20, 3), "labelme", "3.10.1", ImageFrame(40, 20, False)),
        ((40, 20), info(40, 20, 3), "labelme", "3.11.0", ImageFrame(40, 20, True)),
        ((40, 20), info(40, 20, 3), "labelme", None, ImageFrame(40, 20, False)),
        ((40, 40), info(40, 40, 8), "voc", None, ImageFrame(40, 40, True)),  # LabelImg rotates
        ((40, 40), info(40, 40, 8), "voc+labelme", "3.2", ImageFrame(40, 40, False)),
        (None, info(40, 20, 6), "voc", None, ImageFrame(20, 40, True)),  # no size: as displayed
        (None, info(40, 20, 6), "labelme", "3.5.0", ImageFrame(40, 20, False)),
    ],
)
def test_decide_frame(declared, image, fmt, version, frame) -> None:
    assert decide_frame(declared, image, fmt, version) == (frame, None)


def test_decide_frame_mismatch_without_exif() -> None:
    assert decide_frame((20, 40), info(40, 20, 1), "voc", None) == (
        None, "declared image size 20x40 must equal the image's real size 40x20")


# ------------------------------------------------------------------------------ dataset level
