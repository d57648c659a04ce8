"""Entry point of the ``anyconv`` command: parse the subcommand and hand over to its module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import bench, check, demo, explain
from .failures import refusal


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``anyconv SUBCOMMAND [options]`` and return the exit code."""
    parser = argparse.ArgumentParser(prog="anyconv", description=__doc__)
    parser.add_argument("--version", action="version", version=f"anyconv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (demo, explain, check, bench):
        command.add_parser(commands)
    arguments = parser.parse_args(argv)
    return run_or_refuse(arguments)


def run_or_refuse(arguments: argparse.Namespace) -> int:
    """Run the subcommand; a bad argument or a failed allocation is one line on stderr and exit
    code 2, no traceback."""
    try:
        return arguments.run(arguments)
    except Exception as error:
        message = refusal(error)
        if message is None:
            raise
        print(f"anyconv {arguments.command}: error: {message}", file=sys.stderr)
        return 2
