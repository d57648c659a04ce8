"""Autocast for the engine: torch's policy for convolutions, which run in the lower precision.

Under ``torch.autocast(device, dtype)`` torch's convolutions cast their floating inputs (not
float64) to ``dtype`` and return ``dtype``; anyconv's do the same, and then run with autocast
off, so that no operation inside casts a second time. The cast comes before the tensors'
dtypes are compared: in a network under autocast a layer meets the lower dtype's activations with
float32 weights, which torch's convolutions take.
"""

from __future__ import annotations

from typing import overload

import torch

#: the dtypes autocast lowers; float64 and the integer and complex dtypes stay as they are
_LOWERED = (torch.float32, torch.float16, torch.bfloat16)


def autocast_dtype(input: object) -> torch.dtype | None:
    """The dtype autocast asks convolutions on ``input``'s device to run in, or None (autocast off,
    or ``input`` not a tensor: the argument checks then name it).

    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     autocast_dtype(torch.ones(1))
    torch.bfloat16
    >>> autocast_dtype(torch.ones(1)) is None
    True
    """
    if not isinstance(input, torch.Tensor):
        return None
    device = input.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


@overload
def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...
@overload
def cast(tensor: None, dtype: torch.dtype) -> None: ...
@overload
def cast(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None: ...
def cast(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``tensor`` in ``dtype`` when autocast lowers its dtype, else as it is (None, or anything
    not a tensor, stays as it is for the argument checks to name)."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype not in _LOWERED:
        return tensor
    return tensor.to(dtype)
