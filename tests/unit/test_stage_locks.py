"""Issue 10, item 1 for the other writing stages: split, train and evaluate each lock the
folders they own; a second run into a held folder stops at once, in one line naming the
holder, before it reads or writes anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT, segpipe

HOLD = """
import sys, time
from pipeline.storage.files import folder_lock
with folder_lock([sys.argv[1]], sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize(("command", "folder"), [
    ("split", "data/splits"),
    ("train", "models"),
    ("train", "data/cache"),
    ("evaluate", "reports/eval"),
])
def test_a_stage_refuses_a_folder_another_run_holds(tmp_path: Path, command: str,
                                                    folder: str) -> None:
    (tmp_path / "params.yaml").write_text("classes: [background, a]\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / folder), command],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        result = segpipe(command, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: {command}: {tmp_path / folder} is in use by "
                                        f"another run (pid {holder.pid} on ")
        assert result.stderr.count("\n") == 1
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its holder: the same command now gets past it (and fails for the
    # reason a fresh project has: no manifest yet)
    result = segpipe(command, cwd=tmp_path)
    assert "in use by another run" not in result.stderr
    assert result.returncode != 0
