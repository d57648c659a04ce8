"""Triton kernels of l1, lp, max_plus and min_plus over per-group fields (G, M, K) and filters (G, O, K).

The CUDA twins of :mod:`.fused` (same names, same arguments, same numbers); on CPU tensors they
run through Triton's interpreter. No (M, O, K) tensor is ever made: the forward streams the taps,
the backward the filters (field gradient) or the fields (filter gradient), one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import cache, lru_cache
from types import SimpleNamespace

import torch

from .filter_sums import FilterGradientSum, handed_back

try:
    import triton
    import triton.language as tl
except ImportError:  # importable without triton; triton_backend only calls in where it is installed
    triton = tl = None

#: the formulas one kernel computes, chosen at compile time
_L1, _POWER, _MAX_PLUS, _MIN_PLUS = 0, 1, 2, 3
#: the odd functions t(p - w) whose sums the pair-gradient kernel forms
_SIGN, _CLIPPED, _SIGNED_POWER = 0, 1, 2
#: a tile's elements, and the widest tile along filters (forward) or taps (backward)
_TILE, _WIDEST = 1024, 32


def _tile(columns: int) -> tuple[int, int]:
    """(rows, columns) of a tile over ``columns``: narrow when they are few, as in depthwise layers
    (one filter per group), so that the tile's lanes are not spent on masked-off columns."""
    width = min(_WIDEST, triton.next_power_of_2(max(columns, 1)))
    return _TILE // width, width


