"""The numbers behind ``anyconv explain``: sizes, memory and cost of one convolution, pure integers.

Answers the questions people ask about unfold: how big the output is, where the padding goes,
what unfolding costs next to the zero-copy view, and why fold does not simply invert unfold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import invalid
from .arguments import as_int
from .geometry import Geometry, make_geometry
from .limits import check_size, culprit, format_bytes

#: the most steps :attr:`Summary.coverage` takes per dimension (one per (output, tap) pair and
#: input element): enough for any real layer, and a fraction of a second
COUNT_LIMIT = 10**6


@dataclass(frozen=True)
class Summary:
    """What one convolution does, in numbers; build it with :func:`explain`, ``str()`` is the table.

    >>> s = explain((5,), 3, stride=2)
    >>> s.geometry.output_size, s.num_fields, s.field_length, s.multiply_adds
    ((2,), 2, 3, 6)
    """

    geometry: Geometry
    channels: int
    out_channels: int
    batch: int
    itemsize: int
    groups: int

    @property
    def num_fields(self) -> int:
        """L, the receptive fields per sample: one per output position."""
        return self.geometry.num_positions

    @property
    def field_length(self) -> int:
        """The length of one field as a column of unfold: ``channels * kernel_volume``."""
        return self.channels * self.geometry.kernel_volume

    @property
    def unfold_shape(self) -> tuple[int, int, int]:
        """The shape of ``unfold``'s result: (B, C*K, L)."""
        return (self.batch, self.field_length, self.num_fields)

    @property
    def view_shape(self) -> tuple[int, ...]:
        """The shape of the zero-copy view of ``patches``: (B, C, *out, *kernel)."""
        return (self.batch, self.channels, *self.geometry.output_size, *self.geometry.kernel_size)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of the convolution's output: (B, O, *out)."""
        return (self.batch, self.out_channels, *self.geometry.output_size)

    @property
    def input_bytes(self) -> int:
        """Bytes of the input (B, C, *input_size)."""
        return self.batch * self.channels * math.prod(self.geometry.input_size) * self.itemsize

    @property
    def unfold_bytes(self) -> int:
        """Bytes of the unfolded (B, C*K, L) tensor, which holds every overlap as a copy."""
        return math.prod(self.unfold_shape) * self.itemsize

    @property
    def view_bytes(self) -> int:
        """Bytes the zero-copy view needs: the padded copy of the input, or none without padding."""
        if not self.geometry.is_padded:
            return 0
        return self.batch * self.channels * math.prod(self.geometry.padded_size) * self.itemsize

    @property
    def multiply_adds(self) -> int:
        """Multiply-adds of the convolution: ``B * O * L * (C / groups) * K``."""
        per_output = (self.channels // self.groups) * self.geometry.kernel_volume
        return self.batch * self.out_channels * self.num_fields * per_output

    @property
    def unread(self) -> tuple[int, ...]:
        """Per dimension, the trailing padded elements no field reaches (the stride does not land there)."""
        g = self.geometry
        return tuple(
            padded - ((out - 1) * step + span)
            for padded, out, step, span in zip(g.padded_size, g.output_size, g.stride, g.field_span)
        )

    @property
    def coverage(self) -> tuple[int, int] | None:
        """The fewest and most fields that read one input element: ``fold(unfold(x))`` is x times that.

        0 means some input elements are read by no field, so fold cannot bring them back. None
        when a dimension is too large to count in a moment (more than ``COUNT_LIMIT`` steps).
        """
        g = self.geometry
        steps = (out * kernel + size for out, kernel, size in zip(g.output_size, g.kernel_size, g.input_size))
        if max(steps) > COUNT_LIMIT:
            return None
        lowest, highest = 1, 1
        for counts in _coverage_per_dimension(self.geometry):
            if not counts:
                return (0, 0)
            lowest *= min(counts)
            highest *= max(counts)
        return (lowest, highest)

    def table(self) -> str:
        """The table ``anyconv explain`` prints."""
        return _format_table(self)

    def __str__(self) -> str:
        return self.table()


def explain(
    input_size: Any,
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    channels: int = 1,
    out_channels: int = 1,
    batch: int = 1,
    itemsize: int = 4,
    *,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Summary:
    """The sizes, memory and cost of a convolution over spatial size ``input_size``.

    Arguments are those of :func:`anyconv.make_geometry`, plus the channels, batch, groups and
    the bytes per element (4 for float32). Pure integers: no tensor is made. Sizes that no
    tensor can have (more bytes than torch's int64 counts) are refused, naming the argument.

    >>> s = explain((32, 32), 3, stride=2, padding=1, channels=3, out_channels=8)
    >>> s.geometry.output_size, s.unfold_shape, s.multiply_adds
    ((16, 16), (1, 27, 256), 55296)
    >>> s.unfold_bytes, s.view_bytes, s.coverage
    (27648, 13872, (1, 4))
    """
    geometry = make_geometry(input_size, kernel_size, stride, padding, dilation, padding_mode)
    counts = {
        name: as_int(name, value)
        for name, value in (
            ("channels", channels),
            ("out_channels", out_channels),
            ("batch", batch),
            ("itemsize", itemsize),
            ("groups", groups),
        )
    }
    for name, value in counts.items():
        if value < 1:
            raise invalid(name, value, "a positive integer")
    for name in ("channels", "out_channels"):
        if counts[name] % counts["groups"]:
            raise invalid(name, counts[name], f"a multiple of groups={counts['groups']}")
    summary = Summary(geometry, **counts)
    blame = culprit(geometry, padding, ("kernel_size", kernel_size))
    for what, shape in (
        ("the padded input", (summary.batch, summary.channels, *geometry.padded_size)),
        ("the unfolded input", summary.unfold_shape),
        ("the output", summary.output_shape),
    ):
        check_size(what, shape, summary.itemsize, blame)
    return summary


def _coverage_per_dimension(geometry: Geometry) -> list[list[int]]:
    # Per dimension, how many (output, tap) pairs land on each element of the unpadded input;
    # the N-d count of an element is the product of its per-dimension counts.
    result = []
    for size, (before, _), out, kernel, step, spacing in zip(
        geometry.input_size,
        geometry.padding,
        geometry.output_size,
        geometry.kernel_size,
        geometry.stride,
        geometry.dilation,
    ):
        counts = [0] * size
        for position in range(out):
            for tap in range(kernel):
                element = position * step + tap * spacing - before
                if 0 <= element < size:
                    counts[element] += 1
        result.append(counts)
    return result


def _shape(values: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, values)) + ")"


def _format_table(summary: Summary) -> str:
    g = summary.geometry
    header = (
        "dim",
        "input",
        "padding",
        "padded",
        "kernel",
        "dilation",
        "field span",
        "stride (jump)",
        "output",
        "unread",
    )
    rows = [header]
    for dim in range(g.ndim):
        before, after = g.padding[dim]
        rows.append(
            (
                str(dim),
                str(g.input_size[dim]),
                f"{before} + {after}",
                str(g.padded_size[dim]),
                str(g.kernel_size[dim]),
                str(g.dilation[dim]),
                str(g.field_span[dim]),
                str(g.stride[dim]),
                str(g.output_size[dim]),
                str(summary.unread[dim]),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    grid = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]

    ratio = summary.unfold_bytes / summary.input_bytes if summary.input_bytes else math.inf
    if summary.view_bytes:
        view = f"{format_bytes(summary.view_bytes)} (the padded copy of the input; the view adds nothing)"
    else:
        view = "0 B (no padding: the view shares the input's memory)"
    coverage = summary.coverage
    per_group = summary.channels // summary.groups
    groups = f", groups {summary.groups}" if summary.groups > 1 else ""
    mode = f", padding_mode {g.padding_mode!r}" if g.padding_mode != "zeros" else ""
    facts = [
        ("fields L (per sample)", f"{summary.num_fields:,} = " + " x ".join(map(str, g.output_size))),
        ("field length C*K", f"{summary.field_length:,} = {summary.channels} x {g.kernel_volume}"),
        (
            "unfold (B, C*K, L)",
            f"{_shape(summary.unfold_shape)}: {format_bytes(summary.unfold_bytes)} "
            f"({ratio:.2f}x the input, {format_bytes(summary.input_bytes)})",
        ),
        ("zero-copy view", f"{_shape(summary.view_shape)}: {view}"),
        ("output (B, O, *out)", _shape(summary.output_shape)),
        (
            "multiply-adds",
            f"{summary.multiply_adds:,} = B*O*L*(C/groups)*K = "
            f"{summary.batch}*{summary.out_channels}*{summary.num_fields}*{per_group}*{g.kernel_volume}",
        ),
        (
            "fold(unfold(x))",
            f"x times {coverage[0]} to {coverage[1]} (the fields that read each input element)"
            if coverage is not None
            else f"not counted (a dimension takes more than {COUNT_LIMIT:,} steps to count)",
        ),
    ]
    label_width = max(len(label) for label, _ in facts)
    title = (
        f"{g.ndim}-d convolution: batch {summary.batch}, channels {summary.channels} -> "
        f"{summary.out_channels}{groups}{mode}, {summary.itemsize} bytes per element"
    )
    lines = [title, "", *grid, "", *(f"{label.ljust(label_width)}  {text}" for label, text in facts)]
    if coverage is not None and coverage[0] == 0:
        lines.append("  (0: some input elements are read by no field; fold cannot restore them)")
    return "\n".join(lines)
