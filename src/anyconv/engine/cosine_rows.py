"""The cosine of a small layer's rows in one native call forward and one backward
(``variants/cosine_rows.cpp``).

A squeeze-excitation layer (1x1 on a 1x1 image) multiplies a few rows (B, C) by a few filters
(O, C): the work is a few microseconds, and the composed cosine's norms, division and bias add
(each a torch call, each an autograd node when recorded) cost more than the product itself. Here
the forward is one call and the backward another, every sum in double. Taken for float32 and
float64 CPU tensors of at most ``MAX_WORK`` multiply-adds, outside torch's machinery (compile,
export, torch.func, autocast, modes: :func:`~anyconv.engine.machinery.machinery_watches`), where
the library is built; a second derivative differentiates the composed form.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import torch

from ..variants.native import load_library, native_enabled, native_path
from .graph_gradients import gradients_as_graph
from .machinery import machinery_watches, records_graph
from .pointwise_cosine import composed_cosine

_SOURCE = "cosine_rows.cpp"
_POINTER, _SIZE = ctypes.c_void_p, ctypes.c_int64
_PARTS = {torch.float32: "f32", torch.float64: "f64"}
#: multiply-adds (rows x filters x channels) up to which a call takes the native cosine: the loops
#: are plain (one thread, sums in double), and past a few hundred thousand BLAS's product and the
#: composition's few calls cost less
MAX_WORK = 2**17


def cosine_rows_path() -> str:
    """``"native: <library>"`` or ``"eager: <why, and the fix>"``, as ``anyconv check`` reports it."""
    return native_path(_SOURCE)


def cosine_rows_fit(rows: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :func:`cosine_rows` takes the cosine of ``rows`` (M, C) with ``filters`` (O, C).

    >>> cosine_rows_fit(torch.randn(8, 96), torch.randn(24, 96), None) in (True, False)
    True
    >>> half = torch.randn(8, 96, dtype=torch.float16)
    >>> cosine_rows_fit(half, half[:3], None)
    False
    """
    return (
        rows.dim() == 2
        and rows.dtype in _PARTS
        and rows.device.type == "cpu"
        and filters.dtype == rows.dtype
        and filters.device == rows.device
        and rows.numel() * filters.shape[0] <= MAX_WORK
        and rows.is_contiguous()
        and filters.is_contiguous()
        and (
            bias is None or (bias.dtype == rows.dtype and bias.device == rows.device and bias.is_contiguous())
        )
        and native_enabled()
        and not machinery_watches(rows, filters, bias)
        and _functions(_PARTS[rows.dtype]) is not None
    )


def cosine_rows(
    rows: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``sum p * w / (|p| |w| + eps)`` plus ``bias`` for ``rows`` (M, C) and ``filters`` (O, C): (M, O).

    The arguments pass :func:`cosine_rows_fit`; a second derivative differentiates the pointwise
    path's composition (:func:`~anyconv.engine.pointwise_cosine.composed_cosine`).

    >>> import torch.nn.functional as F
    >>> p, w = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    >>> if cosine_rows_fit(p, w, None):
    ...     expected = F.normalize(p, dim=1) @ F.normalize(w, dim=1).T
    ...     assert torch.allclose(cosine_rows(p, w, None, 0.0), expected)
    """
    if records_graph(rows, filters, bias):
        return _CosineRows.apply(rows, filters, bias, eps)
    return _forward(rows, filters, bias, eps)


def _forward(
    rows: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    output = rows.new_empty((rows.shape[0], filters.shape[0]))
    _native(rows)[0](
        rows.data_ptr(),
        filters.data_ptr(),
        None if bias is None else bias.data_ptr(),
        eps,
        output.data_ptr(),
        *output.shape,
        rows.shape[1],
    )
    return output


class _CosineRows(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        rows: torch.Tensor,
        filters: torch.Tensor,
        bias: torch.Tensor | None,
        eps: float,
    ) -> torch.Tensor:
        ctx.save_for_backward(rows, filters, bias)
        ctx.eps = eps
        return _forward(rows, filters, bias, eps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, filters, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            # a graph of the gradients is asked for (a second derivative): the composed form's
            def composed() -> torch.Tensor:
                output = composed_cosine(rows, filters, ctx.eps, rows=True, recording=True)
                return output if bias is None else output + bias

            return (*gradients_as_graph(composed, (rows, filters, bias), needs, grad), None)
        grad = grad.contiguous()
        grad_rows = torch.empty_like(rows) if needs[0] else None
        grad_filters = torch.empty_like(filters) if needs[1] else None
        _native(rows)[1](
            grad.data_ptr(),
            rows.data_ptr(),
            filters.data_ptr(),
            ctx.eps,
            None if grad_rows is None else grad_rows.data_ptr(),
            None if grad_filters is None else grad_filters.data_ptr(),
            *grad.shape,
            rows.shape[1],
        )
        return grad_rows, grad_filters, grad.sum(0) if needs[2] else None, None


def _native(rows: torch.Tensor) -> tuple[Any, Any]:
    """The native forward and backward for ``rows``'s dtype, which passed :func:`cosine_rows_fit`."""
    functions = _functions(_PARTS[rows.dtype])
    assert functions is not None, "taken only where cosine_rows_fit"
    return functions


@cache
def _functions(part: str) -> tuple[Any, Any] | None:
    """The native forward and backward for ``part`` (f32, f64), or None where they are not built."""
    library = load_library(_SOURCE)
    if library is None or not hasattr(library, f"cosine_rows_{part}"):
        return None
    forward = getattr(library, f"cosine_rows_{part}")
    forward.argtypes = (_POINTER, _POINTER, _POINTER, ctypes.c_double, _POINTER, *(_SIZE,) * 3)
    backward = getattr(library, f"cosine_rows_backward_{part}")
    backward.argtypes = (_POINTER, _POINTER, _POINTER, ctypes.c_double, _POINTER, _POINTER, *(_SIZE,) * 3)
    forward.restype = backward.restype = None
    return forward, backward
