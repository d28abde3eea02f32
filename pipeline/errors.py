"""One small error family. Messages name the file and say "must be X, got Y"."""

from __future__ import annotations


class PipelineError(Exception):
    """An error a user can act on; the CLI prints it in one screen, never a traceback."""

    exit_code = 2


class ParamsError(PipelineError):
    """params.yaml is missing a value, has an unknown key or a value of the wrong type."""


class InputError(PipelineError):
    """An input file or directory is missing or unusable."""


class StageFailed(PipelineError):
    """A stage finished its work but its result is not acceptable (e.g. too many rejects)."""

    exit_code = 1
