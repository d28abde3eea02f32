"""Helpers the tests share: tiny files written into a test's tmp_path (files), a tiny
training set and its params (learn). Nothing here is a test."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REALDATA = PROJECT_ROOT.parent / "shared" / "realdata"


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def segpipe(*args: str, cwd: Path) -> Run:
    """`segpipe ARGS` run in this process from `cwd`, as the executable runs it (one-screen
    errors and exit codes included), with its output captured."""
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return Run(code, out.getvalue(), err.getvalue())
