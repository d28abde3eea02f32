"""Benchmark of the convert stage on the real annotation sets (prints figures; not a test).

    .venv/bin/python bench/convert.py [--copies 5] [--jobs 0] [--realdata ../shared/realdata]

1. Copies the real sets (Labelme semantic-segmentation examples, the nuts set, the raccoon VOC
   set) into bench/.work/raw/copy<k>/... `--copies` times (the same files under new names,
   so the set has >= 1,000 samples), with one params.yaml whose classes cover all three.
2. Full conversion with `run_convert` (-j all cores by default), timed in-process.
3. The reference: a straightforward single-process loop doing what labelme2voc does: read the
   JSON/XML, decode the image, draw every shape into its own mask with PIL, paint the label
   image, save it as a palette PNG (and copy the image file, as convert does).
4. Adds one file (a copy of a raccoon XML + JPEG under a new name) and times the re-run,
   in-process and as a `segpipe convert` subprocess (interpreter start and imports included).
   Both use the hash memo that `segpipe convert` uses (`default_memo_path`, deleted before
   the full conversion), so the re-run reads only the new files.

Figures: files/s and megapixels/s (image area of the converted samples) for both, their ratio,
and the incremental re-run time as a share of the full conversion; CPU seconds (this process
and its pool workers) per file for both, the figure to compare when the machine is shared:
the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.convert.inputs import default_memo_path, load_memo  # noqa: E402
from pipeline.convert.stage import run_convert  # noqa: E402
from pipeline.core import schemas  # noqa: E402, F401 - imported before timing, as the CLI does
from pipeline.params import load_params  # noqa: E402
from pipeline.storage.masks import voc_palette  # noqa: E402

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "potted plant",
               "sheep", "sofa", "train", "tv/monitor"]
CLASSES = ["background", *VOC_CLASSES, "date", "hazelnut", "fig", "raccoon"]


def build_set(realdata: Path, raw: Path, copies: int) -> None:
    """`copies` copies of the three real sets under raw/copy<k>/."""
    if raw.exists():
        shutil.rmtree(raw)
    sources = [
        (realdata / "labelme-examples/examples/semantic_segmentation/data_annotated", "labelme"),
        (realdata / "tony607-nuts-labelme/images", "nuts"),
        (realdata / "raccoon-voc/annotations", "raccoon/annotations"),
        (realdata / "raccoon-voc/images", "raccoon/images"),
    ]
    for k in range(copies):
        for source, name in sources:
            shutil.copytree(source, raw / f"copy{k}" / name)


def write_params(work: Path) -> Path:
    params = {
        "classes": CLASSES,
        "ignore_labels": ["__ignore__"],
        "convert": {"raw_dir": "raw", "out_dir": "prepared", "reports_dir": "reports",
                    "max_error_fraction": 1.0},
    }
    path = work / "params.yaml"
    path.write_text(json.dumps(params))  # JSON is YAML
    return path


# --------------------------------------------------------------------------- the reference


def _shape_mask(size: tuple[int, int], kind: str, points: list[list[float]]) -> np.ndarray:
    """labelme.utils.shape_to_mask, for the kinds in the real sets."""
    mask = Image.new("1", size, 0)
    draw = ImageDraw.Draw(mask)
    xy = [tuple(p) for p in points]
    if kind == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    else:
        draw.polygon(xy, outline=1, fill=1)
    return np.array(mask, dtype=bool)


def reference_one(annotation: Path, out: Path, classes: dict[str, int]) -> int:
    """One file the labelme2voc way; returns the image area in pixels."""
    if annotation.suffix == ".json":
        doc = json.loads(annotation.read_bytes())
        if doc.get("imageData"):
            data = base64.b64decode(doc["imageData"])
        else:
            data = (annotation.parent / doc["imagePath"]).read_bytes()
        shapes = [(s["label"], s.get("shape_type") or "polygon", s["points"])
                  for s in doc["shapes"]]
    else:
        root = ElementTree.parse(annotation).getroot()
        image_path = annotation.parent.parent / "images" / root.findtext("filename")
        data = image_path.read_bytes()
        shapes = []
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            x0, y0, x1, y1 = (int(float(box.findtext(k))) - 1
                              for k in ("xmin", "ymin", "xmax", "ymax"))
            shapes.append((obj.findtext("name"), "rectangle", [[x0, y0], [x1, y1]]))
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    height, width = image.shape[:2]
    label = np.zeros((height, width), np.int32)
    for name, kind, points in shapes:
        value = -1 if name == "__ignore__" else classes[name]
        label[_shape_mask((width, height), kind, points)] = value
    png = Image.fromarray(label.astype(np.uint8), mode="P")
    png.putpalette(voc_palette())
    target = out / annotation.relative_to(out.parent / "raw").with_suffix(".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    png.save(target)
    target.with_suffix(".jpg").write_bytes(data)
    return width * height


def reference(raw: Path, out: Path) -> tuple[int, int, float]:
    classes = {c: i for i, c in enumerate(CLASSES)}
    classes["_background_"] = 0
    if out.exists():
        shutil.rmtree(out)
    files = sorted(p for p in raw.rglob("*") if p.suffix in (".json", ".xml"))
    start = time.perf_counter()
    pixels = sum(reference_one(f, out, classes) for f in files)
    return len(files), pixels, time.perf_counter() - start


# --------------------------------------------------------------------------- main


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool's workers)."""
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                       resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_convert(work: Path, jobs: int, memo_path: Path) -> tuple[object, float, float]:
    params = load_params(work / "params.yaml")
    cpu, start = cpu_seconds(), time.perf_counter()
    summary = run_convert(params, jobs=jobs, params_path="params.yaml", progress=False,
                          memo_path=memo_path)
    return summary, time.perf_counter() - start, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--realdata", type=Path, default=ROOT.parent / "shared" / "realdata")
    parser.add_argument("--copies", type=int, default=5, help="copies of the real sets")
    parser.add_argument("--jobs", type=int, default=0, help="convert -j (0 = all cores)")
    args = parser.parse_args()
    work = ROOT / "bench" / ".work"
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    for stale in ("prepared", "reports", "reference"):
        shutil.rmtree(stale, ignore_errors=True)
    build_set(args.realdata, work / "raw", args.copies)
    write_params(work)
    cores = len(os.sched_getaffinity(0))
    print(f"cores available: {cores}; load average before: {os.getloadavg()}")

    memo_path = default_memo_path(Path("raw"))  # what `segpipe convert` run here uses
    memo_path.unlink(missing_ok=True)  # a cold start: every input is read and hashed
    summary, full, full_cpu = timed_convert(work, args.jobs, memo_path)
    manifest = (work / "prepared" / "manifest.csv").read_text().splitlines()[1:]
    pixels = sum(int(r.split(",")[5]) * int(r.split(",")[6]) for r in manifest)
    print(f"convert (-j {args.jobs or cores}): {summary.seen} samples, {summary.converted} "
          f"converted in {full:.2f} s: {summary.seen / full:.1f} files/s, "
          f"{pixels / 1e6 / full:.1f} MP/s; {full_cpu:.2f} CPU-s = "
          f"{summary.seen / full_cpu:.1f} files per CPU-s ({full_cpu / summary.seen * 1e3:.2f} "
          "CPU-ms/file)")

    known = len(load_memo(memo_path, Path("raw")))
    print(f"  hash memo after the full run: {known} of {summary.seen * 2} inputs (an input "
          "changed within a moment of being read is left out; the re-run reads it again)")
    cpu = cpu_seconds()
    n_ref, ref_pixels, ref_time = reference(work / "raw", work / "reference")
    ref_cpu = cpu_seconds() - cpu
    print(f"reference (1 process): {n_ref} files in {ref_time:.2f} s: "
          f"{n_ref / ref_time:.1f} files/s, {ref_pixels / 1e6 / ref_time:.1f} MP/s; "
          f"{ref_cpu:.2f} CPU-s = {n_ref / ref_cpu:.1f} files per CPU-s "
          f"({ref_cpu / n_ref * 1e3:.2f} CPU-ms/file)")
    print(f"ratio convert / reference (files/s): {(summary.seen / full) / (n_ref / ref_time):.2f}x")
    from pipeline.convert import formats

    annotations = formats.find_annotations(work / "raw")
    cpu = cpu_seconds()
    for path in annotations:
        formats.read_annotation(path, work / "raw")
    read_cpu = cpu_seconds() - cpu
    print(f"  of convert's CPU time, reading the annotations (pipeline.formats, which also finds "
          f"the images) is {read_cpu:.2f} CPU-s = {read_cpu / len(annotations) * 1e3:.2f} "
          f"ms/file")

    extra = work / "raw" / "extra"
    extra.mkdir(exist_ok=True)
    shutil.copy(args.realdata / "raccoon-voc/annotations/raccoon-1.xml", extra / "new-1.xml")
    shutil.copy(args.realdata / "raccoon-voc/images/raccoon-1.jpg", extra / "raccoon-1.jpg")
    summary, incremental, _ = timed_convert(work, args.jobs, memo_path)
    print(f"re-run after adding 1 file to {summary.seen - 1}: {summary.processed} processed, "
          f"{summary.reused} reused in {incremental:.3f} s = "
          f"{incremental / full:.1%} of the full conversion (in-process)")
    (extra / "new-1.xml").rename(extra / "new-2.xml")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "convert"], check=True, cwd=work,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    cli = time.perf_counter() - start
    print(f"same as a `segpipe convert` subprocess (start-up and imports included): {cli:.2f} s "
          f"= {cli / full:.1%} of the full in-process conversion")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
