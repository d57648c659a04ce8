"""Memory format of the engine's outputs: channels-last in, channels-last out, as torch's convolution.

torch returns a channels-last output when the input or the weight is channels-last (4-D or
5-D); the engine writes its chunks into an output of that layout, through strided views.
"""

from __future__ import annotations

import torch

#: the channels-last memory format of each tensor rank that has one
CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def channels_last_format(tensor: torch.Tensor) -> torch.memory_format | None:
    """``tensor``'s channels-last format where it is laid out so and not channels first too (as a
    tensor of one position is, which torch takes as channels first), else None.

    >>> channels_last_format(torch.randn(2, 3, 5, 5).to(memory_format=torch.channels_last))
    torch.channels_last
    >>> channels_last_format(torch.randn(2, 3, 1, 1).to(memory_format=torch.channels_last)) is None
    True
    """
    layout = CHANNELS_LAST.get(tensor.dim())
    if layout is None or not tensor.is_contiguous(memory_format=layout) or tensor.is_contiguous():
        return None
    return layout


def output_memory_format(input: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last(_3d)`` when ``input`` or ``weight`` is laid out so, else contiguous.

    >>> x = torch.randn(2, 3, 5, 5).to(memory_format=torch.channels_last)
    >>> output_memory_format(x, torch.randn(4, 3, 3, 3))
    torch.channels_last
    """
    for tensor in (input, weight):
        layout = channels_last_format(tensor) if tensor.dim() == input.dim() else None
        if layout is not None:
            return layout
    return torch.contiguous_format


def empty_like_input(input: torch.Tensor, weight: torch.Tensor, shape: tuple) -> torch.Tensor:
    """An uninitialised output of ``shape``, ``input``'s dtype and device, in torch's memory format.

    >>> x = torch.randn(1, 2, 4, 4).to(memory_format=torch.channels_last)
    >>> output = empty_like_input(x, torch.randn(3, 2, 1, 1), (1, 3, 4, 4))
    >>> output.is_contiguous(memory_format=torch.channels_last)
    True
    """
    layout = output_memory_format(input, weight) if len(shape) == input.dim() else torch.contiguous_format
    if layout == torch.contiguous_format:
        return input.new_empty(shape)
    return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=layout)
