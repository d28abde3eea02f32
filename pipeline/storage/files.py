"""Files: atomic writes, JSON/CSV/text, content hashes and stamps, clean-up of interrupted runs.

Every write goes to a temp file beside its target and is renamed over it when whole, so a
killed run never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipeline.core.hashing import content_hash

if TYPE_CHECKING:
    import pandas as pd


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, else remove it.

    A run killed midway leaves at most a stray `.<name>.<random>.tmp` file (see
    `remove_temp_files`), never a half-written output. The caller creates the temp file, so
    it gets the usual permissions (umask), not mkstemp's owner-only 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    replace_bytes(path, data)


def replace_bytes(path: str | Path, data: bytes) -> None:
    """`write_bytes` for a path whose directory exists (one mkdir per directory, not per file:
    see `make_dirs`). Same atomicity: a temp file beside `path`, renamed over it when whole.

    Raw `os` calls rather than `open()`: no buffer object, a few syscalls per file.
    """
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never reuse a name; mode 0o666 & umask, as open() would create it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def make_dirs(paths: Iterable[str | Path]) -> None:
    """Create the parent directory of every path (each distinct directory once)."""
    for directory in sorted({os.path.dirname(os.fspath(p)) for p in paths}):
        os.makedirs(directory or ".", exist_ok=True)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON with sorted-free stable layout; NaN/inf become null (valid JSON)."""
    write_text(path, json.dumps(_finite(obj), indent=2, ensure_ascii=False) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


class FileStamp(NamedTuple):
    """What `os.stat` says about a file: when all of it is unchanged, so are its bytes
    (the hash memo of convert relies on it; any write changes ctime, a replace the inode).
    An immutable tuple: cheap to build and compare once per input file and run."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    def settled(self, now_ns: int, margin_s: float = 1.0, fine_margin_s: float = 0.1) -> bool:
        """True when the file last changed long enough before `now_ns` (time.time_ns when the
        stamp was taken) that a later write must give a different stamp: one more write
        within the same tick of the file system's clock would keep mtime and ctime, so a
        stamp of a file that changed just now must not be trusted for a memo.

        How long is long enough depends on the clock: `margin_s` when the timestamps are
        whole seconds (a file system that stores seconds only), `fine_margin_s` when they
        have a sub-second part (Linux stamps files from a clock that ticks every few ms)."""
        coarse = self.mtime_ns % 1_000_000_000 == 0 and self.ctime_ns % 1_000_000_000 == 0
        margin = margin_s if coarse else fine_margin_s
        return max(self.mtime_ns, self.ctime_ns) < now_ns - int(margin * 1e9)


def file_stamp(path: str | Path) -> FileStamp | None:
    """The stamp of a file, or None when it does not exist (or is not a regular file)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return FileStamp.of(st) if stat.S_ISREG(st.st_mode) else None


def read_stamped(path: str | Path) -> tuple[bytes, FileStamp]:
    """A file's bytes and the stamp of what was read (fstat of the open file, before the
    read). Raises OSError as `Path.read_bytes` does."""
    with open(path, "rb", buffering=0) as f:
        stamp = FileStamp.of(os.fstat(f.fileno()))
        return f.read(), stamp


def file_hash(path: str | Path) -> str | None:
    """content_hash of a file's bytes, or None when the file does not exist."""
    try:
        return content_hash(Path(path).read_bytes())
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a table as CSV with '\\n' line ends and no index (byte-stable)."""
    write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def remove_temp_files(root: str | Path) -> int:
    """Remove the `.<name>.*.tmp` files an interrupted atomic write left under `root`."""
    removed = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed


def prune_files(root: str | Path, keep: set[str]) -> list[str]:
    """Delete every file under `root` whose posix path relative to `root` is not in `keep`,
    then the directories left empty. Returns the removed paths (sorted)."""
    root = Path(root)
    removed = []
    for dirpath, _, names in os.walk(root, topdown=False):
        prefix = Path(dirpath).relative_to(root).as_posix() + "/"
        prefix = "" if prefix == "./" else prefix
        for name in names:
            if prefix + name not in keep:
                Path(dirpath, name).unlink(missing_ok=True)
                removed.append(prefix + name)
        if prefix and not os.listdir(dirpath):
            os.rmdir(dirpath)
    return sorted(removed)
