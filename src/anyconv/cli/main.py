"""Entry point of the ``anyconv`` command: parse the subcommand and hand over to its module."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import demo


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``anyconv SUBCOMMAND [options]`` and return the exit code."""
    parser = argparse.ArgumentParser(prog="anyconv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(commands)
    arguments = parser.parse_args(argv)
    if arguments.command == "demo":
        return demo.run(arguments)
    return 2
