"""anyconv.plot: the PNG exists, is a PNG, and each cell has the colour the geometry says."""

import itertools
import sys

import pytest

import anyconv
from anyconv.plot import (
    INPUT_COLOUR,
    MOST_CELLS,
    PADDING_COLOUR,
    TAP_COLOUR,
    draw_receptive_fields,
    tapped_elements,
)

matplotlib_image = pytest.importorskip("matplotlib.image")
to_rgb = pytest.importorskip("matplotlib.colors").to_rgb

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CASES = [
    dict(
        id="2d-dilated-strided", args=dict(input_size=(7, 9), kernel_size=3, stride=2, padding=1, dilation=2)
    ),
    dict(id="2d-asymmetric", args=dict(input_size=(5, 6), kernel_size=(2, 3), padding=((0, 2), (1, 0)))),
    dict(
        id="1d-dilated", args=dict(input_size=(12,), kernel_size=3, stride=2, padding=((1, 2),), dilation=2)
    ),
    dict(id="3d-slices", args=dict(input_size=(4, 6, 6), kernel_size=(2, 3, 3), stride=(2, 1, 2), padding=1)),
]


def expected_colour(geometry, output, leading, row, column):
    """From the geometry alone: tapped if some kernel tap lands there, else input or padding."""
    position = (*leading, row, column) if geometry.ndim >= 2 else (column,)
    taps = itertools.product(*(range(k) for k in geometry.kernel_size))
    reads = {
        tuple(o * s + t * d for o, s, t, d in zip(output, geometry.stride, tap, geometry.dilation))
        for tap in taps
    }
    if position in reads:
        return TAP_COLOUR
    inside = all(
        before <= p < before + size
        for p, (before, _), size in zip(position, geometry.padding, geometry.input_size)
    )
    return INPUT_COLOUR if inside else PADDING_COLOUR


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_every_cell_has_the_colour_the_geometry_says(case, tmp_path):
    summary = anyconv.explain(**case["args"])
    geometry = summary.geometry
    path = tmp_path / "fields.png"
    drawing = draw_receptive_fields(summary, path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib_image.imread(path)
    assert pixels.shape[:2] == drawing.size_px
    rows = 1 if geometry.ndim == 1 else geometry.padded_size[-2]
    columns = geometry.padded_size[-1]
    seen = set()
    for panel, (output, leading) in enumerate(zip(drawing.outputs, drawing.slices)):
        for row, column in itertools.product(range(rows), range(columns)):
            y, x = drawing.cell_centre(panel, row, column)
            colour = expected_colour(geometry, output, leading, row, column)
            seen.add(colour)
            assert pixels[int(y), int(x), :3] == pytest.approx(to_rgb(colour), abs=0.02), (
                panel,
                row,
                column,
            )
    assert seen == {TAP_COLOUR, INPUT_COLOUR, PADDING_COLOUR}


def test_cell_centres_follow_the_layout(tmp_path):
    drawing = draw_receptive_fields(anyconv.explain((4, 4), 3, padding=1), tmp_path / "fields.png")
    assert drawing.outputs == ((0, 0), (2, 2), (3, 3))
    (top, left), (next_top, next_left) = drawing.origins[:2]
    assert next_top == top and next_left == left + 6 * drawing.cell_px + 24
    assert drawing.cell_centre(1, 2, 3) == (top + 2.5 * drawing.cell_px, next_left + 3.5 * drawing.cell_px)


def test_chosen_outputs_and_a_geometry_in_place_of_a_summary(tmp_path):
    geometry = anyconv.make_geometry((10,), 3, stride=3)
    drawing = draw_receptive_fields(geometry, tmp_path / "fields.png", outputs=[1, (2,)])
    assert drawing.outputs == ((1,), (2,))
    pixels = matplotlib_image.imread(tmp_path / "fields.png")
    for panel, first in enumerate((3, 6)):
        for column in range(10):
            y, x = drawing.cell_centre(panel, 0, column)
            colour = TAP_COLOUR if first <= column < first + 3 else INPUT_COLOUR
            assert pixels[int(y), int(x), :3] == pytest.approx(to_rgb(colour), abs=0.02)


def test_tapped_elements_leave_dilation_holes():
    geometry = anyconv.make_geometry((9, 9), 2, dilation=(3, 2), stride=2)
    assert tapped_elements(geometry, (1, 2)) == [(2, 4), (2, 6), (5, 4), (5, 6)]


@pytest.mark.parametrize(
    "outputs",
    [[(0, 5)], [(0,)], [(-1, 0)], [], ["first"]],
    ids=["too-far", "short", "negative", "none", "str"],
)
def test_refuses_outputs_outside_the_output_grid(outputs, tmp_path):
    with pytest.raises(anyconv.ArgumentError, match=r"outputs=.* is invalid: expected output positions"):
        draw_receptive_fields(anyconv.explain((4, 4), 3), tmp_path / "fields.png", outputs=outputs)


def test_refuses_something_else_than_a_summary(tmp_path):
    with pytest.raises(anyconv.ArgumentTypeError, match="summary_or_geometry"):
        draw_receptive_fields((4, 4), tmp_path / "fields.png")


def test_without_matplotlib_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "anyconv\[plot\]"'):
        draw_receptive_fields(anyconv.explain((4, 4), 3), tmp_path / "fields.png")
    assert not (tmp_path / "fields.png").exists()


COLOURS = (TAP_COLOUR, INPUT_COLOUR, PADDING_COLOUR)
LARGE = [
    dict(id="2d-window", args=dict(input_size=(500, 400), kernel_size=3, stride=2, padding=1, dilation=3)),
    dict(id="1d-window", args=dict(input_size=(5000,), kernel_size=4, stride=7, padding=2)),
    dict(id="huge-kernel", args=dict(input_size=(10**6, 10**6), kernel_size=10**5, stride=10**5)),
]


def colour_by_arithmetic(geometry, output, leading, row, column):
    """expected_colour without listing the taps: a tap lands where the offset from the field's start
    is a multiple of the dilation, below the kernel's reach, in every dimension."""
    position = (*leading, row, column) if geometry.ndim >= 2 else (column,)
    offsets = [p - o * s for p, o, s in zip(position, output, geometry.stride)]
    if all(
        0 <= offset < k * d and offset % d == 0
        for offset, k, d in zip(offsets, geometry.kernel_size, geometry.dilation)
    ):
        return TAP_COLOUR
    inside = all(
        before <= p < before + size
        for p, (before, _), size in zip(position, geometry.padding, geometry.input_size)
    )
    return INPUT_COLOUR if inside else PADDING_COLOUR


@pytest.mark.parametrize("case", LARGE, ids=[case["id"] for case in LARGE])
def test_a_large_input_is_drawn_as_a_window_around_each_field(case, tmp_path):
    summary = anyconv.explain(**case["args"])
    geometry = summary.geometry
    path = tmp_path / "fields.png"
    drawing = draw_receptive_fields(summary, path)
    assert drawing.is_partial
    assert max(drawing.shown) <= MOST_CELLS[min(geometry.ndim, 2)]
    assert max(drawing.size_px) <= 2000
    pixels = matplotlib_image.imread(path)
    seen = set()
    for panel, (output, leading) in enumerate(zip(drawing.outputs, drawing.slices)):
        first_row, first_column = drawing.windows[panel]
        rows, columns = drawing.shown
        cells = itertools.product(
            range(first_row, first_row + rows), range(first_column, first_column + columns)
        )
        for row, column in cells:
            edge_row = geometry.ndim > 1 and row in (first_row, first_row + rows - 1)
            if edge_row or column in (first_column, first_column + columns - 1):
                # cells of a few pixels: the axes' frame covers the outer ones, and the lines of
                # the input's edge and the field's span tint the others: each is nearest its colour
                continue
            y, x = drawing.cell_centre(panel, row, column)
            colour = colour_by_arithmetic(geometry, output, leading, row, column)
            seen.add(colour)
            pixel = pixels[int(y), int(x), :3]
            nearest = min(COLOURS, key=lambda name: sum((p - c) ** 2 for p, c in zip(pixel, to_rgb(name))))
            assert nearest == colour, (panel, row, column, pixel)
    assert TAP_COLOUR in seen
