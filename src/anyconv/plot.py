"""Pictures of receptive fields: the padded input grid and the elements a few outputs read.

matplotlib is an optional extra (``pip install "anyconv[plot]"``), imported only when drawing, and
used through its Agg canvas directly so the caller's pyplot backend and state are left alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import invalid, wrong_type
from .geometry import Geometry, Summary

PADDING_COLOUR = "#bdbdbd"
INPUT_COLOUR = "#ffffff"
TAP_COLOUR = "#d62728"
SPAN_COLOUR = "#1f77b4"

DPI = 100
# The layout is in whole pixels, so a cell's centre in the PNG is known exactly (see cell_centre).
HEADER_PX = 44
PANEL_TITLE_PX = 22
FOOTER_PX = 30
MARGIN_PX = 20
GAP_PX = 24
MIN_WIDTH_PX = 640
PANEL_PX = {1: 900, 2: 300}
LARGEST_CELL_PX = 28
GRID_LINES_FROM_PX = 6


@dataclass(frozen=True)
class Drawing:
    """Where :func:`draw_receptive_fields` put things: the file, the outputs drawn, the pixel grid.

    Panel ``p`` shows the receptive field of ``outputs[p]``; its grid is the padded input (the last
    two dimensions; one row for 1-d), whose element ``(row, column)`` in padded coordinates is a
    square of ``cell_px`` pixels with its top-left corner at ``origins[p] + cell_px * (row, column)``.
    """

    path: str
    outputs: tuple[tuple[int, ...], ...]
    slices: tuple[tuple[int, ...], ...]
    cell_px: int
    origins: tuple[tuple[int, int], ...]
    size_px: tuple[int, int]

    def cell_centre(self, panel: int, row: int, column: int) -> tuple[float, float]:
        """The (y, x) pixel of the centre of padded element (row, column) in ``panel``, from the top left."""
        top, left = self.origins[panel]
        return (top + (row + 0.5) * self.cell_px, left + (column + 0.5) * self.cell_px)


def default_outputs(output_size: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The first, middle and last output position, without repeats.

    >>> default_outputs((4, 5))
    ((0, 0), (2, 2), (3, 4))
    >>> default_outputs((1,))
    ((0,),)
    """
    chosen = (
        tuple(0 for _ in output_size),
        tuple(size // 2 for size in output_size),
        tuple(size - 1 for size in output_size),
    )
    return tuple(dict.fromkeys(chosen))


def tapped_elements(geometry: Geometry, output: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The padded-input elements that output position ``output`` reads, one per kernel tap.

    >>> from anyconv.geometry import make_geometry
    >>> tapped_elements(make_geometry((7,), 3, stride=2, dilation=2), (1,))
    [(2,), (4,), (6,)]
    """
    elements: list[tuple[int, ...]] = [()]
    for position, kernel, step, spacing in zip(
        output, geometry.kernel_size, geometry.stride, geometry.dilation
    ):
        elements = [
            element + (position * step + tap * spacing,) for element in elements for tap in range(kernel)
        ]
    return elements


def draw_receptive_fields(
    summary_or_geometry: Summary | Geometry,
    path: str | os.PathLike[str],
    outputs: Any = None,
) -> Drawing:
    """Draw the padded input and the receptive fields of a few outputs into the PNG file ``path``.

    One panel per output (default: the first, the middle and the last): padding in grey, the
    input in white, the elements the output reads in red (only the taps, so dilation shows as
    holes), the span of the field dashed. An N > 2 input is shown as the 2-d slice over its last
    two dimensions that holds each field's first tap; the picture says so.

    >>> import tempfile, os, anyconv
    >>> from anyconv.plot import draw_receptive_fields
    >>> path = os.path.join(tempfile.mkdtemp(), "fields.png")
    >>> drawing = draw_receptive_fields(anyconv.explain((5, 5), 3, padding=1), path)
    >>> drawing.outputs
    ((0, 0), (2, 2), (4, 4))
    >>> open(path, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    geometry = _geometry_of(summary_or_geometry)
    chosen = _check_outputs(outputs, geometry)
    figure_class, canvas_class, rectangle_class = _matplotlib()

    ndim = geometry.ndim
    rows = 1 if ndim == 1 else geometry.padded_size[-2]
    columns = geometry.padded_size[-1]
    cell_px = max(1, min(LARGEST_CELL_PX, PANEL_PX[min(ndim, 2)] // max(rows, columns)))
    panel_height, panel_width = rows * cell_px, columns * cell_px
    origins = []
    if ndim == 1:
        # long rows: panels stacked
        width = max(MIN_WIDTH_PX, 2 * MARGIN_PX + panel_width)
        left = (width - panel_width) // 2
        top = HEADER_PX
        for _ in chosen:
            top += PANEL_TITLE_PX
            origins.append((top, left))
            top += panel_height + GAP_PX // 2
        height = top + FOOTER_PX
    else:
        content = len(chosen) * panel_width + (len(chosen) - 1) * GAP_PX
        width = max(MIN_WIDTH_PX, 2 * MARGIN_PX + content)
        left = (width - content) // 2
        # an N > 2 title has a second line, saying the panels are slices
        top = HEADER_PX + PANEL_TITLE_PX + (14 if ndim > 2 else 0)
        for index in range(len(chosen)):
            origins.append((top, left + index * (panel_width + GAP_PX)))
        height = top + panel_height + FOOTER_PX

    figure = figure_class(figsize=(width / DPI, height / DPI), dpi=DPI)
    canvas_class(figure)
    figure.suptitle(_title(geometry), fontsize=9, y=1 - 6 / height, va="top")
    figure.text(
        0.5,
        8 / height,
        "grey: padding   white: input   red: the elements one output reads   dashed: its field span",
        ha="center",
        va="bottom",
        fontsize=8,
    )
    slices = []
    for output, (top, left) in zip(chosen, origins):
        leading = tuple(position * step for position, step in zip(output[:-2], geometry.stride[:-2]))
        slices.append(leading)
        axes = figure.add_axes(
            (left / width, 1 - (top + panel_height) / height, panel_width / width, panel_height / height)
        )
        _draw_panel(axes, geometry, output, leading, rows, columns, cell_px, rectangle_class)
        label = f"output {output}" if ndim <= 2 else f"output {output}, slice {leading}"
        axes.set_title(label, fontsize=8, pad=3)
    figure.savefig(os.fspath(path), dpi=DPI, format="png")
    return Drawing(os.fspath(path), chosen, tuple(slices), cell_px, tuple(origins), (height, width))


def _draw_panel(
    axes: Any,
    geometry: Geometry,
    output: tuple[int, ...],
    leading: tuple[int, ...],
    rows: int,
    columns: int,
    cell_px: int,
    rectangle_class: Any,
) -> None:
    from matplotlib.colors import to_rgb

    padding, inside, tapped = to_rgb(PADDING_COLOUR), to_rgb(INPUT_COLOUR), to_rgb(TAP_COLOUR)
    pairs = geometry.padding[-2:] if geometry.ndim >= 2 else ((0, 0), *geometry.padding)
    sizes = geometry.input_size[-2:] if geometry.ndim >= 2 else (1, *geometry.input_size)

    # a slice through the padding of a leading dimension is padding throughout
    in_slice = all(
        before <= position < before + size
        for position, (before, _), size in zip(leading, geometry.padding, geometry.input_size)
    )

    def is_input(row: int, column: int) -> bool:
        return in_slice and all(
            before <= position < before + size
            for position, (before, _), size in zip((row, column), pairs, sizes)
        )

    image = [
        [inside if is_input(row, column) else padding for column in range(columns)] for row in range(rows)
    ]
    for element in tapped_elements(geometry, output):
        # the taps of other leading-dimension offsets lie in other slices
        if element[:-2] == leading:
            row, column = (0, element[0]) if geometry.ndim == 1 else element[-2:]
            image[row][column] = tapped
    axes.imshow(image, extent=(0, columns, rows, 0), interpolation="nearest", aspect="auto")
    axes.set_xlim(0, columns)
    axes.set_ylim(rows, 0)
    axes.set_xticks([])
    axes.set_yticks([])
    if cell_px >= GRID_LINES_FROM_PX:
        axes.vlines(range(1, columns), 0, rows, colors="#9e9e9e", linewidth=0.5)
        axes.hlines(range(1, rows), 0, columns, colors="#9e9e9e", linewidth=0.5)
    (top, input_height), (left, input_width) = ((pair[0], size) for pair, size in zip(pairs, sizes))
    if in_slice:
        axes.add_patch(
            rectangle_class(
                (left, top), input_width, input_height, fill=False, edgecolor="black", linewidth=1.2
            )
        )
    spans = geometry.field_span[-2:] if geometry.ndim >= 2 else (1, *geometry.field_span)
    starts = tuple(position * step for position, step in zip(output, geometry.stride))
    start_row, start_column = (0, starts[0]) if geometry.ndim == 1 else starts[-2:]
    axes.add_patch(
        rectangle_class(
            (start_column, start_row),
            spans[1],
            spans[0],
            fill=False,
            edgecolor=SPAN_COLOUR,
            linewidth=1.5,
            linestyle="--",
        )
    )


def _title(geometry: Geometry) -> str:
    pairs = ", ".join(f"{before}+{after}" for before, after in geometry.padding)
    text = (
        f"input {geometry.input_size}, kernel {geometry.kernel_size}, stride {geometry.stride}, "
        f"padding ({pairs}), dilation {geometry.dilation} -> output {geometry.output_size}"
    )
    if geometry.ndim > 2:
        text += (
            f"\n{geometry.ndim}-d input: 2-d slices over the last two dimensions, "
            "at the field's first tap (padded index shown)"
        )
    return text


def _geometry_of(value: Any) -> Geometry:
    if isinstance(value, Summary):
        return value.geometry
    if isinstance(value, Geometry):
        return value
    raise wrong_type("summary_or_geometry", value, "an anyconv Summary (from explain) or a Geometry")


def _check_outputs(outputs: Any, geometry: Geometry) -> tuple[tuple[int, ...], ...]:
    if outputs is None:
        return default_outputs(geometry.output_size)
    valid = (
        f"output positions, each a tuple of {geometry.ndim} ints within output size {geometry.output_size}"
    )
    chosen = []
    for output in outputs:
        position = (output,) if isinstance(output, int) and geometry.ndim == 1 else output
        if (
            not isinstance(position, (tuple, list))
            or len(position) != geometry.ndim
            or not all(
                isinstance(item, int) and 0 <= item < size
                for item, size in zip(position, geometry.output_size)
            )
        ):
            raise invalid("outputs", outputs, valid)
        chosen.append(tuple(position))
    if not chosen:
        raise invalid("outputs", outputs, valid)
    return tuple(chosen)


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError:
        raise ModuleNotFoundError(
            'drawing receptive fields needs matplotlib: pip install "anyconv[plot]"'
        ) from None
    return Figure, FigureCanvasAgg, Rectangle
