"""Fused kernels of l1, lp, max_plus and min_plus, forward and backward, native or eager.

Both paths compute the same formulas and never make the (M, Og, Kg) broadcast of a whole chunk:
the native C++ loops (see :mod:`.native`) keep the output channels in vector registers, and the
eager path, used where they cannot run (no compiler, another device or dtype, ``ANYCONV_NATIVE=0``),
broadcasts a few fields at a time. Tensors are per group: fields (G, M, K), filters (G, O, K).
"""

from __future__ import annotations

import ctypes
import os
import warnings
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache, partial

import torch

from .filter_sums import FilterGradientSum, handed_back
from .native import load_library, native_enabled, native_path
from .triton_backend import forget_triton, took_triton, triton_twin

#: elements of one eager broadcast block (fields x filters x taps): 8 MiB in float32
EAGER_BLOCK_ELEMENTS = 2**21
#: fields per thread below which splitting the rows between threads is not worth it
_ROWS_PER_THREAD = 64
#: tap blocks per thread from which the taps-innermost backwards (l1, lp) split the taps between
#: threads, which then share one filter gradient, rather than the rows, each thread with a
#: filter-sized buffer of its own: a wide layer's filters (512 x 4608 taps) outweigh a chunk.
#: Fewer blocks would leave threads idle on a ragged last block.
TAP_BLOCKS_PER_THREAD = 4
#: whether the outputs-innermost backward (max_plus, min_plus) of a chunk with fewer fields than
#: filters splits the filters between its OpenMP threads (one filter gradient, a field-sized
#: buffer per extra thread) rather than the rows (a filter-sized buffer per thread)
SPLIT_FILTERS = True

_last_path: str | None = None
#: (the filters tensor, its version, their padded copy) of the last native call: see _padded_filters
_last_padded: tuple[weakref.ref, int, torch.Tensor] | None = None

_POINTER, _SIZE, _FLAG, _REAL = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
#: function -> (source file, pointers, argument types after K, O, m0, m1): the number of threads,
#: for a backward the elements between the threads' filter-gradient buffers (0: one buffer, the
#: taps split) and for a taps-innermost one its taps [k0, k1), then its options
_SIGNATURES = {
    "l1_forward": ("fused_kernels.cpp", 3, (_FLAG,)),
    "tropical_forward": ("fused_kernels.cpp", 3, (_FLAG, _FLAG)),
    "l1_backward": ("fused_kernels.cpp", 5, (_FLAG, _SIZE, _SIZE, _SIZE, _FLAG)),
    "tropical_backward": ("fused_kernels.cpp", 5, (_FLAG, _SIZE, _FLAG)),
    "lp_forward": ("fused_power.cpp", 3, (_FLAG, _REAL)),
    "lp_backward": ("fused_power.cpp", 5, (_FLAG, _SIZE, _SIZE, _SIZE, _REAL)),
}

#: the fused variants and the source file of their native loops
NATIVE_SOURCES = {
    "l1": "fused_kernels.cpp",
    "lp": "fused_power.cpp",
    "max_plus": "fused_kernels.cpp",
    "min_plus": "fused_kernels.cpp",
}


