"""Naive loop references for padding, unfold and fold in any N, and random convolution geometries.

Written element by element from the definitions, sharing no code with anyconv, so that a test
against them is a test against the definition. Meant for small sizes only.
"""

from __future__ import annotations

import itertools
import math
import random

import torch


def source_position(position: int, size: int, mode: str) -> int | None:
    """The input index a padded position reads along one dimension (None: a zero)."""
    if 0 <= position < size:
        return position
    if mode == "zeros":
        return None
    if mode == "replicate":
        return min(max(position, 0), size - 1)
    if mode == "circular":
        return position % size
    # reflect: -1 reads 1, size reads size - 2 (the border element is not repeated)
    while not 0 <= position < size:
        position = -position if position < 0 else 2 * (size - 1) - position
    return position


def naive_pad(input: torch.Tensor, padding: list[tuple[int, int]], mode: str) -> torch.Tensor:
    """Pad the last len(padding) dimensions of (B, C, *spatial), one padded element at a time."""
    spatial = input.shape[2:]
    padded_size = [size + before + after for size, (before, after) in zip(spatial, padding)]
    padded = input.new_zeros((*input.shape[:2], *padded_size))
    for target in itertools.product(*(range(size) for size in padded_size)):
        source = [
            source_position(index - before, size, mode)
            for index, size, (before, _) in zip(target, spatial, padding)
        ]
        if None not in source:
            padded[(slice(None), slice(None), *target)] = input[(slice(None), slice(None), *source)]
    return padded


def output_size(padded_size, kernel_size, stride, dilation) -> list[int]:
    return [
        (size - spacing * (kernel - 1) - 1) // step + 1
        for size, kernel, step, spacing in zip(padded_size, kernel_size, stride, dilation)
    ]


def naive_unfold(input, kernel_size, stride, padding, dilation, mode="zeros") -> torch.Tensor:
    """Columns (B, C * K, L): row c * K + k, column l holds tap k of field l in channel c."""
    padded = naive_pad(input, padding, mode)
    batch, channels = input.shape[:2]
    out = output_size(padded.shape[2:], kernel_size, stride, dilation)
    taps = list(itertools.product(*(range(kernel) for kernel in kernel_size)))
    positions = list(itertools.product(*(range(size) for size in out)))
    columns = input.new_zeros((batch, channels, len(taps), len(positions)))
    for k, tap in enumerate(taps):
        for index, position in enumerate(positions):
            source = [p * s + t * d for p, s, t, d in zip(position, stride, tap, dilation)]
            columns[:, :, k, index] = padded[(slice(None), slice(None), *source)]
    return columns.reshape(batch, channels * len(taps), len(positions))


def naive_fold(columns, output_size_, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """The image (B, C, *output_size_) where every column entry is added at the element it came from."""
    batch = columns.shape[0]
    kernel_volume = math.prod(kernel_size)
    channels = columns.shape[1] // kernel_volume
    padded_size = [size + before + after for size, (before, after) in zip(output_size_, padding)]
    out = output_size(padded_size, kernel_size, stride, dilation)
    blocks = columns.reshape(batch, channels, kernel_volume, -1)
    padded = columns.new_zeros((batch, channels, *padded_size))
    taps = itertools.product(*(range(kernel) for kernel in kernel_size))
    for k, tap in enumerate(taps):
        for index, position in enumerate(itertools.product(*(range(size) for size in out))):
            target = [p * s + t * d for p, s, t, d in zip(position, stride, tap, dilation)]
            padded[(slice(None), slice(None), *target)] += blocks[:, :, k, index]
    crop = [slice(before, before + size) for size, (before, _) in zip(output_size_, padding)]
    return padded[(slice(None), slice(None), *crop)]


def random_geometry(rng: random.Random, ndim: int, largest_size: int = 7, largest_kernel: int = 3) -> dict:
    """A random valid geometry: sizes, kernel, stride, dilation, and padding as (before, after) pairs.

    ``symmetric`` says whether the padding is a plain int per dimension (what F.unfold accepts).
    """
    while True:
        kernel = [rng.randint(1, largest_kernel) for _ in range(ndim)]
        stride = [rng.randint(1, 3) for _ in range(ndim)]
        dilation = [rng.randint(1, 2) for _ in range(ndim)]
        symmetric = rng.random() < 0.5
        if symmetric:
            padding = [(amount, amount) for amount in (rng.randint(0, 2) for _ in range(ndim))]
        else:
            padding = [(rng.randint(0, 2), rng.randint(0, 2)) for _ in range(ndim)]
        size = [rng.randint(1, largest_size) for _ in range(ndim)]
        padded = [s + before + after for s, (before, after) in zip(size, padding)]
        if all(d * (k - 1) + 1 <= p for k, d, p in zip(kernel, dilation, padded)):
            return {
                "input_size": size,
                "kernel_size": kernel,
                "stride": stride,
                "dilation": dilation,
                "padding": padding,
                "symmetric": symmetric,
            }


def fits_mode(geometry: dict, mode: str) -> bool:
    """Whether torch's padding in ``mode`` accepts these amounts (reflect needs amount < size, ...)."""
    for size, (before, after) in zip(geometry["input_size"], geometry["padding"]):
        largest = max(before, after)
        if mode == "reflect" and largest >= size:
            return False
        if mode == "circular" and largest > size:
            return False
    return True


def torch_pad(padding: list[tuple[int, int]]) -> tuple[int, ...]:
    """Pairs per dimension in F.pad's order: last dimension first."""
    return tuple(amount for pair in reversed(padding) for amount in pair)


def case_tensors(case: dict, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random input, weight and bias of a test case's shapes (``case["x"]``, ``case["w"]``)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case["x"], generator=generator, dtype=dtype)
    w = torch.randn(case["w"], generator=generator, dtype=dtype)
    b = torch.randn(case["w"][0], generator=generator, dtype=dtype)
    return x, w, b