def _forward_kernel(
    fields,
    filters,
    output,
    taps_won,
    rows,
    outputs,
    taps,
    settings,
    FORMULA: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    """One (M-tile, O-tile, group): the tap loop of one formula, and the winning taps when tropical."""
    group = tl.program_id(2).to(tl.int64)
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    column = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    row_ok, column_ok = row < rows, column < outputs
    field_start = fields + group * rows * taps + row.to(tl.int64) * taps
    filter_start = filters + group * outputs * taps + column.to(tl.int64) * taps
    # settings: the starting value (0, -inf or inf) and the power, in the summing dtype
    power = tl.load(settings + 1)
    best = tl.full((BLOCK_M, BLOCK_O), 0, settings.dtype.element_ty) + tl.load(settings)
    won = tl.full((BLOCK_M, BLOCK_O), 0, tl.int64)
    for tap in range(taps):
        p = tl.load(field_start + tap, mask=row_ok, other=0.0)
        w = tl.load(filter_start + tap, mask=column_ok, other=0.0)
        if UPCAST:
            p, w = p.to(tl.float32), w.to(tl.float32)
        if FORMULA == 2:
            value = p[:, None] + w[None, :]
            # NaN wins over every number and the first NaN stays: the naive max's answer
            wins = (value > best) | ((value != value) & (best == best))
            best = tl.where(wins, value, best)
            won = tl.where(wins, tap, won)
        elif FORMULA == 3:
            value = p[:, None] - w[None, :]
            wins = (value < best) | ((value != value) & (best == best))
            best = tl.where(wins, value, best)
            won = tl.where(wins, tap, won)
        elif FORMULA == 0:
            best += tl.abs(p[:, None] - w[None, :])
        else:
            magnitude = tl.abs(p[:, None] - w[None, :])
            # |e|^p is 0 at e = 0 for every p, and NaN stays NaN
            raised = tl.exp2(power * tl.log2(tl.where(magnitude > 0, magnitude, 1.0)))
            best += tl.where(magnitude > 0, raised, tl.where(magnitude == 0, 0.0, magnitude))
    at = group * rows * outputs + row.to(tl.int64)[:, None] * outputs + column[None, :]
    both_ok = row_ok[:, None] & column_ok[None, :]
    tl.store(output + at, -best if FORMULA == 0 else best, mask=both_ok)
    if FORMULA >= 2:
        tl.store(taps_won + at, won, mask=both_ok)


def _pair_gradient_kernel(
    left,
    right,
    grad,
    result,
    lefts,
    rights,
    taps,
    grad_left_stride,
    grad_right_stride,
    settings,
    TERM: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """result[l, k] = -sum_r t(left[l, k] - right[r, k]) grad[l, r], one (L-tile, K-tile, group).

    With left = fields it is the field gradient; with left = filters and grad transposed (by
    its strides) it is the filter gradient, because t is odd: t(w - p) = -t(p - w).
    """
    group = tl.program_id(2).to(tl.int64)
    line = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    tap = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    line_ok, tap_ok = line < lefts, tap < taps
    both_ok = line_ok[:, None] & tap_ok[None, :]
    at = group * lefts * taps + line.to(tl.int64)[:, None] * taps + tap[None, :]
    a = tl.load(left + at, mask=both_ok, other=0.0)
    if UPCAST:
        a = a.to(tl.float32)
    power = tl.load(settings + 1)
    total = tl.full((BLOCK_L, BLOCK_K), 0, settings.dtype.element_ty)
    right_start = right + group * rights * taps
    grad_start = grad + group * lefts * rights + line.to(tl.int64) * grad_left_stride
    for other in range(rights):
        b = tl.load(right_start + other * taps + tap, mask=tap_ok, other=0.0)
        g = tl.load(grad_start + other * grad_right_stride, mask=line_ok, other=0.0)
        if UPCAST:
            b, g = b.to(tl.float32), g.to(tl.float32)
        difference = a - b[None, :]
        if TERM == 1:
            # HardTanh, NaN passing through as torch's clamp lets it
            clipped = tl.where(difference > 1, 1.0, tl.where(difference < -1, -1.0, difference))
            total += clipped * g[:, None]
        elif TERM == 2:
            magnitude = tl.abs(difference)
            exponent = power - 1
            raised = tl.exp2(exponent * tl.log2(tl.where(magnitude > 0, magnitude, 1.0)))
            # |e|^(p-1) as the eager path takes it: 0 at e = 0, else torch.pow's (x^0 = 1 for
            # every x, inf and NaN included; NaN^q = NaN otherwise)
            slope = tl.where(magnitude > 0, raised, magnitude)
            slope = tl.where(magnitude == 0, 0.0, tl.where(exponent == 0, 1.0, slope))
            value = g[:, None] * slope
            total += tl.where(difference < 0, -value, value)
        else:
            value = tl.broadcast_to(g[:, None], (BLOCK_L, BLOCK_K))
            # where, not a product with sign(): a zero difference gives 0 even against inf
            total += tl.where(difference > 0, value, tl.where(difference < 0, -value, 0.0))
    tl.store(result + at, -total, mask=both_ok)


@cache
def _kernels(interpret: bool) -> SimpleNamespace:
    """The kernels compiled for the GPU, or (``interpret``) run by Triton's CPU interpreter."""
    with _interpreting(interpret):
        return SimpleNamespace(
            forward=triton.jit(_forward_kernel), pair_gradient=triton.jit(_pair_gradient_kernel)
        )


@contextmanager
def _interpreting(interpret: bool) -> Iterator[None]:
    """What ``TRITON_INTERPRET=1`` does, for anyconv's own kernels only (read at build and at launch)."""
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = interpret
        yield


def _launch(
    kernel_name: str, device: torch.device, grid: tuple[int, ...], *args: object, **constants: object
) -> None:
    """Run one kernel: compiled on CUDA, interpreted on every other device."""
    interpret = device.type != "cuda"
    # Triton launches on the current CUDA device: make it the tensors' own
    on_device = nullcontext() if interpret else torch.cuda.device(device)
    with _interpreting(interpret), on_device:
        getattr(_kernels(interpret), kernel_name)[grid](*args, **constants)


def _upcast(tensor: torch.Tensor) -> bool:
    """Half-precision inputs are summed in float32; float32 in float32, float64 in float64."""
    return tensor.dtype != torch.float64


def _settings(tensor: torch.Tensor, start: float, power: float) -> torch.Tensor:
    """The kernels' starting value and power in the summing dtype (a float argument would be float32)."""
    return _settings_on(torch.float32 if _upcast(tensor) else torch.float64, tensor.device, start, power)


@lru_cache(maxsize=64)
def _settings_on(dtype: torch.dtype, device: torch.device, start: float, power: float) -> torch.Tensor:
    # kept: a copy to the GPU at every call would wait for the GPU's queue
    return torch.tensor([start, power], dtype=dtype, device=device)


def _forward(fields: torch.Tensor, filters: torch.Tensor, formula: int, power: float = 1.0) -> torch.Tensor:
    """The outputs (G, M, O) of one formula; for max_plus and min_plus see :func:`_winners`."""
    return _winners(fields, filters, formula, power)[0]


def _winners(
    fields: torch.Tensor, filters: torch.Tensor, formula: int, power: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs and the winning taps (G, M, O) of max_plus or min_plus (left unset otherwise)."""
    fields, filters = fields.contiguous(), filters.contiguous()
    groups, rows, taps = fields.shape
    outputs = filters.shape[1]
    output = fields.new_empty((groups, rows, outputs))
    tropical_formula = formula in (_MAX_PLUS, _MIN_PLUS)
    taps_won = torch.empty(
        output.shape if tropical_formula else (0,), dtype=torch.int64, device=fields.device
    )
    start = {_MAX_PLUS: float("-inf"), _MIN_PLUS: float("inf")}.get(formula, 0.0)
    block_m, block_o = _tile(outputs)
    grid = (triton.cdiv(rows, block_m), triton.cdiv(outputs, block_o), groups)
    if output.numel() == 0:  # a grid of no programs is not a valid launch
        return output, taps_won
    _launch(
        "forward",
        fields.device,
        grid,
        fields,
        filters,
        output,
        taps_won,
        rows,
        outputs,
        taps,
        _settings(fields, start, power),
        FORMULA=formula,
        UPCAST=_upcast(fields),
        BLOCK_M=block_m,
        BLOCK_O=block_o,
    )
    return output, taps_won


def _pair_gradients(
    fields: torch.Tensor,
    filters: torch.Tensor,
    grad: torch.Tensor,
    term: int,
    power: float = 1.0,
    *,
    filter_grads: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    fields, filters, grad = fields.contiguous(), filters.contiguous(), grad.contiguous()
    groups, rows, taps = fields.shape
    outputs = filters.shape[1]
    launches = [(fields, filters, rows, outputs, outputs, 1)]
    if filter_grads:
        launches.append((filters, fields, outputs, rows, 1, outputs))
    settings = _settings(fields, 0.0, power)
    block_l, block_k = _tile(taps)
    results = []
    for left, right, lefts, rights, left_stride, right_stride in launches:
        result = torch.empty_like(left)
        results.append(result)
        if result.numel() == 0:
            continue
        grid = (triton.cdiv(lefts, block_l), triton.cdiv(taps, block_k), groups)
        _launch(
            "pair_gradient",
            fields.device,
            grid,
            left,
            right,
            grad,
            result,
            lefts,
            rights,
            taps,
            left_stride,
            right_stride,
            settings,
            TERM=term,
            UPCAST=_upcast(fields),
            BLOCK_L=block_l,
            BLOCK_K=block_k,
        )
    return results[0], results[1] if filter_grads else None


def l1_distances(fields: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``-sum_k |p_k - w_k|`` for every field against every filter: (G, M, O).

    >>> import torch
    >>> l1_distances(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 0.0], [1.0, 4.0]]]))
    tensor([[[-3., -2.]]])
    """
    return _forward(fields, filters, _L1)


def l1_backward(
    fields: torch.Tensor,
    filters: torch.Tensor,
    grad: torch.Tensor,
    *,
    adder: bool = False,
    filter_sum: FilterGradientSum | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`l1_distances`, exact (sign) or AdderNet's clipped field rule (filters: None).

    >>> import torch
    >>> p, w, g = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 4.0]]]), torch.ones(1, 1, 1)
    >>> l1_backward(p, w, g)
    (tensor([[[-1.,  1.]]]), tensor([[[ 1., -1.]]]))
    >>> l1_backward(p, w, g, adder=True)
    (tensor([[[-1.,  1.]]]), None)
    """
    grads = _pair_gradients(fields, filters, grad, _CLIPPED if adder else _SIGN, filter_grads=not adder)
    return handed_back(*grads, filter_sum)


def tropical(fields: torch.Tensor, filters: torch.Tensor, *, minimum: bool) -> torch.Tensor:
    """``max_k (p_k + w_k)``, or with ``minimum`` ``min_k (p_k - w_k)``: (G, M, O).

    >>> import torch
    >>> p, w = torch.tensor([[[1.0, 5.0]]]), torch.tensor([[[3.0, 0.0]]])
    >>> tropical(p, w, minimum=False), tropical(p, w, minimum=True)
    (tensor([[[5.]]]), tensor([[[-2.]]]))
    """
    return _forward(fields, filters, _MIN_PLUS if minimum else _MAX_PLUS)


def tropical_backward(
    fields: torch.Tensor,
    filters: torch.Tensor,
    grad: torch.Tensor,
    *,
    minimum: bool,
    filter_sum: FilterGradientSum | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`tropical`: the winning tap (the first NaN, else the first on a tie) takes all.

    The kernel finds the winners, (G, M, O) indices; two scatter-adds route the gradient to them.

    >>> import torch
    >>> p, w = torch.tensor([[[1.0, 5.0]]]), torch.tensor([[[3.0, 0.0]]])
    >>> tropical_backward(p, w, torch.ones(1, 1, 1), minimum=False)
    (tensor([[[0., 1.]]]), tensor([[[0., 1.]]]))
    """
    groups, _, taps = fields.shape
    taps_won = _winners(fields, filters, _MIN_PLUS if minimum else _MAX_PLUS)[1]
    grad_fields = torch.zeros_like(fields).scatter_add_(-1, taps_won, grad.to(fields.dtype))
    offsets = torch.arange(filters.shape[1], device=fields.device) * taps
    grad_filters = torch.zeros_like(filters)
    filter_terms = (-grad if minimum else grad).to(filters.dtype)
    grad_filters.view(groups, -1).scatter_add_(
        1, (taps_won + offsets).reshape(groups, -1), filter_terms.reshape(groups, -1)
    )
    return handed_back(grad_fields, grad_filters, filter_sum)


def power_sums(fields: torch.Tensor, filters: torch.Tensor, p: float) -> torch.Tensor:
    """``sum_k |p_k - w_k|^p`` for every field against every filter: (G, M, O).

    >>> import torch
    >>> power_sums(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 0.0]]]), 3.0)
    tensor([[[9.]]])
    """
    return _forward(fields, filters, _POWER, p)


def power_sums_backward(
    fields: torch.Tensor,
    filters: torch.Tensor,
    scale: torch.Tensor,
    p: float,
    filter_sum: FilterGradientSum | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of ``-sum scale * S / p`` (S from :func:`power_sums`), scale (G, M, O) held fixed.

    >>> import torch
    >>> power_sums_backward(torch.tensor([[[1.0, 2.0]]]), torch.zeros(1, 1, 2), torch.ones(1, 1, 1), 3.0)
    (tensor([[[-1., -4.]]]), tensor([[[1., 4.]]]))
    """
    grad_fields, grad_filters = _pair_gradients(fields, filters, scale, _SIGNED_POWER, p)
    return handed_back(grad_fields, grad_filters, filter_sum)
