"""Float32 matrix products on CPU: through oneDNN's inner product where torch ships it.

Every product here is a plain matrix product (never a convolution kernel), taken by oneDNN's inner
product (``torch.ops.mkldnn._linear_pointwise``) for CPU float32 tensors where torch is built with
it and it is enabled, else by ``torch.matmul``. The BLAS behind ``torch.matmul`` (MKL) ran up to
half as fast on the engine's shapes, most on processors where it takes no AVX-512 path
(docs/benchmarks.md). The inner product has no autograd formula: where autograd records a
product, an autograd Function of this file takes it, its backward's products through oneDNN too
(``torch.matmul`` under torch.func's transforms).
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Any

import torch

from ..functional.transforms import transformed

#: multiply-adds of a product below which oneDNN's setup per call costs more than the BLAS takes
#: for the whole product (a 128 x 128 x 128 product takes about as long either way)
MIN_WORK = 2**21
#: the same for :func:`filters_times_columns`, whose products per sample and group stand where
#: ``torch.matmul`` takes the whole batch in one call: below this, one call measured faster
MIN_SPLIT_WORK = 2**24
#: a pointwise layer's weight gradient (:func:`rows_transposed_product`, :func:`filters_gradient`)
#: that sums at least this many times as many terms as either side of its result has rows takes the
#: BLAS: oneDNN's inner product measured slower on those (docs/benchmarks.md); the fields'
#: products, whose sums can be as long, measured faster through oneDNN, so
#: :func:`batched_product` keeps it
LONG_REDUCTION = 8


def row_product(left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``left`` (m, K) times ``right`` (n, K) transposed, plus ``bias`` (n,): (m, n).

    ``right`` may be any strided view (oneDNN lays its weights out itself); ``left`` runs fastest
    contiguous.

    >>> row_product(torch.ones(2, 3), torch.ones(4, 3), torch.arange(4.0)).tolist()[0]
    [3.0, 4.0, 5.0, 6.0]
    """
    if _pays(left, right):
        left, right = _laid_out(left), _laid_out(right)
        if not _records(left, right, bias):
            # the bias goes into the product's own pass over its result
            return torch.ops.mkldnn._linear_pointwise(left, right, bias, "none", [], "")
        return _RowProduct.apply(left, right, bias)
    if bias is None:
        return torch.mm(left, right.t())
    return torch.addmm(bias, left, right.t())


