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
#: the most cells a panel shows along each axis: a larger padded input is shown as a window of
#: this many cells around each field, so the picture and the time to draw it stay bounded
MOST_CELLS = {1: 300, 2: 100}


@dataclass(frozen=True)
class Drawing:
    """Where :func:`draw_receptive_fields` put things: the file, the outputs drawn, the pixel grid.

    Panel ``p`` shows the receptive field of ``outputs[p]``; its grid is the padded input (the last
    two dimensions; one row for 1-d), or the window of it that starts at padded element
    ``windows[p]`` and is ``shown`` cells tall and wide (the whole grid when it has at most
    ``MOST_CELLS`` cells a side). Padded element ``(row, column)`` is a square of ``cell_px``
    pixels with its top-left corner at ``origins[p] + cell_px * ((row, column) - windows[p])``.
    """

    path: str
    outputs: tuple[tuple[int, ...], ...]
    slices: tuple[tuple[int, ...], ...]
    cell_px: int
    origins: tuple[tuple[int, int], ...]
    size_px: tuple[int, int]
    windows: tuple[tuple[int, int], ...]
    shown: tuple[int, int]
    grid: tuple[int, int]

    @property
    def is_partial(self) -> bool:
        """Whether the panels show only a window of the padded input (``grid`` is its size)."""
        return self.shown != self.grid

    def cell_centre(self, panel: int, row: int, column: int) -> tuple[float, float]:
        """The (y, x) pixel of the centre of padded element (row, column) in ``panel``, from the top left."""
        top, left = self.origins[panel]
        first_row, first_column = self.windows[panel]
        return (
            top + (row - first_row + 0.5) * self.cell_px,
            left + (column - first_column + 0.5) * self.cell_px,
        )


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
    grid = (1 if ndim == 1 else geometry.padded_size[-2], geometry.padded_size[-1])
    most = MOST_CELLS[min(ndim, 2)]
    rows, columns = (min(size, most) for size in grid)
    windows = tuple(_window(geometry, output, (rows, columns)) for output in chosen)
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
    for output, (top, left), window in zip(chosen, origins, windows):
        leading = tuple(position * step for position, step in zip(output[:-2], geometry.stride[:-2]))
        slices.append(leading)
        axes = figure.add_axes(
            (left / width, 1 - (top + panel_height) / height, panel_width / width, panel_height / height)
        )
        _draw_panel(axes, geometry, output, leading, window, (rows, columns), cell_px, rectangle_class)
        label = f"output {output}" if ndim <= 2 else f"output {output}, slice {leading}"
        if (rows, columns) != grid:
            label += ", " + _window_text(window, (rows, columns), ndim)
        axes.set_title(label, fontsize=8, pad=3)
    figure.savefig(os.fspath(path), dpi=DPI, format="png")
    return Drawing(
        os.fspath(path),
        chosen,
        tuple(slices),
        cell_px,
        tuple(origins),
        (height, width),
        windows,
        (rows, columns),
        grid,
    )


def _window(geometry: Geometry, output: tuple[int, ...], shown: tuple[int, int]) -> tuple[int, int]:
    """The padded (row, column) where ``output``'s panel starts: its field centred when it fits,
    else the start of its field in view, always inside the padded input."""
    grid = (1, *geometry.padded_size) if geometry.ndim == 1 else geometry.padded_size[-2:]
    starts = [position * step for position, step in zip(output[-2:], geometry.stride[-2:])]
    spans = geometry.field_span[-2:]
    if geometry.ndim == 1:
        starts, spans = [0, *starts], (1, *spans)
    first = []
    for size, count, start, span in zip(grid, shown, starts, spans):
        wanted = start + span // 2 - count // 2 if span <= count else start - 1
        first.append(min(max(wanted, 0), size - count))
    return (first[0], first[1])


def _window_text(window: tuple[int, int], shown: tuple[int, int], ndim: int) -> str:
    (row, column), (rows, columns) = window, shown
    if ndim == 1:
        return f"elements {column}-{column + columns - 1}"
    return f"rows {row}-{row + rows - 1}, columns {column}-{column + columns - 1}"


def _draw_panel(
    axes: Any,
    geometry: Geometry,
    output: tuple[int, ...],
    leading: tuple[int, ...],
    window: tuple[int, int],
    shown: tuple[int, int],
    cell_px: int,
    rectangle_class: Any,
) -> None:
    from matplotlib.colors import to_rgb

    (first_row, first_column), (rows, columns) = window, shown

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
        [
            inside if is_input(row, column) else padding
            for column in range(first_column, first_column + columns)
        ]
        for row in range(first_row, first_row + rows)
    ]
    for row, column in _taps_in_window(geometry, output, window, shown):
        image[row - first_row][column - first_column] = tapped
    # the axes count padded elements, so the patches below are placed in padded coordinates
    bottom, right = first_row + rows, first_column + columns
    axes.imshow(
        image, extent=(first_column, right, bottom, first_row), interpolation="nearest", aspect="auto"
    )
    axes.set_xlim(first_column, right)
    axes.set_ylim(bottom, first_row)
    axes.set_xticks([])
    axes.set_yticks([])
    if cell_px >= GRID_LINES_FROM_PX:
        axes.vlines(range(first_column + 1, right), first_row, bottom, colors="#9e9e9e", linewidth=0.5)
        axes.hlines(range(first_row + 1, bottom), first_column, right, colors="#9e9e9e", linewidth=0.5)
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


def _taps_in_window(
    geometry: Geometry, output: tuple[int, ...], window: tuple[int, int], shown: tuple[int, int]
) -> list[tuple[int, int]]:
    """The (row, column) of the taps of ``output`` that fall in the window, in the slice of its first
    tap along leading dimensions; found per axis, so a huge kernel costs no more than the window."""
    per_axis = []
    axes = ((0, 1, 1, 1), *zip(output, geometry.stride, geometry.dilation, geometry.kernel_size))
    for (position, step, spacing, kernel), first, count in zip(axes[-2:], window, shown):
        start = position * step
        lowest = max(0, -(-(first - start) // spacing))
        highest = min(kernel - 1, (first + count - 1 - start) // spacing)
        per_axis.append([start + tap * spacing for tap in range(lowest, highest + 1)])
    return [(row, column) for row in per_axis[0] for column in per_axis[1]]


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
