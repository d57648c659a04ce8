"""``anyconv explain``: print the sizes, memory and cost of a convolution, and draw its fields.

The numbers come from :func:`anyconv.explain`, the picture from :mod:`anyconv.plot`.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ArgumentError
from .geometry_options import DTYPE_SIZES, add_geometry_options, summary_from


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``explain`` subcommand."""
    parser = commands.add_parser(
        "explain",
        help="the sizes, memory and multiply-adds of a convolution; --png draws its receptive fields",
        description="Print, per dimension, the input, padding, output size and field span of a "
        "convolution, then its number of fields, field length, memory of unfolding and "
        "multiply-adds; --png draws the padded input and the fields of a few outputs.",
    )
    add_geometry_options(parser, channels=1, out_channels=1, batch=1)
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPE_SIZES), help="for the memory")
    parser.add_argument("--png", metavar="FILE", help="draw the receptive fields into this PNG file")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    """Print the table; draw it if asked. 1 if the drawing could not be made (no matplotlib).

    A --png path that cannot be written is refused (ArgumentError, exit 2) before the table.
    """
    summary = summary_from(arguments, arguments.dtype)
    if arguments.png is not None:
        check_writable("--png", arguments.png)
    print(summary.table())
    if arguments.png is None:
        return 0
    from ..plot import draw_receptive_fields

    try:
        drawing = draw_receptive_fields(summary, arguments.png)
    except ImportError as error:
        print(f"anyconv explain: no picture drawn: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        raise ArgumentError(f"--png {arguments.png} cannot be written: {error.strerror or error}") from None
    print(f"\nreceptive fields of outputs {', '.join(map(str, drawing.outputs))} drawn in {drawing.path}")
    if drawing.is_partial:
        rows, columns = drawing.shown
        print(
            f"(part of the padded input: {rows} x {columns} elements around each field, "
            f"of {drawing.grid[0]} x {drawing.grid[1]})"
        )
    return 0


def check_writable(option: str, path: str) -> None:
    """Refuse ``path`` unless a file can be written there: its folder exists and takes files.

    >>> check_writable("--png", "/nonexistent/fields.png")
    Traceback (most recent call last):
    ...
    anyconv.errors.ArgumentError: --png /nonexistent/fields.png cannot be written: no folder /nonexistent
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ArgumentError(f"{option} {path} cannot be written: it is a folder")
    if not os.path.isdir(folder):
        raise ArgumentError(f"{option} {path} cannot be written: no folder {folder}")
    if not os.access(folder, os.W_OK):
        raise ArgumentError(f"{option} {path} cannot be written: the folder {folder} is not writable")
