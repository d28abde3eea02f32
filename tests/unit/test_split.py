"""The split stage: sticky, stratified, group-aware; errors a user can act on; the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import Run, segpipe

from pipeline.core.manifest import Splits, read_splits
from pipeline.errors import InputError, ParamsError
from pipeline.params import SplitParams, parse_params
from pipeline.split import SplitInput, SplitResult, assign_splits, split_input, splits_csv

CLASSES = ("background", "car", "person", "bike", "sign", "rare")
PATTERN = r"^(?P<group>vid\d+)_"
CFG = SplitParams(val_fraction=0.2, group_pattern=PATTERN, seed=3, version=1, tolerance=0.05)


def make_dataset(n: int = 1250, seed: int = 0) -> pd.DataFrame:
    """Frames of videos (`vid017_004`), a few copies of frames under another name
    (`copies/c012`, same image bytes), long-tailed classes and a rare class in two videos.
    Rows are in arrival order: a prefix of the table is the dataset at an earlier time."""
    rng = np.random.default_rng(seed)
    rows = []
    frames: dict[int, int] = {}
    p = {"car": 0.5, "person": 0.25, "bike": 0.08, "sign": 0.03}
    for _ in range(n):
        # ~40% of arrivals are new frames of a known video, the rest open a new video
        video = int(rng.integers(len(frames))) if frames and rng.random() < 0.4 else len(frames)
        frames[video] = frames.get(video, 0) + 1
        sid = f"vid{video:03d}_{frames[video]:03d}"
        px = {c: int(rng.integers(50, 5000)) if rng.random() < q else 0 for c, q in p.items()}
        px["rare"] = 0
        px["background"] = 10000 - sum(px.values())
        rows.append({"id": sid, "group": sid, **{f"px.{c}": px[c] for c in CLASSES}})
    table = pd.DataFrame(rows)
    # the rare class: in two videos only (both among the first arrivals)
    first_two = table["id"].str.slice(0, 6).drop_duplicates().head(2).index
    table.loc[first_two, "px.rare"] = [120, 900]
    # copies: new ids holding the same image bytes as an earlier frame, arriving after it;
    # both rows name the smaller id as their duplicate group (as convert writes it)
    arrival = list(range(n))
    for k, src in enumerate(rng.choice(n // 2, size=min(25, n // 2), replace=False)):
        copy = table.loc[src].copy()
        copy["id"] = f"copies/c{k:03d}"
        group = min(copy["id"], table.loc[src, "id"])
        copy["group"] = group
        table.loc[src, "group"] = group
        table = pd.concat([table, copy.to_frame().T], ignore_index=True)
        arrival.append(int(src) + 0.5 + float(rng.integers(0, n - src)))
    order = np.argsort(np.array(arrival), kind="stable")
    return table.iloc[order].reset_index(drop=True).astype({f"px.{c}": "int64" for c in CLASSES})


def samples_of(table: pd.DataFrame) -> SplitInput:
    return SplitInput(ids=table["id"].to_numpy(dtype=str),
                   duplicate_groups=table["group"].to_numpy(dtype=str),
                   pixels=table[[f"px.{c}" for c in CLASSES]].to_numpy(dtype=np.int64),
                   classes=CLASSES)


def previous_of(result: SplitResult, version: int = 1) -> Splits:
    return Splits(assignments=dict(zip(result.ids.tolist(), result.splits.tolist(),
                                         strict=True)), version=version)


def video_of(ids: np.ndarray, table: pd.DataFrame) -> dict[str, str]:
    """The group every id must share: its video, also through a copy's duplicate group."""
    key = {i: i.split("_")[0] if i.startswith("vid") else None for i in table["id"]}
    for _, row in table.iterrows():
        if row["id"] != row["group"]:  # row is one half of a duplicate pair
            other = table.loc[(table["group"] == row["group"]) & (table["id"] != row["id"]), "id"]
            for o in other:
                key[row["id"]] = key[row["id"]] or key[o]
    return {i: key[i] or i for i in ids.tolist()}


def check_shares(result: SplitResult, table: pd.DataFrame, f: float, tol: float) -> None:
    """Every foreground class's val image share is within max(tol, largest group / total)."""
    split = dict(zip(result.ids.tolist(), result.splits.tolist(), strict=True))
    group = dict(zip(result.ids.tolist(), result.groups.tolist(), strict=True))
    for c in CLASSES[1:]:
        have = table.loc[table[f"px.{c}"] > 0, "id"].tolist()
        if not have:
            continue
        in_val = sum(split[i] == "val" for i in have)
        sizes = pd.Series([group[i] for i in have]).value_counts()
        allowed = max(tol, sizes.max() / len(have))
        assert abs(in_val / len(have) - f) <= allowed + 1e-9, (c, in_val, len(have), allowed)
        assert result.report["classes"][c]["images"]["val"] == in_val
        if len(sizes) >= 2:
            assert 0 < in_val < len(have), c


