"""params.yaml loading: defaults, unknown keys, wrong types, class list rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import PROJECT_ROOT

from pipeline.errors import ParamsError
from pipeline.params import ConvertParams, load_params, parse_params


def test_project_params_yaml_loads_with_its_documented_classes() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.labels.classes == ("background", "circle", "square", "triangle", "star")
    assert params.labels.ignore_labels == ("__ignore__",)


def test_missing_sections_take_defaults() -> None:
    params = parse_params({"classes": ["background", "cat"]})
    assert params.convert == ConvertParams()
    assert params.labels.aliases == {}
    assert params.split.val_fraction == 0.2


def test_unknown_top_level_key_is_named_with_the_closest_key() -> None:
    with pytest.raises(ParamsError) as exc:
        parse_params({"classes": ["background", "cat"], "clases": ["x"]})
    assert str(exc.value) == "params.yaml: unknown key 'clases' (did you mean 'classes'?)"


def test_unknown_section_key_is_named_with_its_section() -> None:
    with pytest.raises(ParamsError) as exc:
        parse_params({"classes": ["background", "cat"], "convert": {"max_eror_fraction": 0.1}})
    assert str(exc.value) == (
        "params.yaml: unknown key 'convert.max_eror_fraction' "
        "(did you mean 'convert.max_error_fraction'?)"
    )


def test_wrong_types_are_all_reported_at_once() -> None:
    with pytest.raises(ParamsError) as exc:
        parse_params(
            {"classes": ["background", "cat"], "convert": {"strict": "yes", "jobs": 1.5}}
        )
    assert str(exc.value).splitlines() == [
        "params.yaml: convert.strict must be true or false, got 'yes'",
        "params.yaml: convert.jobs must be an integer, got 1.5",
    ]


def test_integers_are_accepted_for_floats() -> None:
    params = parse_params({"classes": ["bg", "a"], "convert": {"max_error_fraction": 1}})
    assert params.convert.max_error_fraction == 1.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"classes": ["background"]}, "classes must list the background and at least one class"),
        ({"classes": ["background", "a", "a"]}, "classes must be unique, got duplicates ['a']"),
        (
            {"classes": ["background", "a"], "aliases": {"b": "nope"}},
            "aliases.b must name a class, got 'nope'",
        ),
    ],
)
def test_class_list_rules(raw: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=None) as exc:
        parse_params(raw)
    assert message in str(exc.value)


def test_a_section_that_is_not_a_mapping_is_an_error() -> None:
    with pytest.raises(ParamsError) as exc:
        parse_params({"classes": ["background", "a"], "train": [1, 2]})
    assert str(exc.value) == "params.yaml: train must be a mapping, got list"


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("classes: [a, b\n", encoding="utf-8")
    with pytest.raises(ParamsError, match=r"params\.yaml: not valid YAML"):
        load_params(path)
