"""Naive references for the convolutions torch lacks (N > 3, padding modes past 3-D).

Written independently of anyconv: numpy's padding, one strided slice per kernel tap, and an
einsum over the channels of each group. Slow and obvious on purpose.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

NUMPY_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _pairs(padding, ndim):
    items = padding if isinstance(padding, (tuple, list)) else (padding,) * ndim
    return [tuple(item) if isinstance(item, (tuple, list)) else (item, item) for item in items]


def _expand(value, ndim):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim


def naive_conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Batched (B, C, *spatial) convolution; ``padding`` ints or per-dimension (before, after) pairs."""
    ndim = weight.dim() - 2
    stride, dilation = _expand(stride, ndim), _expand(dilation, ndim)
    pairs = [(0, 0), (0, 0), *_pairs(padding, ndim)]
    padded = torch.from_numpy(np.pad(x.detach().numpy(), pairs, mode=NUMPY_MODES[padding_mode]))
    kernel = weight.shape[2:]
    out_size = [
        (padded.shape[2 + axis] - dilation[axis] * (kernel[axis] - 1) - 1) // stride[axis] + 1
        for axis in range(ndim)
    ]
    out = torch.zeros(x.shape[0], weight.shape[0], *out_size, dtype=x.dtype)
    in_per_group, out_per_group = x.shape[1] // groups, weight.shape[0] // groups
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = tuple(
            slice(tap[a] * dilation[a], tap[a] * dilation[a] + stride[a] * (out_size[a] - 1) + 1, stride[a])
            for a in range(ndim)
        )
        for group in range(groups):
            source = padded[(slice(None), slice(group * in_per_group, (group + 1) * in_per_group), *window)]
            taps = weight[(slice(group * out_per_group, (group + 1) * out_per_group), slice(None), *tap)]
            out[:, group * out_per_group : (group + 1) * out_per_group] += torch.einsum(
                "bc...,oc->bo...", source, taps.detach()
            )
    if bias is not None:
        out += bias.detach().reshape(-1, *(1,) * ndim)
    return out


def naive_conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Batched transposed convolution: each input element scatters weight * value over its field."""
    ndim = weight.dim() - 2
    stride, dilation = _expand(stride, ndim), _expand(dilation, ndim)
    padding, output_padding = _expand(padding, ndim), _expand(output_padding, ndim)
    kernel = weight.shape[2:]
    in_size = x.shape[2:]
    out_size = [
        (in_size[a] - 1) * stride[a] - 2 * padding[a] + dilation[a] * (kernel[a] - 1) + output_padding[a] + 1
        for a in range(ndim)
    ]
    # accumulate into an image large enough for every field and the output, then crop
    full = [
        max((in_size[a] - 1) * stride[a] + dilation[a] * (kernel[a] - 1) + 1, padding[a] + out_size[a])
        for a in range(ndim)
    ]
    image = torch.zeros(x.shape[0], weight.shape[1] * groups, *full, dtype=x.dtype)
    in_per_group, out_per_group = x.shape[1] // groups, weight.shape[1]
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = tuple(
            slice(tap[a] * dilation[a], tap[a] * dilation[a] + stride[a] * (in_size[a] - 1) + 1, stride[a])
            for a in range(ndim)
        )
        for group in range(groups):
            source = x[:, group * in_per_group : (group + 1) * in_per_group].detach()
            taps = weight[(slice(group * in_per_group, (group + 1) * in_per_group), slice(None), *tap)]
            image[(slice(None), slice(group * out_per_group, (group + 1) * out_per_group), *window)] += (
                torch.einsum("bc...,co->bo...", source, taps.detach())
            )
    out = image[
        (slice(None), slice(None), *(slice(padding[a], padding[a] + out_size[a]) for a in range(ndim)))
    ]
    if bias is not None:
        out = out + bias.detach().reshape(-1, *(1,) * ndim)
    return out.contiguous()