def test_growing_dataset_keeps_every_assignment_and_the_shares():
    full = make_dataset()
    sizes = [round(500 * 1.2**k) for k in range(6)]  # a start and five rounds of +20%
    assert sizes == [500, 600, 720, 864, 1037, 1244]
    previous = None
    for size in sizes:
        table = full.head(size)
        result = assign_splits(samples_of(table), CFG, previous=previous)
        if previous is not None:
            old = pd.Series(previous.assignments)
            now = pd.Series(result.splits, index=result.ids)
            assert (now[old.index] == old).all()  # no previously assigned sample moved
            assert result.report["changes"] == {"kept": len(old), "moved": 0,
                                                "new": size - len(old), "removed": 0}
        check_shares(result, table, CFG.val_fraction, CFG.tolerance)
        assert result.report["within_allowed"] is True
        assert not [w for w in result.warnings if "outside" in w or "missing" in w]
        previous = previous_of(result)
    assert result.report["splits"]["val"]["images"] == pytest.approx(0.2 * len(full), abs=15)


def test_groups_never_straddle_and_duplicates_land_together():
    table = make_dataset()
    result = assign_splits(samples_of(table), CFG)
    video = video_of(result.ids, table)
    by_video = pd.DataFrame({"video": [video[i] for i in result.ids], "split": result.splits,
                             "group": result.groups})
    assert (by_video.groupby("video")["split"].nunique() == 1).all()
    assert (by_video.groupby("video")["group"].nunique() == 1).all()
    split = dict(zip(result.ids.tolist(), result.splits.tolist(), strict=True))
    copies = table[table["id"].str.startswith("copies/")]
    assert len(copies) == 25
    for _, row in copies.iterrows():
        twin = table.loc[(table["group"] == row["group"]) & (table["id"] != row["id"]), "id"]
        assert split[row["id"]] == split[twin.item()]
    # a copy is named after the video it joined
    group = dict(zip(result.ids.tolist(), result.groups.tolist(), strict=True))
    assert all(group[c].startswith("vid") for c in copies["id"])


def test_same_result_for_shuffled_input_order():
    table = make_dataset(600)
    first = assign_splits(samples_of(table), CFG)
    shuffled = table.sample(frac=1.0, random_state=7)
    second = assign_splits(samples_of(shuffled), CFG)
    assert first.ids.tolist() == sorted(table["id"])
    assert first.ids.tolist() == second.ids.tolist()
    assert first.splits.tolist() == second.splits.tolist()
    assert first.groups.tolist() == second.groups.tolist()
    assert splits_csv(first, 1) == splits_csv(second, 1)


def test_version_bump_reshuffles_deterministically():
    table = make_dataset(600)
    v1 = assign_splits(samples_of(table), CFG)
    bumped = replace(CFG, version=2)
    v2 = assign_splits(samples_of(table), bumped, previous=previous_of(v1))
    again = assign_splits(samples_of(table), bumped, previous=previous_of(v1))
    fresh = assign_splits(samples_of(table), bumped)
    assert v2.splits.tolist() == again.splits.tolist() == fresh.splits.tolist()
    changed = int((v1.splits != v2.splits).sum())
    assert 100 < changed < 400  # a real reshuffle (about 2 f (1-f) of the samples)
    assert v2.report["changes"]["moved"] == changed
    assert v2.notes == ("split.version changed from 1 to 2: all samples reshuffled",)
    # the same version again is sticky: nothing moves
    same = assign_splits(samples_of(table), bumped, previous=previous_of(v2, version=2))
    assert same.splits.tolist() == v2.splits.tolist()
    check_shares(v2, table, 0.2, 0.05)


def test_rare_class_with_two_groups_is_in_both_splits():
    table = make_dataset(600)
    for seed in range(5):
        result = assign_splits(samples_of(table), replace(CFG, seed=seed))
        rare = result.report["classes"]["rare"]
        assert rare["groups"] == 2
        assert rare["images"] == {"train": 1, "val": 1, "benchmark": 0}


def test_rare_class_gets_val_when_its_second_group_arrives():
    table = make_dataset(600)
    second_video = table.loc[table["px.rare"] > 0, "id"].max().split("_")[0]
    assert second_video == "vid001"
    later = table[~table["id"].str.startswith(second_video)]  # only one rare group at first
    first = assign_splits(samples_of(later), CFG)
    assert first.report["classes"]["rare"]["groups"] == 1
    missing = [w for w in first.warnings if "'rare' is missing" in w]
    assert len(missing) == 1 and "one group, which cannot be in both splits" in missing[0]
    grown = assign_splits(samples_of(table), CFG, previous=previous_of(first))
    assert grown.report["changes"]["moved"] == 0
    assert grown.report["classes"]["rare"]["images"] == {"train": 1, "val": 1, "benchmark": 0}


