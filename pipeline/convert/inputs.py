"""What is on disk now: content hashes of the inputs (through the hash memo), output sizes,
and the raw dir's tree signature. The IO half of the cache decision (see `cache.plan`).

The hash memo (`default_memo_path`, outside the repo) maps each input's stamp (size, mtime,
ctime, inode, device) to its content hash, so a re-run reads only the inputs whose stamp
changed; the cache key stays the content hash.
"""

from __future__ import annotations

import enum
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.convert import formats
from pipeline.convert.cache import CODE_VERSION, MemoEntry, Observation, SampleFiles
from pipeline.core.hashing import content_hash
from pipeline.params import MaskSource
from pipeline.storage.files import FileStamp, file_stamp, read_stamped, write_text

#: An input changed less than this many seconds before it was read is not put in the hash
#: memo (a write within one tick of the file system's clock could repeat its stamp): for
#: whole-second timestamps, and for sub-second ones (see FileStamp.settled).
MEMO_SETTLE_S = 1.0
MEMO_SETTLE_FINE_S = 0.1


class NeedsRead(enum.Enum):
    """`observe(read=False)` could not vouch for an input without reading it."""

    NEEDS_READ = "needs read"


NEEDS_READ = NeedsRead.NEEDS_READ


#: What `hash_input` gives for a file it must not read (see formats.read_problem): a link
#: out of the raw dir, a loop, a FIFO. Part of the cache key like a hash.
UNREADABLE = "unreadable"


def find_samples(raw_dir: Path, masks: Sequence[MaskSource] = ()) -> list[SampleFiles]:
    """Every annotation under `raw_dir` (`masks`: convert.masks), grouped by sample id; sorted
    by id.

    A path that is not valid UTF-8 (a file name in another encoding) keeps its undecodable
    bytes as surrogates (os.fsdecode); `is_text` tells those apart."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for rel in formats.find_annotation_paths(raw_dir, masks):
        grouped[rel.rpartition(".")[0]].append(rel)  # the sample id: no extension
    return [SampleFiles(i, tuple(sorted(grouped[i]))) for i in sorted(grouped)]


def is_text(path: str) -> bool:
    """True when a raw-relative path is valid UTF-8 (it can go into the manifest and the
    reports as it is)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escaped(path: str) -> str:
    """A path as readable text: undecodable bytes shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def hash_input(raw_dir: Path, rel: str, stamps: dict[str, MemoEntry]) -> str | None:
    """Content hash of an input file (None when absent, UNREADABLE when it must not be read),
    noting its stamp in `stamps` when the file has settled (see MEMO_SETTLE_S)."""
    path = raw_dir / rel
    if not os.path.lexists(path):
        return None
    if not is_text(rel) or formats.read_problem(path, raw_dir) is not None:
        return UNREADABLE  # as convert judges it: a name that is not UTF-8 is never read
    try:
        data, stamp = read_stamped(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    digest = content_hash(data)
    remember(stamps, rel, stamp, digest)
    return digest


def remember(stamps: dict[str, MemoEntry], rel: str, stamp: FileStamp, digest: str) -> None:
    """Note an input's stamp and hash for the memo, unless it changed just now."""
    if stamp.settled(time.time_ns(), MEMO_SETTLE_S, MEMO_SETTLE_FINE_S):
        stamps[rel] = MemoEntry(stamp, digest)


def observe(inputs: Iterable[str], outputs: Iterable[str], raw_dir: Path, out_dir: Path,
            memo: dict[str, MemoEntry], read: bool = True) -> Observation | NeedsRead:
    """Hash every input (the memo vouches for those whose stamp is unchanged) and stat every
    output. With `read=False`, an input the memo cannot vouch for gives NEEDS_READ instead
    of being read (the caller reads those in threads)."""
    raw, out = os.fspath(raw_dir), os.fspath(out_dir)  # os.path: this runs per sample
    hashes: dict[str, str | None] = {}
    stamps: dict[str, MemoEntry] = {}
    for path in inputs:
        known = memo.get(path)
        if known is not None and file_stamp(os.path.join(raw, path)) == known.stamp:
            hashes[path] = known.hash
            stamps[path] = known
        elif not read:
            return NEEDS_READ
        else:
            hashes[path] = hash_input(raw_dir, path, stamps)
    sizes: dict[str, int | None] = {}
    for rel in outputs:
        try:
            sizes[rel] = os.stat(os.path.join(out, rel)).st_size
        except OSError:
            sizes[rel] = None
    return Observation(hashes, sizes, stamps)


def tree_signature(raw_dir: Path) -> str:
    """Hash of the names of all (non-hidden) files under `raw_dir`.

    A sample whose image could not be found depends on it: adding the missing image (under
    any name the readers would look for) makes it convert again.
    """
    names = []
    for dirpath, dirnames, filenames in os.walk(raw_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(raw_dir).as_posix()
        names += [f"{rel}/{n}" for n in filenames if not n.startswith(".")]
    # surrogateescape: a name that is not UTF-8 hashes as its own bytes (valid names as before)
    return content_hash("\n".join(sorted(names)).encode("utf-8", "surrogateescape"))


def default_memo_path(raw_dir: Path) -> Path:
    """Where `segpipe convert` keeps the hash memo of `raw_dir`: the user's cache dir
    ($XDG_CACHE_HOME, else ~/.cache) under segpipe/, one file per raw dir (by its absolute
    path). Outside the repo on purpose: neither git nor DVC sees it, and the DVC outputs
    stay a function of the inputs alone."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = content_hash(os.path.abspath(raw_dir).encode())[:16]
    return root / "segpipe" / f"convert-hashes-{name}.json"


def load_memo(path: Path, raw_dir: Path) -> dict[str, MemoEntry]:
    """The memo of `raw_dir` (raw-relative path -> entry); empty when missing, unreadable,
    of another version or another raw dir (then every input is read and hashed)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("code") != CODE_VERSION or raw.get("raw_dir") != os.path.abspath(raw_dir):
            return {}
        return {rel: MemoEntry(FileStamp(*v[:5]), v[5]) for rel, v in raw["files"].items()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError, IndexError):
        return {}


def save_memo(path: Path, raw_dir: Path, memo: dict[str, MemoEntry]) -> None:
    """Write the memo (atomic). A memo that cannot be written only costs the next run time:
    the OSError is left to the caller."""
    files = {rel: [*e.stamp, e.hash] for rel, e in sorted(memo.items())}
    write_text(path, json.dumps({"code": CODE_VERSION, "raw_dir": os.path.abspath(raw_dir),
                                 "files": files}, separators=(",", ":")) + "\n")
