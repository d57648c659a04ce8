"""``anyconv explain``: print the sizes, memory and cost of a convolution, and draw its fields.

The numbers come from :func:`anyconv.explain`, the picture from :mod:`anyconv.plot`.
"""

from __future__ import annotations

import argparse
import sys

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
    """Print the table; draw it if asked. 1 if the drawing could not be made (no matplotlib)."""
    summary = summary_from(arguments, arguments.dtype)
    print(summary.table())
    if arguments.png is None:
        return 0
    from ..plot import draw_receptive_fields

    try:
        drawing = draw_receptive_fields(summary, arguments.png)
    except ImportError as error:
        print(f"anyconv explain: no picture drawn: {error}", file=sys.stderr)
        return 1
    print(f"\nreceptive fields of outputs {', '.join(map(str, drawing.outputs))} drawn in {drawing.path}")
    return 0