def test_removed_samples_drop_out_and_the_rest_stays():
    table = make_dataset(600)
    first = assign_splits(samples_of(table), CFG)
    fewer = table.iloc[50:]
    second = assign_splits(samples_of(fewer), CFG, previous=previous_of(first))
    assert second.ids.tolist() == sorted(fewer["id"])
    old = dict(zip(first.ids.tolist(), first.splits.tolist(), strict=True))
    assert [old[i] for i in second.ids.tolist()] == second.splits.tolist()
    assert second.report["changes"] == {"kept": len(table) - 50, "moved": 0, "new": 0,
                                        "removed": 50}


def test_new_duplicate_bridging_two_splits_moves_the_smaller_side_with_a_warning():
    table = make_dataset(600)
    first = assign_splits(samples_of(table), CFG)
    split = pd.Series(first.splits, index=first.ids)
    group = pd.Series(first.groups, index=first.ids)
    solo = group[group.map(group.value_counts()) == 1]
    solo = solo[solo.index.str.startswith("vid")]
    val_one = solo[split[solo.index] == "val"].index[0]
    train_one = solo[split[solo.index] == "train"].index[0]
    bridged = table.copy()
    # the new id duplicates the val frame and matches the train frame's video
    bridged.loc[bridged["id"] == val_one, "group"] = min(val_one, train_one.split("_")[0] + "_9")
    extra = bridged[bridged["id"] == val_one].copy()
    extra["id"] = train_one.split("_")[0] + "_9"
    extra["group"] = min(val_one, extra["id"].item())
    bridged = pd.concat([bridged, extra], ignore_index=True)
    second = assign_splits(samples_of(bridged), CFG, previous=previous_of(first))
    now = pd.Series(second.splits, index=second.ids)
    assert now[val_one] == now[train_one] == now[extra["id"].item()]
    assert second.report["changes"]["moved"] == 1
    moved = [w for w in second.warnings if "changed split to keep their group together" in w]
    assert len(moved) == 1
    tie_side = split[min(val_one, train_one)]  # one old sample each: the smallest id's side
    assert now[val_one] == tie_side


def test_benchmark_ids_are_never_trained_on_and_their_group_goes_to_val():
    table = make_dataset(600)
    bench = ["vid003_001", "copies/c000"]
    assert set(bench) <= set(table["id"])
    result = assign_splits(samples_of(table), CFG, benchmark=bench)
    split = pd.Series(result.splits, index=result.ids)
    group = pd.Series(result.groups, index=result.ids)
    assert split[bench].tolist() == ["benchmark", "benchmark"]
    mates = group[group.isin(group[bench])].index.difference(bench)
    assert len(mates) > 0 and (split[mates] == "val").all()
    assert result.report["splits"]["benchmark"]["images"] == 2
    # a sample that was train before and is now listed moves out of train
    first = assign_splits(samples_of(table), CFG)
    in_train = first.ids[first.splits == "train"][0]
    later = assign_splits(samples_of(table), CFG, previous=previous_of(first),
                          benchmark=[in_train])
    assert pd.Series(later.splits, index=later.ids)[in_train] == "benchmark"


def test_error_cases_name_the_problem():
    samples = samples_of(make_dataset(50))

    def parse(**split: object) -> None:
        parse_params({"classes": list(CLASSES), "split": split})

    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ParamsError) as err:
            parse(val_fraction=bad)
        assert str(err.value) == f"params.yaml: split.val_fraction must be in (0, 1), got {bad}"
    with pytest.raises(ParamsError) as err:
        parse(group_pattern=r"^(vid\d+)_")
    assert str(err.value) == (
        "params.yaml: split.group_pattern must contain a named group (?P<group>...) that picks "
        "the group key out of the id, e.g. '^(?P<group>.+)_\\d+$', got '^(vid\\\\d+)_'")
    with pytest.raises(ParamsError, match=r"split.group_pattern must be a valid regex, got "
                                          r"'\(\?P<group>vid' \(missing \), unterminated"):
        parse(group_pattern="(?P<group>vid")
    with pytest.raises(InputError) as err:
        assign_splits(samples, CFG, benchmark=["vid000_001", "vid000_01", "nope.json"],
                      benchmark_source="bench.txt")
    assert str(err.value) == (
        "bench.txt: every id must be a sample id in the manifest (annotation path below the "
        "raw dir, no extension), got 2 unknown: 'nope.json', 'vid000_01' "
        "(did you mean 'vid000_001'?)")


