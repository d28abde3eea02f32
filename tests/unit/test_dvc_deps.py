"""dvc.yaml stays honest: each stage depends on exactly the pipeline modules it imports.

A stage runs `segpipe <command>`: pipeline/cli.py, then the module its command lives in
(cli.COMMANDS), then everything they import inside pipeline/ (package __init__ files
included, since Python runs them), at module level or inside functions. A module missing from
the stage's deps would let a code change go unnoticed by DVC; an extra one re-runs the stage
for nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from pipeline.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


def module_file(name: str) -> Path | None:
    """pipeline.a.b -> pipeline/a/b.py or pipeline/a/b/__init__.py (None outside pipeline)."""
    if name != "pipeline" and not name.startswith("pipeline."):
        return None
    base = ROOT.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imported(path: Path) -> set[str]:
    """Names of the modules a file imports (`from a import b` may import module a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def closure(*modules: str) -> set[str]:
    """Every pipeline file the modules import, transitively, with their packages' __init__."""
    todo, seen = list(modules), set()
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        path = module_file(name)
        if path is None:
            continue
        files.add(path)
        todo += sorted(imported(path))
    return {p.relative_to(ROOT).as_posix() for p in files}


def stage_modules(cmd: str) -> set[str]:
    assert cmd.startswith("segpipe "), f"a stage must run a segpipe command, got {cmd!r}"
    command = cmd.split()[1]
    return closure("pipeline.cli", COMMANDS[command][0].split(":")[0])


def test_every_stage_depends_on_exactly_the_modules_it_imports() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert stages, "dvc.yaml has no stages"
    for name, stage in stages.items():
        declared = {d for d in stage["deps"] if d.startswith("pipeline/")}
        wanted = stage_modules(stage["cmd"])
        assert declared == wanted, (
            f"stage {name}: missing {sorted(wanted - declared)}, "
            f"not imported {sorted(declared - wanted)}")


def test_the_closure_follows_function_level_and_package_imports(tmp_path: Path) -> None:
    found = closure("pipeline.convert.stage")
    # run_convert imports the schemas inside a function; formats/ through its package
    assert "pipeline/core/schemas.py" in found
    assert "pipeline/convert/formats/labelme.py" in found
    assert "pipeline/convert/__init__.py" in found and "pipeline/__init__.py" in found
    assert not any(p.startswith("pipeline/learn/") for p in found)