def native_paths() -> dict[str, str]:
    """Per fused variant, ``"native: <library>"`` or ``"eager: <why, and the fix>"`` on this machine.

    Native means float32, float64, bfloat16 and float16 CPU tensors (the last two computed in
    float32; float16 where the compiler has ``_Float16``); other dtypes and devices always run
    eager. The reasons are returned rather than warned, as the caller reports them.

    >>> sorted(native_paths())
    ['l1', 'lp', 'max_plus', 'min_plus']
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {variant: native_path(source) for variant, source in NATIVE_SOURCES.items()}


def last_path() -> str | None:
    """What computed the last call: ``"native"`` (compiled C++ loops: the fused kernels or the
    engine's tap loops), ``"triton"`` or ``"eager"`` (torch's own operations only: the matrix
    products, the eager twins of the loops); None before any call.

    A call is one of the engine (its forward, then its backward once that runs) or one of a
    fused kernel's own. Under torch.compile the engine's Python is traced once: the answer then
    follows only the custom operators that run.

    >>> import torch, anyconv
    >>> _ = anyconv.conv(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3))
    >>> last_path()
    'eager'
    """
    return "triton" if took_triton() else _last_path


def record_eager_call() -> None:
    """Make :func:`last_path` answer ``"eager"``: a call of the engine starts, and the compiled
    loops or Triton kernels that then compute part of it record themselves over it."""
    global _last_path
    _last_path = "eager"
    forget_triton()


def record_native_call() -> None:
    """Make :func:`last_path` answer ``"native"``: compiled loops of another module (the engine's
    tap loops) computed the last call."""
    global _last_path
    _last_path = "native"
    forget_triton()


def native_kernels_available() -> bool:
    """True when the native loops are compiled (or compile now) and enabled for float CPU tensors."""
    return native_enabled() and load_library("fused_kernels.cpp") is not None


#: the dtypes the loops take and the suffix of their functions; the last two are computed in float32
NATIVE_DTYPES = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the loops accumulate ``dtype`` in: float32 for the 16-bit floats, else ``dtype``.

    >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _native_function(name: str, tensor: torch.Tensor) -> Callable | None:
    global _last_path
    usable = tensor.device.type == "cpu" and tensor.dtype in NATIVE_DTYPES
    library = load_library(_SIGNATURES[name][0]) if usable and native_enabled() else None
    symbol = f"{name}_{NATIVE_DTYPES.get(tensor.dtype)}"
    # a compiler without _Float16 builds no float16 loops
    if library is None or not hasattr(library, symbol):
        _last_path = "eager"
        return None
    _last_path = "native"
    return _bind(library, symbol, name)


@cache
def _splits_rows_itself(source_name: str) -> bool:
    """True when the loops of ``source_name`` split their rows on OpenMP threads (see native.py)."""
    library = load_library(source_name)
    return library is not None and bool(library.anyconv_openmp())


@cache
def _bind(library: ctypes.CDLL, symbol: str, name: str) -> Callable:
    _, pointers, extra = _SIGNATURES[name]
    function = getattr(library, symbol)
    function.argtypes = [*(_POINTER,) * pointers, _SIZE, _SIZE, _SIZE, _SIZE, *extra]
    function.restype = None
    return function


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="anyconv")


def _row_ranges(rows: int) -> list[tuple[int, int]]:
    """Split the fields between torch's threads, in multiples of the kernels' 4-field blocks."""
    threads = max(1, min(torch.get_num_threads(), rows // _ROWS_PER_THREAD))
    step = -(-rows // threads)
    step += -step % 4
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def _tap_ranges(taps: int, lanes: int, threads: int) -> list[tuple[int, int]] | None:
    """The taps of each thread, in multiples of the backward's ``lanes``-tap blocks, or None when
    there are too few blocks to split them (then the rows are split).

    >>> _tap_ranges(4608, 32, 2), _tap_ranges(147, 32, 2)
    ([(0, 2304), (2304, 4608)], None)
    """
    if threads < 2 or -(-taps // lanes) < TAP_BLOCKS_PER_THREAD * threads:
        return None
    step = -(-taps // threads)
    step += -step % lanes
    return [(start, min(start + step, taps)) for start in range(0, taps, step)]


def _splits_filters(name: str, fields: torch.Tensor, rows: int, width: int, threads: int) -> bool:
    """Whether the tropical backward's OpenMP threads split the ``width`` (padded) filters of a
    chunk of ``rows`` fields: fewer fields than filters, a channel block each, float or double."""
    lanes = 256 // fields.element_size()
    return (
        SPLIT_FILTERS
        and threads > 1
        and fields.dtype in (torch.float32, torch.float64)
        and _splits_rows_itself(_SIGNATURES[name][0])
        and rows < width
        and width // lanes >= threads
    )


def _run(calls: list[Callable[[], None]]) -> None:
    """Run the calls on threads (ctypes releases the GIL during each foreign call)."""
    if len(calls) == 1:
        calls[0]()
    else:
        for future in [_pool().submit(call) for call in calls]:
            future.result()


def _padded_filters(filters: torch.Tensor) -> torch.Tensor:
    """(G, O, K) -> (G, K, O') in the compute dtype, O' the next multiple of the kernels' channel
    block, zero filled.

    The engine hands every chunk of a call the same ``filters`` tensor: the padded copy is made
    for its first chunk and kept while that tensor lives unchanged (its version counter, which
    an in-place change of the weight moves too), so a layer of many chunks copies its filters
    once; the engine's filters live for one call, so nothing is kept past it. Filters made
    under ``torch.inference_mode`` have no version counter and are padded for every chunk.
    """
    global _last_padded
    # an inference tensor (made under torch.inference_mode) has no version counter: no reuse
    tracked = not filters.is_inference()
    last = _last_padded
    if tracked and last is not None and last[0]() is filters and last[1] == filters._version:
        return last[2]
    groups, outputs, taps = filters.shape
    dtype = compute_dtype(filters.dtype)
    lanes = 256 // dtype.itemsize
    padded = filters.new_zeros((groups, taps, -(-outputs // lanes) * lanes), dtype=dtype)
    padded[:, :, :outputs] = filters.transpose(1, 2)
    if tracked:
        _last_padded = (weakref.ref(filters, _forget_padded), filters._version, padded)
    return padded


def _forget_padded(reference: weakref.ref) -> None:
    """Drop the padded filters when the tensor they were made from is freed."""
    global _last_padded
    last = _last_padded
    if last is not None and last[0] is reference:
        _last_padded = None


def _padded_rows(rows: torch.Tensor, width: int) -> torch.Tensor:
    """(G, M, O) -> contiguous (G, M, width), zero filled past O."""
    if rows.shape[-1] == width:
        return rows.contiguous()
    padded = rows.new_zeros((*rows.shape[:-1], width))
    padded[..., : rows.shape[-1]] = rows
    return padded


def _native_forward(
    name: str, function: Callable, fields: torch.Tensor, filters: torch.Tensor, *extra: object
) -> torch.Tensor:
    fields = fields.contiguous()
    groups, rows, taps = fields.shape
    transposed = _padded_filters(filters)
    width = transposed.shape[-1]
    output = fields.new_empty((groups, rows, width))
    size, filter_size = fields.element_size(), transposed.element_size()
    ranges = _row_ranges(rows)

    def call(start: int, stop: int, threads: int) -> None:
        for group in range(groups):
            function(
                fields.data_ptr() + group * rows * taps * size,
                transposed.data_ptr() + group * taps * width * filter_size,
                output.data_ptr() + group * rows * width * size,
                taps,
                width,
                start,
                stop,
                threads,
                *extra,
            )

    if _splits_rows_itself(_SIGNATURES[name][0]):
        call(0, rows, len(ranges))
    else:
        _run([partial(call, start, stop, 1) for start, stop in ranges])
    return output[..., : filters.shape[1]]


def _native_backward(
    name: str,
    function: Callable,
    fields: torch.Tensor,
    filters: torch.Tensor,
    grad: torch.Tensor,
    *extra: object,
    filter_grads: bool = True,
    outputs_innermost: bool = False,
    filter_sum: FilterGradientSum | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a backward loop nest: taps innermost (filters (G, O, K)), or outputs innermost (padded).

    With ``filter_sum`` the loops add the filter gradient into its per-thread sums, and None is
    returned for it."""
    fields = fields.contiguous()
    groups, rows, taps = fields.shape
    if outputs_innermost:
        filters_in = _padded_filters(filters)
        width = filters_in.shape[-1]
        grad = _padded_rows(grad, width)
        filter_shape = (taps, width)
    else:
        filters_in = filters.to(compute_dtype(filters.dtype)).contiguous()
        width = filters.shape[1]
        grad = grad.contiguous()
        filter_shape = (width, taps)
    grad_fields = torch.empty_like(fields)
    ranges = _row_ranges(rows)
    tap_ranges = None
    if not outputs_innermost:
        # the loops' tap block: 128 bytes of the compute type
        tap_ranges = _tap_ranges(taps, 128 // filters_in.element_size(), len(ranges))
    split_filters = outputs_innermost and _splits_filters(name, fields, rows, width, len(ranges))
    shared = tap_ranges is not None or split_filters
    # one filter-gradient buffer per thread, summed after: no two threads write the same one;
    # or one for all when the threads split the taps or the filters
    per_thread = None
    if filter_grads:
        parts = 1 if shared else len(ranges)
        if filter_sum is None:
            per_thread = fields.new_zeros((parts, groups, *filter_shape), dtype=filters_in.dtype)
        else:
            per_thread = filter_sum.loop_parts(parts, filter_shape, filters_in.dtype, outputs_innermost)
    size, filter_size = fields.element_size(), filters_in.element_size()

    part_stride = 0 if per_thread is None or shared else per_thread[0].numel()

    def call(index: int, start: int, stop: int, threads: int, taps_part: tuple[int, ...]) -> None:
        for group in range(groups):
            function(
                fields.data_ptr() + group * rows * taps * size,
                filters_in.data_ptr() + group * taps * width * filter_size,
                grad.data_ptr() + group * rows * width * size,
                grad_fields.data_ptr() + group * rows * taps * size,
                None if per_thread is None else per_thread[index, group].data_ptr(),
                taps,
                width,
                start,
                stop,
                threads,
                part_stride,
                *taps_part,
                *extra,
            )

    every_tap = () if outputs_innermost else (0, taps)
    if _splits_rows_itself(_SIGNATURES[name][0]):
        call(0, 0, rows, len(tap_ranges or ranges), every_tap)
    elif tap_ranges is not None:
        _run([partial(call, 0, 0, rows, 1, part) for part in tap_ranges])
    else:
        _run([partial(call, i, *r, 1, every_tap) for i, r in enumerate(ranges)])
    if per_thread is None or filter_sum is not None:
        return grad_fields, None
    # summed into the first thread's buffer in place: a fresh sum would hold one more filter-sized
    # tensor at the peak, which on wide layers (512 x 4608 taps) outweighs a whole chunk
    grad_filters = per_thread[0]
    for part in per_thread[1:]:
        grad_filters += part
    if outputs_innermost:
        grad_filters = grad_filters[:, :, : filters.shape[1]].transpose(1, 2)
    return grad_fields, grad_filters.to(filters.dtype)


def _blocks(fields: torch.Tensor, filters: torch.Tensor) -> Iterator[slice]:
    """Ranges of fields whose broadcast against all filters stays under EAGER_BLOCK_ELEMENTS."""
    groups, rows, taps = fields.shape
    step = max(1, EAGER_BLOCK_ELEMENTS // (groups * filters.shape[1] * taps))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def _differences(fields: torch.Tensor, filters: torch.Tensor, rows: slice) -> torch.Tensor:
    """p - w for a block of fields against every filter: (G, m, O, K)."""
    return fields[:, rows, None, :] - filters[:, None, :, :]


def _sign_times(differences: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.where(differences > 0, values, torch.where(differences < 0, -values, 0))


@triton_twin
def l1_distances(fields: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``-sum_k |p_k - w_k|`` for every field against every filter: (G, M, O).

    >>> import torch
    >>> l1_distances(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 0.0], [1.0, 4.0]]]))
    tensor([[[-3., -2.]]])
    """
    function = _native_function("l1_forward", fields)
    if function is not None:
        return _native_forward("l1_forward", function, fields, filters)
    output = fields.new_empty((fields.shape[0], fields.shape[1], filters.shape[1]))
    for rows in _blocks(fields, filters):
        output[:, rows] = -_differences(fields, filters, rows).abs().sum(-1)
    return output


@triton_twin
def l1_backward(
    fields: torch.Tensor,
    filters: torch.Tensor,
    grad: torch.Tensor,
    *,
    adder: bool = False,
    filter_sum: FilterGradientSum | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`l1_distances`: exact (sign) or, with ``adder``, AdderNet's clipped field rule.

    Exact: d/dp = -sign(p - w), d/dw = sign(p - w). With ``adder`` the field gradient uses
    clip(p - w, -1, 1) in place of the sign and the filter gradient is left to the caller (None).
    With ``filter_sum`` the filter gradient is added into it (None returned in its place).
    """
    function = _native_function("l1_backward", fields)
    if function is not None:
        return _native_backward(
            "l1_backward",
            function,
            fields,
            filters,
            grad,
            int(adder),
            filter_grads=not adder,
            filter_sum=filter_sum,
        )
    grad_fields = torch.empty_like(fields)
    grad_filters = None if adder else torch.zeros_like(filters)
    for rows in _blocks(fields, filters):
        differences = _differences(fields, filters, rows)
        outer = grad[:, rows, :, None]
        terms = differences.clamp(-1, 1) * outer if adder else _sign_times(differences, outer)
        grad_fields[:, rows] = -terms.sum(2)
        if grad_filters is not None:
            grad_filters += terms.sum(1)
    return handed_back(grad_fields, grad_filters, filter_sum)


@triton_twin
def tropical(fields: torch.Tensor, filters: torch.Tensor, *, minimum: bool) -> torch.Tensor:
    """``max_k (p_k + w_k)``, or with ``minimum`` ``min_k (p_k - w_k)``: (G, M, O).

    >>> import torch
    >>> p, w = torch.tensor([[[1.0, 5.0]]]), torch.tensor([[[3.0, 0.0]]])
    >>> tropical(p, w, minimum=False), tropical(p, w, minimum=True)
    (tensor([[[5.]]]), tensor([[[-2.]]]))
    """
    function = _native_function("tropical_forward", fields)
    if function is not None:
        # the loops check the inputs for NaN and inf themselves, a few fields at a time
        return _native_forward("tropical_forward", function, fields, filters, int(minimum))
    output = fields.new_empty((fields.shape[0], fields.shape[1], filters.shape[1]))
    for rows in _blocks(fields, filters):
        output[:, rows] = _tropical_block(fields, filters, rows, minimum)[0]
    return output


def _tropical_block(
    fields: torch.Tensor, filters: torch.Tensor, rows: slice, minimum: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if minimum:
        return _differences(fields, filters, rows).min(-1)
    return (fields[:, rows, None, :] + filters[:, None, :, :]).max(-1)


@triton_twin
def tropical_backward(
    fields: torch.Tensor,
    filters: torch.Tensor,
    grad: torch.Tensor,
    *,
    minimum: bool,
    filter_sum: FilterGradientSum | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`tropical`: the winning tap (the first, on a tie) takes the whole gradient.

    With ``filter_sum`` the filter gradient is added into it (None returned in its place)."""
    function = _native_function("tropical_backward", fields)
    if function is not None:
        return _native_backward(
            "tropical_backward",
            function,
            fields,
            filters,
            grad,
            int(minimum),
            outputs_innermost=True,
            filter_sum=filter_sum,
        )
    groups, _, taps = fields.shape
    grad_fields = torch.zeros_like(fields)
    grad_filters = torch.zeros_like(filters)
    flat_filters = grad_filters.view(groups, -1)
    offsets = torch.arange(filters.shape[1], device=fields.device) * taps
    for rows in _blocks(fields, filters):
        taps_won = _tropical_block(fields, filters, rows, minimum)[1]
        block_grad = grad[:, rows]
        grad_fields[:, rows] = grad_fields[:, rows].scatter_add(-1, taps_won, block_grad)
        filter_terms = -block_grad if minimum else block_grad
        flat_index = (taps_won + offsets).reshape(groups, -1)
        flat_filters.scatter_add_(1, flat_index, filter_terms.reshape(groups, -1))
    return handed_back(grad_fields, grad_filters, filter_sum)


@triton_twin
def power_sums(fields: torch.Tensor, filters: torch.Tensor, p: float) -> torch.Tensor:
    """``sum_k |p_k - w_k|^p`` for every field against every filter: (G, M, O).

    >>> import torch
    >>> power_sums(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 0.0]]]), 3.0)
    tensor([[[9.]]])
    """
    function = _native_function("lp_forward", fields)
    if function is not None:
        return _native_forward("lp_forward", function, fields, filters, float(p))
    output = fields.new_empty((fields.shape[0], fields.shape[1], filters.shape[1]))
    for rows in _blocks(fields, filters):
        output[:, rows] = _magnitude_power(_differences(fields, filters, rows), p).sum(-1)
    return output


def _magnitude_power(differences: torch.Tensor, power: float) -> torch.Tensor:
    """|e|^power with 0 at e = 0 for every power (as the native loops define it); NaN stays NaN."""
    magnitude = differences.abs()
    return torch.where(magnitude == 0, 0, magnitude.pow(power))


@triton_twin
def power_sums_backward(
    fields: torch.Tensor,
    filters: torch.Tensor,
    scale: torch.Tensor,
    p: float,
    filter_sum: FilterGradientSum | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of ``-sum scale * S / p`` (S from :func:`power_sums`), scale (G, M, O) held fixed.

    Field: -sum_o scale |e|^(p-1) sign(e); filter: the same sum over fields with a + sign (e = p - w).
    With ``filter_sum`` the filter gradient is added into it (None returned in its place).
    """
    function = _native_function("lp_backward", fields)
    if function is not None:
        return _native_backward(
            "lp_backward", function, fields, filters, scale, float(p), filter_sum=filter_sum
        )
    grad_fields = torch.empty_like(fields)
    grad_filters = torch.zeros_like(filters)
    for rows in _blocks(fields, filters):
        differences = _differences(fields, filters, rows)
        # sign(e) is 0 at e = 0 and at NaN, as in torch's formula: a NaN e gives a NaN term
        # through |e|^(p-1) but at p = 1 (as the native loops)
        terms = scale[:, rows, :, None] * _magnitude_power(differences, p - 1) * differences.sign()
        grad_fields[:, rows] = -terms.sum(2)
        grad_filters += terms.sum(1)
    return handed_back(grad_fields, grad_filters, filter_sum)
