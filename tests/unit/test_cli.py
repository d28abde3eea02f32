"""The segpipe command itself: help without heavy imports, one-screen errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import segpipe

from pipeline.cli import COMMANDS


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


def test_bad_params_file_is_one_screen_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("classes: [background, a]\nconvrt: {}\n")
    result = segpipe("convert", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: params.yaml: unknown key 'convrt' (did you mean 'convert'?)" in result.stderr
