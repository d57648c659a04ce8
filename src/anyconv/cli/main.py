"""Entry point of the ``anyconv`` command: parse the subcommand and hand over to its module."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``anyconv SUBCOMMAND [options]`` and return the exit code."""
    parser = argparse.ArgumentParser(prog="anyconv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="the main job: check the unfold + matmul recipe against torch")
    arguments = parser.parse_args(argv)
    if arguments.command == "demo":
        from . import recipe_check

        return recipe_check.run()
    return 2
