"""Whether torch's machinery watches a call: then the engine takes the routes those tools see
through (custom operators, composed differentiable steps) instead of its eager shortcuts; and
whether autograd records it."""

from __future__ import annotations

import torch

from ..functional.transforms import transformed

#: the tensor types no machinery wraps
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def machinery_watches(*tensors: torch.Tensor | None) -> bool:
    """Whether torch's machinery watches a call on ``tensors`` (None is ignored): torch.compile or
    torch.export, torch.jit.trace, torch.func's transforms, autocast, a dispatch or function mode, a tensor
    subclass (fake, functional) or a tensor on the meta device among them. Then the fields path
    calls the custom operator ``anyconv::generalized_conv`` (else the plain Function computes the
    same numbers with less overhead), and the eager shortcuts (the folded transpose, the loops'
    cosine) step aside.

    >>> import torch
    >>> machinery_watches(torch.ones(2), None)
    False
    """
    if (
        torch.compiler.is_compiling()
        # torch.jit.trace records torch's operators only: a native loop's output would be traced as
        # the empty tensor it was written into
        or torch._C._is_tracing()
        or transformed()
        or torch._C._len_torch_dispatch_stack() > 0
        or torch._C._is_torch_function_mode_enabled()
    ):
        return True
    # a plain loop, each device asked about autocast once: this runs on every call
    device = None
    for tensor in tensors:
        if tensor is None:
            continue
        if type(tensor) not in _PLAIN:
            return True
        if tensor.device.type != device:
            device = tensor.device.type
            if device == "meta":
                # shapes only: the operators' fake kernels answer, the eager paths would read data
                return True
            if torch.is_autocast_enabled(device):
                return True
    return False


def records_graph(*tensors: object) -> bool:
    """Whether autograd records a call on ``tensors`` (others, None among them, are ignored): if
    not, a path may run its forward alone, without an autograd Function, and write into the
    tensors it made itself.

    >>> import torch
    >>> records_graph(torch.ones(2, requires_grad=True), 1.0), records_graph(torch.ones(2), None)
    (True, False)
    """
    return torch.is_grad_enabled() and any(
        isinstance(tensor, torch.Tensor) and tensor.requires_grad for tensor in tensors
    )