def test_ids_the_pattern_misses_are_groups_of_their_own_with_a_warning():
    table = make_dataset(100)
    result = assign_splits(samples_of(table), replace(CFG, group_pattern=r"^(?P<group>vid00\d)_"))
    unmatched = [w for w in result.warnings if "do not match split.group_pattern" in w]
    assert len(unmatched) == 1
    group = dict(zip(result.ids.tolist(), result.groups.tolist(), strict=True))
    assert group["vid001_001"] == "vid001"
    alone = [i for i in table.loc[table["id"] == table["group"], "id"]
             if i.startswith("vid0") and not i.startswith("vid00")
             and (table["group"] == i).sum() == 1]
    assert len(alone) > 10
    assert all(group[i] == i for i in alone)


def write_manifest(path: Path, table: pd.DataFrame) -> None:
    """A manifest with every column convert writes (contract order), rows sorted by id."""
    rows = table.sort_values("id")
    full = pd.DataFrame({
        "id": rows["id"], "annotation": rows["id"] + ".json", "image": "images/" + rows["id"]
        + ".jpg", "mask": "masks/" + rows["id"] + ".png", "format": "labelme", "width": 100,
        "height": 100, "n_shapes": 1, "group": rows["group"], "image_hash": "0" * 32,
        "mask_hash": "1" * 32, "key": "2" * 32,
        **{f"px.{c}": rows[f"px.{c}"] for c in CLASSES}, "px.ignore": 0})
    path.parent.mkdir(parents=True, exist_ok=True)
    full.to_csv(path, index=False)


def run_cli(cwd: Path) -> Run:
    return segpipe("split", "--params", "params.yaml", cwd=cwd)


def test_cli_end_to_end(tmp_path):
    table = make_dataset(300)
    write_manifest(tmp_path / "prep" / "manifest.csv", table.head(250))
    (tmp_path / "bench.txt").write_text("# fixed eval set\nvid002_001\n\n", encoding="utf-8")
    params = (f"classes: {list(CLASSES)}\nconvert:\n  out_dir: prep\nsplit:\n"
              f"  splits_path: out/splits.csv\n  report_path: out/split.json\n"
              f"  group_pattern: '{PATTERN}'\n  benchmark: bench.txt\n  seed: 3\n")
    (tmp_path / "params.yaml").write_text(params, encoding="utf-8")
    done = run_cli(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("split: ")
    splits = pd.read_csv(tmp_path / "out" / "splits.csv", dtype=str, keep_default_na=False)
    assert list(splits.columns) == ["id", "group", "split", "version"]
    assert splits["id"].tolist() == sorted(table.head(250)["id"])
    assert set(splits["split"]) == {"train", "val", "benchmark"}
    assert splits.loc[splits["id"] == "vid002_001", "split"].item() == "benchmark"
    assert (splits["version"] == "1").all()
    report = json.loads((tmp_path / "out" / "split.json").read_text(encoding="utf-8"))
    assert report["splits"]["benchmark"]["images"] == 1
    assert sum(s["images"] for s in report["splits"].values()) == 250
    assert report["classes"]["rare"]["images"]["val"] == 1
    assert read_splits(tmp_path / "out" / "splits.csv").version == 1
    assert len(split_input(tmp_path / "prep" / "manifest.csv", CLASSES).ids) == 250

    # grow: the old rows keep their split
    write_manifest(tmp_path / "prep" / "manifest.csv", table)
    assert run_cli(tmp_path).returncode == 0
    grown = pd.read_csv(tmp_path / "out" / "splits.csv", dtype=str, keep_default_na=False)
    merged = splits.merge(grown, on="id", suffixes=("_old", "_new"))
    assert len(merged) == 250 and (merged["split_old"] == merged["split_new"]).all()

    # a bad benchmark list: a clear error, exit 2, and the splits on disk are untouched
    before = (tmp_path / "out" / "splits.csv").read_bytes()
    (tmp_path / "bench.txt").write_text("vid002_001\nvid002_1\n", encoding="utf-8")
    done = run_cli(tmp_path)
    assert done.returncode == 2
    assert done.stderr == ("error: bench.txt: every id must be a sample id in the manifest "
                           "(annotation path below the raw dir, no extension), got 1 unknown: "
                           "'vid002_1' (did you mean 'vid002_001'?)\n")
    assert (tmp_path / "out" / "splits.csv").read_bytes() == before

    # a regex without the named group
    (tmp_path / "params.yaml").write_text(params.replace("(?P<group>vid", "(vid"), "utf-8")
    done = run_cli(tmp_path)
    assert done.returncode == 2
    assert "split.group_pattern must contain a named group (?P<group>...)" in done.stderr
    assert (tmp_path / "out" / "splits.csv").read_bytes() == before
