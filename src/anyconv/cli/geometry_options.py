"""The geometry options shared by ``anyconv explain`` and ``anyconv check``, and their parsing.

Values are read as text and converted here, so a bad number is refused with anyconv's one-line
message naming the option, like an impossible geometry, rather than with argparse's usage dump.
"""

from __future__ import annotations

import argparse

from ..errors import ArgumentError
from ..geometry import PADDING_MODES, Summary, explain

DTYPE_SIZES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def add_geometry_options(
    parser: argparse.ArgumentParser, *, channels: int, out_channels: int, batch: int
) -> None:
    """Add --input-size, --kernel-size, --stride, --padding, --dilation, channels, batch, groups, mode."""
    spatial = parser.add_argument_group("geometry (one value for every dimension, or one per dimension)")
    spatial.add_argument("--input-size", nargs="+", required=True, metavar="SIZE", help="spatial input size")
    spatial.add_argument("--kernel-size", nargs="+", required=True, metavar="K")
    spatial.add_argument("--stride", nargs="+", default=["1"], metavar="S")
    spatial.add_argument(
        "--padding",
        nargs="+",
        default=["0"],
        metavar="P",
        help="an amount, BEFORE,AFTER for one dimension's two sides, or 'same' / 'valid'",
    )
    spatial.add_argument("--dilation", nargs="+", default=["1"], metavar="D")
    spatial.add_argument("--padding-mode", default="zeros", choices=PADDING_MODES)
    sizes = parser.add_argument_group("tensors")
    sizes.add_argument("--channels", default=str(channels), metavar="C", help=f"default {channels}")
    sizes.add_argument(
        "--out-channels", default=str(out_channels), metavar="O", help=f"default {out_channels}"
    )
    sizes.add_argument("--groups", default="1", metavar="G")
    sizes.add_argument("--batch", default=str(batch), metavar="B", help=f"default {batch}")


def summary_from(arguments: argparse.Namespace, dtype: str = "float32") -> Summary:
    """The :class:`~anyconv.geometry.Summary` the options describe; bad values raise ArgumentError."""
    return explain(
        integers("--input-size", arguments.input_size),
        integers("--kernel-size", arguments.kernel_size),
        stride=integers("--stride", arguments.stride),
        padding=padding_value(arguments.padding),
        dilation=integers("--dilation", arguments.dilation),
        channels=integer("--channels", arguments.channels),
        out_channels=integer("--out-channels", arguments.out_channels),
        batch=integer("--batch", arguments.batch),
        itemsize=DTYPE_SIZES[dtype],
        groups=integer("--groups", arguments.groups),
        padding_mode=arguments.padding_mode,
    )


def integer(option: str, text: str) -> int:
    """``text`` as an int, or an ArgumentError naming ``option``.

    >>> integer("--stride", "2")
    2
    >>> integer("--stride", "two")
    Traceback (most recent call last):
    ...
    anyconv.errors.ArgumentError: --stride two is invalid: expected an integer
    """
    try:
        return int(text)
    except ValueError:
        raise ArgumentError(f"{option} {text} is invalid: expected an integer") from None


def integers(option: str, texts: list[str]) -> tuple[int, ...]:
    """Each of ``texts`` as an int."""
    return tuple(integer(option, text) for text in texts)


def padding_value(texts: list[str]) -> str | tuple[int | tuple[int, int], ...]:
    """--padding as anyconv takes it: 'same' / 'valid', or per dimension an int or a (before, after) pair.

    >>> padding_value(["1", "0,2"])
    (1, (0, 2))
    >>> padding_value(["same"])
    'same'
    """
    if len(texts) == 1 and texts[0] in ("same", "valid"):
        return texts[0]
    values: list[int | tuple[int, int]] = []
    for text in texts:
        parts = text.split(",")
        if len(parts) == 1:
            values.append(integer("--padding", text))
        elif len(parts) == 2:
            values.append((integer("--padding", parts[0]), integer("--padding", parts[1])))
        else:
            raise ArgumentError(
                f"--padding {text} is invalid: expected an amount, BEFORE,AFTER, 'same' or 'valid'"
            )
    return tuple(values)
