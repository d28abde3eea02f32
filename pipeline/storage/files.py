"""Files: atomic writes, JSON/CSV/text, content hashes and stamps, clean-up of interrupted runs,
and the lock that keeps two runs out of one output folder.

Every write goes to a temp file beside its target and is renamed over it when whole, so a
killed run never leaves a half-written output. A temp file's name carries its writer's pid, so
a run cleaning up never removes the temp file of another live run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import socket
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipeline.core.hashing import content_hash
from pipeline.errors import PipelineError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; folders are not locked there
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import pandas as pd

#: Who holds the lock of an output folder (see `folder_lock`); there only while it is held.
HOLDER_NAME = ".segpipe-run.json"
#: Longest part of a target's name kept in its temp file's name: with the pid and the random
#: part the temp name stays within the 255 bytes a file name may have.
TEMP_NAME_BYTES = 200
_TEMP = re.compile(r"^\..*\.tmp$", re.DOTALL)
_TEMP_PID = re.compile(r"\.(\d{1,10})-[0-9a-f]{12}\.tmp$")


def temp_name(name: str) -> str:
    """The name of a temp file for target `name`: `.<name>.<pid>-<random>.tmp`, the name cut
    to TEMP_NAME_BYTES bytes (a 255-byte target still gets a valid temp name)."""
    raw = os.fsencode(name)
    if len(raw) > TEMP_NAME_BYTES:
        name = os.fsdecode(raw[:TEMP_NAME_BYTES])  # bytes cut mid-character stay bytes
    return f".{name}.{os.getpid()}-{secrets.token_hex(6)}.tmp"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, else remove it.

    A run killed midway leaves at most a stray temp file (see `temp_name` and
    `remove_temp_files`), never a half-written output. The caller creates the temp file, so
    it gets the usual permissions (umask), not mkstemp's owner-only 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temp_name(path.name)
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
    tmp = os.path.join(head, temp_name(name))
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
    """Write UTF-8 text. A lone surrogate (a non-UTF-8 byte of a file name, or an escape
    in a hostile JSON) is written as its escape `\\udcff`: in JSON that is the same string
    again, elsewhere readable text, and never a crash of the run."""
    write_bytes(path, text.encode("utf-8", "backslashreplace"))


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
    """A regular file's bytes and the stamp of what was read (fstat of the open file, before
    the read). Raises OSError as `Path.read_bytes` does, and for anything but a regular file
    (opened without blocking: a FIFO would otherwise wait forever for a writer)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with open(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", os.fspath(path))
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)",
                          os.fspath(path))
        return f.read(), FileStamp.of(st)


def file_hash(path: str | Path) -> str | None:
    """content_hash of a file's bytes, or None when the file does not exist."""
    try:
        return content_hash(Path(path).read_bytes())
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a table as CSV with '\\n' line ends and no index (byte-stable)."""
    write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def remove_temp_files(root: str | Path, *, shared: bool = False) -> int:
    """Remove the temp files (`.<name>....tmp`) interrupted atomic writes left under `root`.

    `shared=False`: the caller holds the folder's lock (`folder_lock`), so no other run writes
    there: every temp file goes. `shared=True` (a folder other stages write too): only temp
    files whose writer (the pid in the name) is no longer running on this machine."""
    removed = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not _TEMP.match(name) or (shared and not _writer_is_gone(name)):
                continue
            Path(dirpath, name).unlink(missing_ok=True)
            removed += 1
    return removed


def _writer_is_gone(name: str) -> bool:
    """True when the temp file's name carries the pid of a process that no longer runs
    (a name without a pid, from an older version, is kept: its writer cannot be told)."""
    found = _TEMP_PID.search(name)
    if found is None:
        return False
    pid = int(found.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's process, or no such pid
        return False
    return False


def prune_files(root: str | Path, keep: set[str]) -> list[str]:
    """Delete every file under `root` whose posix path relative to `root` is not in `keep`,
    then the directories left empty. Returns the removed paths (sorted)."""
    removed = unowned_files(root, keep)
    remove_files(root, removed)
    return removed


def unowned_files(root: str | Path, keep: set[str]) -> list[str]:
    """The posix paths, relative to `root`, of the files under `root` not in `keep` (sorted;
    none when `root` is missing)."""
    root = Path(root)
    found = []
    for dirpath, _, names in os.walk(root):
        prefix = Path(dirpath).relative_to(root).as_posix() + "/"
        prefix = "" if prefix == "./" else prefix
        found += [prefix + name for name in names if prefix + name not in keep]
    return sorted(found)


def remove_files(root: str | Path, rels: Iterable[str]) -> None:
    """Delete the files `rels` (posix paths relative to `root`), then every directory under
    `root` left empty."""
    root = Path(root)
    for rel in rels:
        (root / rel).unlink(missing_ok=True)
    for dirpath, _, _ in os.walk(root, topdown=False):
        if dirpath != os.fspath(root) and not os.listdir(dirpath):
            os.rmdir(dirpath)


# --------------------------------------------------------------------------------------------
# The lock of an output folder


class FolderBusy(PipelineError):
    """Another run holds the lock of an output folder this run would write."""


@contextmanager
def folder_lock(folders: Iterable[str | Path], stage: str) -> Iterator[None]:
    """Hold the exclusive lock of each folder (created when missing) for the `with` body;
    raise FolderBusy, in one line naming the other run, when one is held.

    An OS lock on the folder itself (flock of the directory): it dies with its process, so
    a killed run never leaves a stale lock, and no lock file sits among the outputs. While
    held, `<folder>/.segpipe-run.json` says who holds it (pid, host, command, since when); it
    is removed on release (one a killed run left is overwritten by the next holder)."""
    unique = sorted({os.path.realpath(f) for f in folders})  # one order: no two-run deadlock
    with contextlib.ExitStack() as held:
        for folder in unique:
            held.enter_context(_lock_one(Path(folder), stage))
        yield


@contextmanager
def _lock_one(folder: Path, stage: str) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        if not _flock(fd, folder, stage):
            yield  # a file system without locks: run unlocked (said on stderr)
            return
        info = folder / HOLDER_NAME
        write_bytes(info, _holder_record(stage))
        try:
            yield
        finally:
            info.unlink(missing_ok=True)  # before the unlock: nobody reads a finished run's
    finally:
        os.close(fd)  # closing the directory releases the lock


def _flock(fd: int, folder: Path, stage: str) -> bool:
    """Take the lock without waiting: True when held, False when this file system cannot
    lock (warned); raise FolderBusy when another run holds it."""
    if fcntl is None:  # pragma: no cover - no flock on this platform
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FolderBusy(f"{stage}: {folder} is in use by another run ({_holder(folder)}); "
                         "wait for it to end, or stop it, then run again") from None
    except OSError as exc:
        print(f"warning: {stage}: cannot lock {folder} ({exc.strerror or exc}); running "
              "without a lock: never run two at once here", file=sys.stderr)
        return False
    return True


def _holder_record(stage: str) -> bytes:
    argv = [os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python",
            *sys.argv[1:]]
    if argv[0] == "__main__.py":
        argv[0] = "python -m pipeline"
    record = {"pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
              "command": " ".join(argv)[:200],
              "since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}
    return (json.dumps(record) + "\n").encode("utf-8", "backslashreplace")


def _holder(folder: Path) -> str:
    """Who holds the lock, as the holder wrote it (or a note when it has not yet)."""
    try:
        record = json.loads((folder / HOLDER_NAME).read_text(encoding="utf-8")[:2000])
        return (f"pid {int(record['pid'])} on {record['host']}, `{record['command']}`, "
                f"since {record['since']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "its details are not written yet"
