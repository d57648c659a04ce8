"""Which fused kernels run a call: Triton's on CUDA tensors (where triton imports), else :mod:`.fused`'s own.

``ANYCONV_BACKEND=triton`` sends CPU tensors to the Triton kernels too, through Triton's interpreter
(anyconv turns it on for its own kernels only; ``TRITON_INTERPRET`` need not be set).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

import torch

from ..errors import invalid

#: the values ``ANYCONV_BACKEND`` takes: the automatic choice, or Triton for every device
BACKENDS = ("auto", "triton")

_took_triton = False

Function = TypeVar("Function", bound=Callable)


@cache
def triton_available() -> bool:
    """True when the ``triton`` package is installed (``pip install anyconv[gpu]``)."""
    return importlib.util.find_spec("triton") is not None


def backend() -> str:
    """The backend asked for by ``ANYCONV_BACKEND`` (default ``"auto"``), checked.

    >>> backend() in BACKENDS
    True
    """
    value = os.environ.get("ANYCONV_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise invalid("ANYCONV_BACKEND", value, f"one of {', '.join(BACKENDS)}")
    return value


def triton_chosen(tensor: torch.Tensor) -> bool:
    """Whether the Triton kernels run on ``tensor``: floating CUDA with triton, or CPU too on demand.

    >>> import torch
    >>> triton_chosen(torch.ones(1)) == (backend() == "triton")
    True
    """
    # read once: every call of a fused variant asks, and the environment is slow to read
    asked = backend() == "triton"
    if asked and not triton_available():
        raise invalid("ANYCONV_BACKEND", "triton", "auto, since triton is not installed (anyconv[gpu])")
    # the kernels sum in floating point: integer tensors keep the exact eager path
    if not tensor.is_floating_point():
        return False
    if asked:
        # the interpreter reads CPU memory; other devices keep the eager path
        return tensor.device.type in ("cpu", "cuda")
    return tensor.device.type == "cuda" and triton_available()


def triton_twin(function: Function) -> Function:
    """Send ``function``'s calls to its namesake in :mod:`.triton_kernels` when :func:`triton_chosen`.

    >>> import torch
    >>> twin = triton_twin(lambda fields: "own")
    >>> twin(torch.ones(1)) == "own" or backend() == "triton"
    True
    """

    @functools.wraps(function)
    def chosen(fields: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        global _took_triton
        _took_triton = triton_chosen(fields)
        if _took_triton:
            from . import triton_kernels

            return getattr(triton_kernels, function.__name__)(fields, *args, **kwargs)
        return function(fields, *args, **kwargs)

    return chosen  # type: ignore[return-value]


def took_triton() -> bool:
    """True when the last call through :func:`triton_twin` ran a Triton kernel."""
    return _took_triton


def record_triton_call() -> None:
    """Record that the last call ran a Triton kernel (the engine's implicit-im2col path)."""
    global _took_triton
    _took_triton = True


def forget_triton() -> None:
    """Record that the last call ran no Triton kernel (another path computed it)."""
    global _took_triton
    _took_triton = False
