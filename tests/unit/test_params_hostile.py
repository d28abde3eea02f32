"""Issue 10, items 5, 6 and 10: hostile or careless params.yaml files. Each one is a clear
error in one screen before any stage starts (never a traceback, a hang or a "bug" reported
for every file), with every problem listed at once; the values the README advises load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers import PROJECT_ROOT, segpipe
from helpers.files import labelme, png_bytes, rect

from pipeline.errors import ParamsError
from pipeline.params import load_params

GOOD = "classes: [background, a]\n"


def load(tmp_path: Path, text: str) -> str:
    """The ParamsError message for params.yaml `text`."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    return str(exc.value).replace(str(path), "params.yaml")


def alias_bomb(levels: int = 10) -> str:
    """The billion laughs in YAML: each anchor lists the one before ten times."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ 5. YAML


@pytest.mark.parametrize("use", ["classes: *l9\n", GOOD + "train: {lr: *l9}\n"])
def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path, use: str) -> None:
    # before: over 60 s and 4 GB and rising, formatting the expanded value for the message
    assert load(tmp_path, alias_bomb() + use) == (
        "params.yaml: not valid YAML: the document expands to more than 100000 values (YAML "
        "anchors/aliases nested too deep)")


def test_a_small_use_of_aliases_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("classes: &c [background, a]\nignore_labels: [__ignore__]\n"
                    "aliases: {A: a}\nconvert: &conv {strict: true}\n")
    assert load_params(path).convert.strict is True


@pytest.mark.parametrize("text", ["classes: " + "[" * 50_000 + "]" * 50_000 + "\n",
                                  "classes: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n"])
def test_nesting_too_deep_is_an_error_not_a_recursion_crash(tmp_path: Path, text: str) -> None:
    assert load(tmp_path, text) == ("params.yaml: not valid YAML: must nest at most a few "
                                    "hundred levels deep, got deeper")


def test_a_key_given_twice_is_an_error_not_silently_the_last(tmp_path: Path) -> None:
    text = GOOD + "train: {lr: 0.1}\nconvert: {strict: true}\ntrain: {lr: 0.2}\n"
    assert load(tmp_path, text) == ("params.yaml: not valid YAML: key 'train' must appear "
                                    "once, got it twice (line 4)")


def test_python_tags_are_refused(tmp_path: Path) -> None:
    message = load(tmp_path, "classes: !!python/object/apply:os.system [echo pwned]\n")
    assert message.startswith("params.yaml: not valid YAML: could not determine a constructor "
                              "for the tag 'tag:yaml.org,2002:python/object/apply:os.system'")


# ------------------------------------------------------------------------------ 6. ranges


@pytest.mark.parametrize(("section", "key", "value", "must"), [
    ("train", "lr", -1, "in (0, 10]"),
    ("train", "lr", 1e308, "in (0, 10]"),
    ("train", "threads", -1, "in [0, 1024]"),
    ("train", "base_width", 1000000, "auto or in [1, 512]"),
    ("train", "weight_decay", -1, "in [0, 1]"),
    ("train", "jitter", -5, "in [0, 1]"),
    ("evaluate", "workers", -1, "in [0, 256]"),
    ("convert", "point_radius", -3, "in [0, 1000]"),
    ("convert", "line_width", 0, "in [1, 1000]"),
    ("convert", "line_width", 1000000000, "in [1, 1000]"),
    ("convert", "max_error_fraction", -1, "in [0, 1]"),
])
def test_every_numeric_key_is_range_checked(tmp_path: Path, section: str, key: str,
                                            value: float, must: str) -> None:
    text = GOOD + yaml.safe_dump({section: {key: value}})
    shown = "1e+308" if value == 1e308 else str(value)
    assert load(tmp_path, text) == f"params.yaml: {section}.{key} must be {must}, got {shown}"


def test_a_key_that_does_not_exist_names_the_section(tmp_path: Path) -> None:
    message = load(tmp_path, GOOD + "train: {workers: -1}\n")
    assert message.startswith("params.yaml: unknown key 'train.workers'")


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    text = ("classes: [background, a, a, '', __ignore__]\n"
            "train: {lr: -1, class_weights: [1, -1, 1, 1, 1], jitter: -5}\n"
            "convert: {point_radius: -3}\n")
    assert load(tmp_path, text).splitlines() == [
        "params.yaml: classes must be unique, got duplicates ['a']",
        "params.yaml: classes must be non-empty names, got an empty one at index [3]",
        "params.yaml: classes must not be ignore labels (those are drawn as 255), got "
        "['__ignore__'] in both classes and ignore_labels",
        "params.yaml: convert.point_radius must be in [0, 1000], got -3",
        "params.yaml: train.lr must be in (0, 10], got -1",
        "params.yaml: train.class_weights must be in [0, 1e+06], got [1, -1, 1, 1, 1]",
        "params.yaml: train.jitter must be in [0, 1], got -5"]


@pytest.mark.parametrize(("classes", "message"), [
    (["background", "__ignore__"], "classes must not be ignore labels (those are drawn as 255), "
                                   "got ['__ignore__'] in both classes and ignore_labels"),
    (["background", ""], "classes must be non-empty names, got an empty one at index [1]"),
    (["background", "  "], "classes must be non-empty names, got an empty one at index [1]"),
    ([f"c{i}" for i in range(255)], "classes must be fewer than 255 (a uint8 mask holds "
                                    "0..254; 255 is ignore), got 255"),
    (["background", 1], "classes must be a list whose items are each a string, got "
                        "['background', 1]"),
])
def test_class_lists_that_cannot_be_masks_are_refused(tmp_path: Path, classes: list,
                                                      message: str) -> None:
    assert load(tmp_path, yaml.safe_dump({"classes": classes})) == f"params.yaml: {message}"


def test_254_classes_are_the_most_a_mask_holds(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"classes": [f"c{i}" for i in range(254)]}))
    assert len(load_params(path).labels.classes) == 254


def test_huge_values_are_shown_cut_short(tmp_path: Path) -> None:
    text = GOOD + "train: {device: [" + ", ".join(["x" * 1000] * 1000) + "]}\n"
    message = load(tmp_path, text)
    assert message.startswith("params.yaml: train.device must be a string, got ['xxx")
    assert len(message) < 500  # of a value of a million characters


def test_a_bad_value_fails_the_command_in_one_screen_before_any_file(tmp_path: Path) -> None:
    # before: convert.point_radius: -3 was reported as "a bug in segpipe" for every file
    labelme(tmp_path / "raw" / "a.json", [rect("a", 1, 1, 4, 3)], 10, 8, png_bytes(10, 8))
    (tmp_path / "params.yaml").write_text(GOOD + "convert: {raw_dir: raw, out_dir: out, "
                                          "reports_dir: rep, point_radius: -3}\n")
    result = segpipe("convert", "-j", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("error: params.yaml: convert.point_radius must be in [0, 1000], "
                             "got -3\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "rep").exists()


# ------------------------------------------------------------------------------ 10. on/off


def test_the_readmes_speed_advice_loads_as_written(tmp_path: Path) -> None:
    # the project's own params.yaml with `channels_last: on` and `amp: off`, unquoted: YAML
    # reads them as true and false
    text = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^(  channels_last:) auto", r"\1 on", text)
    text = re.sub(r"(?m)^(  amp:) auto", r"\1 off", text)
    assert "channels_last: on" in text and "amp: off" in text
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    train = load_params(path).train
    assert (train.channels_last, train.amp) == ("on", "off")


@pytest.mark.parametrize(("text", "expected"), [
    ("{channels_last: off, amp: on}", ("off", "bf16")),  # YAML: false, true
    ("{channels_last: 'on', amp: bf16}", ("on", "bf16")),
    ("{channels_last: yes, amp: no}", ("on", "off")),  # YAML 1.1 spells booleans so too
])
def test_on_off_keys_take_yaml_booleans_and_the_words(tmp_path: Path, text: str,
                                                      expected: tuple[str, str]) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(GOOD + f"train: {text}\n")
    train = load_params(path).train
    assert (train.channels_last, train.amp) == expected


def test_a_word_that_is_not_a_choice_names_the_choices(tmp_path: Path) -> None:
    assert load(tmp_path, GOOD + "train: {channels_last: maybe}\n") == (
        "params.yaml: train.channels_last must be one of ['auto', 'on', 'off'], got 'maybe'")
