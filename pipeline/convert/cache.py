"""Convert's cache: which samples can be reused, decided from what is on disk now.

`<out_dir>/.convert-cache.json` keeps, per sample, its key (content hashes of its annotation(s),
its image and the params that change masks), its manifest row, its issues and whether its row
passed the schema checks, so rejected samples are remembered too.

The decision is a pure function, as in pooch's `download_action`: the stage first observes the
inputs and outputs a cached entry names (`Observation`, gathered by IO in `memo.observe`), then
`plan` decides, per sample, to reuse the cached outcome or to convert again; separate code acts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.core.hashing import content_hash
from pipeline.core.records import Issue
from pipeline.params import ConvertParams, Labels
from pipeline.storage.files import FileStamp, write_text

#: Bump when a change in this stage (or in formats/validate/raster) changes its outputs:
#: every cached sample is then converted again.
CODE_VERSION = "3"
CACHE_FILE = ".convert-cache.json"

Entry = dict[str, Any]  # one sample's cache entry, as JSON


@dataclass(frozen=True)
class SampleFiles:
    """The annotation files of one sample id (raw-dir-relative posix paths, sorted)."""

    id: str
    annotations: tuple[str, ...]


class MemoEntry(NamedTuple):
    """The content hash of an input file as it was when it had this stamp (a tuple: the
    memo holds one per input file and is read on every run)."""

    stamp: FileStamp
    hash: str


@dataclass(frozen=True)
class Outcome:
    """The result of one sample: what the manifest, the reports and the cache need."""

    id: str
    annotations: tuple[str, ...]
    key: str
    deps: dict[str, str | None]  # raw-relative input path -> content hash (None: absent)
    #: the key includes the raw dir's tree signature (its image was not found: adding any
    #: file may change the verdict)
    depends_on_tree: bool
    issues: tuple[Issue, ...]
    row: dict[str, Any] | None = None  # manifest row without `group`; None when rejected
    mask: dict[str, Any] | None = None  # facts read back from the mask file (mask schema)
    outputs: dict[str, int] = field(default_factory=dict)  # out-relative path -> size
    source_hash: str | None = None  # hash of the image bytes as given (duplicate detection)
    #: class index (as text) -> [objects, median area, median thickness] (core/fingerprint.py)
    objects: dict[str, list[float]] = field(default_factory=dict)
    cacheable: bool = True
    #: inputs this run read, with their stamps: what the hash memo learns (not cached)
    stamps: dict[str, MemoEntry] = field(default_factory=dict)

    @property
    def converted(self) -> bool:
        return self.row is not None


@dataclass(frozen=True)
class Observation:
    """What is on disk now for one cached entry: each input's hash (None: absent) and each
    output's size (None: absent), with the stamps of the inputs that were looked at."""

    inputs: dict[str, str | None]
    outputs: dict[str, int | None]
    stamps: dict[str, MemoEntry] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    reuse: dict[str, Outcome]  # id -> cached outcome, still valid
    convert: tuple[SampleFiles, ...]  # new, changed or with missing outputs


# --------------------------------------------------------------------------------------------
# Keys (pure)


def params_key(labels: Labels, cfg: ConvertParams) -> str:
    """Hash of everything besides the input files that changes a sample's outputs or issues."""
    relevant = {
        "code": CODE_VERSION,
        "classes": list(labels.classes),
        "ignore_labels": list(labels.ignore_labels),
        "aliases": sorted(labels.aliases.items()),
        "line_width": cfg.line_width,
        "point_radius": cfg.point_radius,
        "max_repair_change": cfg.max_repair_change,
        "difficult": cfg.difficult,
        "undrawable": cfg.undrawable,
        "masks": [[m.masks, m.images, m.suffix, [[list(v) if isinstance(v, tuple) else v, t]
                                                   for v, t in m.values]] for m in cfg.masks],
    }
    return content_hash(json.dumps(relevant, sort_keys=True).encode())


def sample_key(pkey: str, deps: Mapping[str, str | None], tree: str | None) -> str:
    """The cache key of a sample: params key + content hash of each input (None = absent)."""
    return content_hash(json.dumps([pkey, sorted(deps.items()), tree]).encode())


# --------------------------------------------------------------------------------------------
# Entries and the plan (pure)


def to_entry(outcome: Outcome, checked: bool = False) -> Entry:
    """An outcome as a JSON-able cache entry. `checked`: its row passed the schema checks."""
    entry = {"annotations": list(outcome.annotations), "key": outcome.key,
             "deps": outcome.deps, "tree": outcome.depends_on_tree,
             "issues": [dict(vars(i)) for i in outcome.issues], "row": outcome.row,
             "mask": outcome.mask, "outputs": outcome.outputs,
             "source_hash": outcome.source_hash, "objects": outcome.objects}
    return {**entry, "checked": True} if checked else entry


def entry_files(entry: Entry | None, sample: SampleFiles
                ) -> tuple[list[str], list[str]] | None:
    """(input paths, output paths) a cached entry names, or None when the entry cannot be
    reused whatever is on disk (absent, malformed, or for other annotation files)."""
    if not isinstance(entry, dict):
        return None
    try:
        if tuple(entry["annotations"]) != sample.annotations:
            return None
        return list(dict(entry["deps"])), list(dict(entry["outputs"]))
    except (KeyError, TypeError, ValueError):
        return None


def cached_outcome(sample: SampleFiles, entry: Entry, seen: Observation, pkey: str,
                   tree: str) -> Outcome | None:
    """The cached outcome when its key still holds and its outputs are in place, else None."""
    try:
        deps = {path: seen.inputs[path] for path in entry["deps"]}
        with_tree = bool(entry["tree"])
        if sample_key(pkey, deps, tree if with_tree else None) != entry["key"]:
            return None
        if any(seen.outputs.get(rel) != size for rel, size in entry["outputs"].items()):
            return None
        return Outcome(
            id=sample.id, annotations=tuple(entry["annotations"]), key=entry["key"],
            deps=dict(entry["deps"]), depends_on_tree=with_tree,
            issues=tuple(Issue(**i) for i in entry["issues"]), row=entry["row"],
            mask=entry["mask"], outputs=dict(entry["outputs"]),
            source_hash=entry["source_hash"], objects=dict(entry["objects"]),
            stamps=dict(seen.stamps))
    except (KeyError, TypeError, ValueError):  # a cache from another version, edited by hand
        return None


def plan(samples: Sequence[SampleFiles], entries: Mapping[str, Entry],
         observed: Mapping[str, Observation], pkey: str, tree: str) -> Plan:
    """Reuse every sample whose cached outcome still holds; convert the others."""
    reuse, convert = {}, []
    for sample in samples:
        seen = observed.get(sample.id)
        outcome = None if seen is None else cached_outcome(sample, entries[sample.id], seen,
                                                           pkey, tree)
        if outcome is None:
            convert.append(sample)
        else:
            reuse[sample.id] = outcome
    return Plan(reuse, tuple(convert))


# --------------------------------------------------------------------------------------------
# The cache file


def load_cache(path: Path) -> dict[str, Entry]:
    """Cached entries by id; an unreadable cache is simply empty (everything converts)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("code") != CODE_VERSION:
        return {}
    entries = raw.get("entries")
    return entries if isinstance(entries, dict) else {}


def save_cache(path: Path, entries: Mapping[str, Entry]) -> None:
    """Write the cache (entries by id, sorted: the file is deterministic)."""
    text = json.dumps({"code": CODE_VERSION, "entries": dict(sorted(entries.items()))},
                      ensure_ascii=False, separators=(",", ":"))
    write_text(path, text + "\n")
