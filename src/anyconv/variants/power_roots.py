"""The root of ``lp``'s sums where the engine's tap loops took them (``engine/tap_loops.py``).

The loops give -S, S = sum |p - w|^p, tap by tap; ``lp`` is -S^(1/p), and the loops' backward
of S takes the output's gradient times S^(1/p - 1) / p. For a whole p from 2 to 4 both are square
and cube roots: torch's ``sqrt`` and ``rsqrt``, and a cube root vectorised through glibc's
libmvec (``fused_power.cpp``) where torch has none: its ``pow`` with an exponent of 1/3 calls the
scalar power function for every element, which took several times as long as the loops' sums on
a depthwise layer. Where the native library is not built, ``pow`` takes the cube roots.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import torch

from .fused import NATIVE_DTYPES
from .native import load_library, native_enabled

_SOURCE = "fused_power.cpp"
_POINTER, _SIZE, _FLAG = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
#: elements per thread below which a second thread costs more than it saves
_PER_THREAD = 2**15
#: sums below this many elements take torch's pow for S^(-2/3): the cube roots' native call, a
#: copy and two passes cost more there (4096 elements: 9 us against pow's 14; 1024: 7.5 against 5.6)
MIN_CUBE_ROOTS = 2**11


def negated_root_(sums: torch.Tensor, p: float) -> torch.Tensor:
    """``sums`` (-S, as the loops give it, p > 0) becomes -S^(1/p) in place; returned.

    >>> root = negated_root_(torch.tensor([-8.0, -27.0, 0.0]), 3)
    >>> torch.allclose(root, torch.tensor([-2.0, -3.0, 0.0]))
    True
    >>> negated_root_(torch.tensor([-4.0]), 0.5)
    tensor([-16.])
    """
    if p == 3:
        # the cube root is odd: -S^(1/3) is the cube root of -S
        return cube_root(sums, out=sums)
    if p not in (2, 4):
        return sums.neg_().pow_(1 / p).neg_()
    roots = sums.neg_().sqrt_()
    return (roots.sqrt_() if p == 4 else roots).neg_()


def root_slope(sums: torch.Tensor, grad: torch.Tensor, p: float) -> torch.Tensor:
    """``grad`` times S^(1/p - 1) / p from ``sums`` (-S): the gradient of S for an output gradient
    ``grad`` of -S^(1/p); for p > 1 infinite where S is 0 and 0 where S is infinite, as torch's
    ``pow``.

    >>> root_slope(torch.tensor([-4.0, -16.0]), torch.tensor([1.0, 2.0]), 2)
    tensor([0.2500, 0.2500])
    """
    return root_factor_(sums.neg(), p).mul_(grad).div_(p)


def root_factor_(sums: torch.Tensor, p: Any) -> torch.Tensor:
    """S^(1/p - 1) of the sums S >= 0, in place; returned: the factor of lp's slope in S, whose
    output -S^(1/p) changes by -S^(1/p - 1) / p per unit of S. For a whole p from 2 to 4 from
    square and cube roots (torch's ``pow`` with these exponents takes a scalar power function
    per element); infinite where S is 0, 0 where S is infinite, NaN stays NaN, as ``pow``.

    >>> root_factor_(torch.tensor([8.0, 0.0, float("inf")]), 3)
    tensor([0.2500,    inf, 0.0000])
    >>> torch.allclose(root_factor_(torch.tensor([16.0]), 4), torch.tensor([16.0 ** -0.75]))
    True
    """
    if type(p) not in (int, float) or p not in (2, 3, 4) or (p == 3 and sums.numel() < MIN_CUBE_ROOTS):
        return sums.pow_(1 / p - 1)
    if p == 3:
        # S^(-2/3) = 1 / cbrt(S)^2
        roots = cube_root(sums, out=sums)
        return roots.mul_(roots).reciprocal_()
    if p == 2:
        return sums.rsqrt_()
    # S^(-3/4) = S^(-1/2) S^(-1/4)
    quarter = sums.sqrt().rsqrt_()
    return sums.rsqrt_().mul_(quarter)


def cube_root(values: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The cube root of every value (odd: negative for negative values), into ``out`` if given.

    >>> cube_root(torch.tensor([-8.0, 0.0, 27.0]))
    tensor([-2.,  0.,  3.])
    >>> cube_root(torch.tensor([[-8.0, 0.0, 27.0, 64.0]])[:, 1:3])
    tensor([[0., 3.]])
    """
    function = _function(values)
    if function is None:
        # in float32 at least: torch's bfloat16 pow rounds the exponent 1/3 to bfloat16 too
        wide = values.to(torch.promote_types(values.dtype, torch.float32))
        roots = wide.abs().pow_(1 / 3).mul_(wide.sign()).to(values.dtype)
        return roots if out is None else out.copy_(roots)
    if not _dense(values) or (out is not None and out.stride() != values.stride()):
        # a slice of a wider buffer (the fields path's sums): its roots laid out densely, a copy
        # away from ``out``, where pow took a scalar power function per element
        roots = cube_root(values.contiguous())
        return roots if out is None else out.copy_(roots)
    if out is None:
        out = torch.empty_like(values)
    function(values.data_ptr(), out.data_ptr(), values.numel(), _threads(values))
    return out


def _dense(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s elements fill its memory in some order of its dimensions (channels
    first or last, or a transposed view), so that an elementwise pass may walk the memory as a
    flat array into a tensor of the same strides.

    >>> _dense(torch.ones(2, 3, 4).transpose(1, 2)), _dense(torch.ones(4, 6)[:, :3])
    (True, False)
    """
    if tensor.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted(
        (stride, size) for size, stride in zip(tensor.shape, tensor.stride()) if size > 1
    ):
        if stride != expected:
            return False
        expected *= size
    return True


def _threads(tensor: torch.Tensor) -> int:
    return max(1, min(torch.get_num_threads(), tensor.numel() // _PER_THREAD))


def _function(tensor: torch.Tensor) -> Any:
    """The native cube roots for ``tensor``'s dtype, None where they are not built or enabled."""
    if tensor.device.type != "cpu" or tensor.dtype not in NATIVE_DTYPES or not native_enabled():
        return None
    return _bound(NATIVE_DTYPES[tensor.dtype])


@cache
def _bound(part: str) -> Any:
    library = load_library(_SOURCE)
    symbol = f"lp_cbrt_{part}"
    # a compiler without _Float16 builds no float16 roots
    if library is None or not hasattr(library, symbol):
        return None
    function = getattr(library, symbol)
    function.argtypes = [_POINTER, _POINTER, _SIZE, _FLAG]
    function.restype = None
    return function
