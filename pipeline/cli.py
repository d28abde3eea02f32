"""The `segpipe` command: one subcommand per stage, plus predict, demo-data, compare and
history.

Each subcommand is a click command defined next to the code it runs and imported only when
it is invoked, so `segpipe convert --help` never imports torch. A DVC stage `segpipe X` runs
this module and X's module (see tests/unit/test_dvc_deps.py).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import click

from pipeline.errors import PipelineError

#: subcommand name -> ("module:attribute" of its click command, one-line help)
COMMANDS = {
    "convert": ("pipeline.convert.stage:command",
                "Annotations in data/raw -> masks, manifest, reports."),
    "split": ("pipeline.split:command", "Sticky stratified, group-aware train/val split."),
    "train": ("pipeline.learn.train:command", "Train the U-Net (GPU when present, else CPU)."),
    "evaluate": ("pipeline.learn.evaluate:command",
                 "Per-class IoU, confusion, overlays, report."),
    "review": ("pipeline.learn.review:command",
               "Rank the annotations most likely wrong (out-of-fold predictions)."),
    "predict": ("pipeline.learn.predict:command",
                "Write palette masks (and Labelme files) for new images."),
    "demo-data": ("pipeline.tools.demo:command", "Write the synthetic sample dataset."),
    "compare": ("pipeline.tools.compare:command", "Gate: compare metrics with a git revision."),
    "history": ("pipeline.tools.history:command",
                "mIoU and per-class IoU across the committed data versions."),
    "report": ("pipeline.tools.report_html:command",
               "One self-contained HTML report: data, split, training, metrics, review."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr = COMMANDS[cmd_name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # static help lines: listing the commands must not import them (and torch)
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="segpipe")
def cli() -> None:
    """Labelme/LabelImg annotations -> validated masks -> split -> U-Net -> per-class IoU.

    Run the whole pipeline with `dvc repro`; each stage is also a subcommand here.
    """


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (argv: the arguments after `segpipe`; default sys.argv[1:]) and
    return its exit code. A PipelineError is printed in one screen, never a traceback."""
    try:
        result = cli.main(args=None if argv is None else list(argv), prog_name="segpipe",
                          standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except PipelineError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    # a subcommand may return its exit code (ctx.exit(n) arrives here as n too)
    return result if isinstance(result, int) else 0


def entry() -> None:
    """The `segpipe` executable."""
    sys.exit(main())
