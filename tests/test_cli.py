"""The segpipe command itself: help without heavy imports, one-screen errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS


def _segpipe(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd
    )


def test_help_lists_every_subcommand_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from pipeline.cli import cli\n"
        "try:\n    cli.main(['--help'], standalone_mode=False)\n"
        "except SystemExit:\n    pass\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert f"  {name} " in result.stdout
    assert result.stdout.strip().endswith("False")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_subcommand_has_help(name: str) -> None:
    result = _segpipe(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: " in result.stdout
    assert "--help" in result.stdout


def test_bad_params_file_is_one_screen_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("classes: [background, a]\nconvrt: {}\n")
    result = _segpipe("convert", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: params.yaml: unknown key 'convrt' (did you mean 'convert'?)" in result.stderr