def _laid_out(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` itself where it or its transpose is contiguous, else a contiguous copy: oneDNN
    read a matrix whose rows lie further apart than their length (a slice of a wider one) hundreds
    of times slower as its weights, and a few times slower as its input, than the copy costs
    (docs/benchmarks.md).

    >>> wide = torch.ones(4, 8)
    >>> _laid_out(wide[:, :3]).stride(), _laid_out(wide.mT).stride()
    ((3, 1), (1, 8))
    """
    if matrix.is_contiguous() or matrix.mT.is_contiguous():
        return matrix
    return matrix.contiguous()


class _RowProduct(torch.autograd.Function):
    """:func:`row_product` recorded by autograd: its backward's products through oneDNN too, each
    operand of the weight's gradient read through a transposed view (a product taken as its
    transpose, whose first operand is then the contiguous one); with a graph asked of the backward
    (double backward), the backward's products are recorded in turn."""

    @staticmethod
    def forward(left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return row_product(left, right, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor, Any], output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0], inputs[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        left, right = ctx.saved_tensors
        grad_left = row_product(grad, right.mT, None) if ctx.needs_input_grad[0] else None
        grad_right = rows_transposed_product(grad, left) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_left, grad_right, grad_bias


def rows_transposed_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left`` (m, a) transposed times ``right`` (m, b): (a, b), a sum over the m rows (a weight's
    gradient), taken as the transpose of ``right``'s columns times ``left``'s.

    >>> left, right = torch.randn(5, 2), torch.randn(5, 3)
    >>> torch.allclose(rows_transposed_product(left, right), left.T @ right, atol=1e-6)
    True
    """
    if long_reduction(right.mT, left.mT):
        return torch.mm(left.mT, right)
    return row_product(right.mT, left.mT, None).mT


def batched_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left`` (G, m, K) times ``right`` (G, K, n): (G, m, n), one row product per group where
    oneDNN takes them, else ``torch.matmul`` (complex tensors, other dtypes, other devices).

    >>> left, right = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    >>> torch.allclose(batched_product(left, right), left @ right, atol=1e-6)
    True
    """
    if left.shape[0] == 0 or not inner_product_pays(left[0], right[0].mT):
        return torch.matmul(left, right)
    if left.shape[0] == 1:
        return row_product(left[0], right[0].mT, None).unsqueeze(0)
    return torch.stack([row_product(one, other.mT, None) for one, other in zip(left, right)])


def filters_times_columns(filters: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``filters`` (G, Og, Cg) times ``columns`` (B, G, Cg, L): (B, G, Og, L), one row product per
    sample and group where oneDNN takes them (the columns as its weights, a transposed view), else
    ``torch.matmul``.

    >>> columns, filters = torch.randn(2, 3, 64, 512), torch.randn(3, 128, 64)
    >>> torch.allclose(filters_times_columns(filters, columns), filters @ columns, atol=1e-4)
    True
    """
    batch, groups = columns.shape[:2]
    if batch == 0 or groups == 0 or not _pays(filters[0], columns[0, 0].mT, MIN_SPLIT_WORK):
        return torch.matmul(filters, columns)
    if _records(filters, columns):
        return _FiltersTimesColumns.apply(filters, columns)
    output = columns.new_empty((batch, groups, filters.shape[1], columns.shape[3]))
    for sample, group in itertools.product(range(batch), range(groups)):
        output[sample, group] = row_product(filters[group], columns[sample, group].mT, None)
    return output


class _FiltersTimesColumns(torch.autograd.Function):
    """:func:`filters_times_columns` recorded by autograd: its backward's two products through
    oneDNN too; with a graph asked of the backward (double backward), the backward's products are
    recorded in turn, through this Function or ``torch.matmul``."""

    @staticmethod
    def forward(filters: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return filters_times_columns(filters, columns)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        filters, columns = ctx.saved_tensors
        grad_filters = grad_columns = None
        if ctx.needs_input_grad[1]:
            grad_columns = filters_times_columns(filters.mT, grad)
        if ctx.needs_input_grad[0]:
            grad_filters = filters_gradient(grad, columns)
        return grad_filters, grad_columns


def filters_gradient(grad: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The sum over samples of ``grad`` (B, G, Og, L) times ``columns`` (B, G, Cg, L) transposed:
    (G, Og, Cg); a row product per sample and group (both operands rows of L) where oneDNN takes
    them (from ``MIN_SPLIT_WORK``: the batch is split), else recorded through torch.matmul.

    >>> grad, columns = torch.randn(2, 1, 3, 5), torch.randn(2, 1, 4, 5)
    >>> torch.allclose(filters_gradient(grad, columns), (grad @ columns.mT).sum(0), atol=1e-6)
    True
    """
    if (
        not _pays(grad[0, 0], columns[0, 0], MIN_SPLIT_WORK)
        or _records(grad, columns)
        or long_reduction(grad[0, 0], columns[0, 0])
    ):
        return torch.matmul(grad, columns.mT).sum(0)
    batch, groups = columns.shape[:2]
    total = grad.new_zeros((groups, grad.shape[2], columns.shape[2]))
    for sample, group in itertools.product(range(batch), range(groups)):
        total[group] += row_product(grad[sample, group], columns[sample, group], None)
    return total


def long_reduction(left: torch.Tensor, right: torch.Tensor) -> bool:
    """Whether ``left`` (m, K) times ``right`` (n, K) transposed sums at least ``LONG_REDUCTION``
    times as many terms (K) as m and n: a weight's gradient over many positions.

    >>> long_reduction(torch.ones(144, 3136), torch.ones(24, 3136))
    True
    >>> long_reduction(torch.ones(455, 2304), torch.ones(256, 2304))
    False
    """
    return left.shape[-1] >= LONG_REDUCTION * max(left.shape[-2], right.shape[-2])


def inner_product_pays(left: torch.Tensor, right: torch.Tensor) -> bool:
    """Whether oneDNN's inner product takes ``left`` (m, K) times ``right`` (n, K) transposed: it
    fits them, and the product is large enough to repay its setup per call (``MIN_WORK``).

    >>> inner_product_pays(torch.ones(8, 96), torch.ones(24, 96))
    False
    """
    return _pays(left, right) and not _records(left, right)


def _pays(left: torch.Tensor, right: torch.Tensor, least: int | None = None) -> bool:
    """:func:`inner_product_pays` from ``least`` multiply-adds (``MIN_WORK`` if None), whether or
    not autograd would record through the product."""
    work = left.shape[-2] * left.shape[-1] * right.shape[-2]
    return work >= (MIN_WORK if least is None else least) and _onednn_fits(left, right)


def _records(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record an op on ``tensors`` (None for an absent bias)."""
    return torch.is_grad_enabled() and any(tensor is not None and tensor.requires_grad for tensor in tensors)


def _onednn_fits(left: torch.Tensor, right: torch.Tensor) -> bool:
    """oneDNN's inner product takes these: built into torch, enabled, CPU float32 both, no trace
    being recorded (torch.compile and torch.export keep the portable ``torch.matmul``), and no
    transform that sees torch's own ops only (torch.func's, forward mode: ``transformed``).

    >>> _onednn_fits(torch.ones(2, 3, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64))
    False
    """
    return (
        left.dtype == torch.float32
        and right.dtype == torch.float32
        and left.device.type == "cpu"
        and right.device.type == "cpu"
        and _inner_product_available()
        and bool(torch.backends.mkldnn.enabled)
        and not torch.compiler.is_compiling()
        and not transformed()
    )


def inner_product_takes(dtype: torch.dtype) -> bool:
    """Whether oneDNN's inner product takes CPU products of ``dtype`` in this build of torch (what
    a plan made from shapes and dtype can know: not the device, nor the switch of the moment).

    >>> inner_product_takes(torch.float64)
    False
    """
    return dtype == torch.float32 and _inner_product_available()


@lru_cache(maxsize=1)
def _inner_product_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
