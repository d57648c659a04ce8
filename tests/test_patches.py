"""patches: a zero-copy strided view of the receptive fields, equal to a naive loop over fields."""

import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from reference import output_size, random_geometry, torch_pad

import anyconv

CASES = [
    pytest.param(random_geometry(random.Random(seed), ndim, largest_size=6), id=f"{ndim}d-{seed}")
    for ndim in (1, 2, 3, 4)
    for seed in range(8)
]


def call_patches(input: torch.Tensor, case: dict, mode: str = "zeros") -> torch.Tensor:
    return anyconv.patches(
        input,
        tuple(case["kernel_size"]),
        stride=tuple(case["stride"]),
        padding=tuple(tuple(pair) for pair in case["padding"]),
        dilation=tuple(case["dilation"]),
        padding_mode=mode,
    )


@pytest.mark.parametrize("case", CASES)
def test_patches_hold_every_field(case):
    input = torch.randn(2, 3, *case["input_size"], dtype=torch.float64)
    view = call_patches(input, case)
    padded = F.pad(input, torch_pad(case["padding"]))
    out = output_size(padded.shape[2:], case["kernel_size"], case["stride"], case["dilation"])
    assert view.shape == (2, 3, *out, *case["kernel_size"])
    for position in itertools.product(*(range(size) for size in out)):
        starts = [p * s for p, s in zip(position, case["stride"])]
        field = padded[
            (
                ...,
                *(
                    slice(start, start + d * (k - 1) + 1, d)
                    for start, k, d in zip(starts, case["kernel_size"], case["dilation"])
                ),
            )
        ]
        assert torch.equal(view[(..., *position, *([slice(None)] * len(out)))], field)


@pytest.mark.parametrize("case", CASES[::3])
def test_patches_share_storage_with_an_unpadded_input(case):
    case = {**case, "padding": [(0, 0)] * len(case["kernel_size"])}
    case["input_size"] = [
        max(size, d * (k - 1) + 1)
        for size, k, d in zip(case["input_size"], case["kernel_size"], case["dilation"])
    ]
    input = torch.randn(2, 3, *case["input_size"])
    view = call_patches(input, case)
    assert view.untyped_storage().data_ptr() == input.untyped_storage().data_ptr()
    input.add_(1)
    assert torch.equal(view, call_patches(input.clone(), case))


def test_padded_patches_view_only_the_padded_copy():
    input = torch.randn(1, 2, 5, 5)
    view = anyconv.patches(input, 3, padding=1, padding_mode="circular")
    assert view.untyped_storage().nbytes() == 1 * 2 * 7 * 7 * input.element_size()
    assert torch.equal(view[0, :, 0, 0], F.pad(input, (1, 1, 1, 1), mode="circular")[0, :, :3, :3])


def test_unbatched_input_gives_unbatched_patches():
    input = torch.randn(3, 6, 5)
    assert torch.equal(
        anyconv.patches(input, (3, 2), stride=2), anyconv.patches(input[None], (3, 2), stride=2)[0]
    )
