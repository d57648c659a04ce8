"""The variant protocol: how one chunk of receptive fields meets the filters.

A variant is the only thing that changes between the standard convolution and its relatives.
The engine hands it a chunk of fields and the filters, per group, and gets one number per
(field, filter) pair back; everything else (padding, grouping, chunking under a memory budget,
bias, layout, the backward pass) is the engine's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..errors import ArgumentError, invalid

Option = float | torch.Tensor


class Variant:
    """Base class of every variant; subclass it and write :meth:`contract`.

    ``contract(fields, filters, **options)`` takes fields (G, M, Kg), filters (G, Og, Kg) and
    returns (G, M, Og): G groups, M receptive fields, Og filters per group, Kg = in_channels
    // groups * prod(kernel_size) taps. Options are floats or tensors that broadcast against
    (G, 1, Og) (per output channel). Autograd through ``contract`` gives the backward, one
    chunk at a time; a variant may also define ``contract_backward`` for speed or memory.

    >>> import torch
    >>> class Manhattan(Variant):
    ...     name = "manhattan"
    ...     def contract(self, fields, filters):
    ...         return -torch.cdist(fields, filters, p=1)
    >>> Manhattan().contract(torch.ones(1, 2, 3), torch.zeros(1, 4, 3)).shape
    torch.Size([1, 2, 4])

    A ``contract_backward`` that needs the chunk's own output (a nonlinearity of a matrix
    product, whose derivative follows from its value) sets ``backward_uses_output = True`` and
    takes it as its fourth argument instead of recomputing it (see ``backward_uses_output``):

    >>> class Exponential(Variant):
    ...     name = "exponential"
    ...     backward_uses_output = True
    ...     def contract(self, fields, filters):
    ...         return torch.bmm(fields, filters.mT).exp()
    ...     def contract_backward(self, fields, filters, grad, output):
    ...         scale = grad * output  # d exp(s) / d s = exp(s): no third matrix product
    ...         return torch.bmm(scale, filters), torch.bmm(scale.mT, fields)
    >>> import anyconv
    >>> x = torch.randn(1, 2, 5, 5, requires_grad=True)
    >>> anyconv.generalized_conv(x, torch.randn(3, 2, 3, 3) / 9, Exponential).sum().backward()
    >>> x.grad.shape
    torch.Size([1, 2, 5, 5])
    """

    name: ClassVar[str] = "variant"
    #: option name -> default value; every option must be listed here
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: options that may be tensors with one value per output channel (learnable in the papers)
    per_channel: ClassVar[tuple[str, ...]] = ()

    #: True only when ``contract`` is exactly ``sum(p * w)`` with no options: the engine may then
    #: skip copying the fields and multiply shifted views of the input, one product per kernel
    #: tap (anyconv.engine.shifted_views). A subclass that redefines ``contract`` is reset to False.
    tapwise: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "contract" in vars(cls) and "tapwise" not in vars(cls):
            cls.tapwise = False
        if "contract_backward" in vars(cls) and "backward_uses_output" not in vars(cls):
            cls.backward_uses_output = False

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "no options"
            raise ArgumentError(
                f"{unknown[0]}={options[unknown[0]]!r} is not an option of variant "
                f"{self.name!r}: it takes {valid}"
            )
        self.options: dict[str, Any] = {**self.defaults, **options}
        for option, value in self.options.items():
            if isinstance(value, torch.Tensor):
                if option not in self.per_channel:
                    raise invalid(
                        option, value, f"a number: option {option!r} of {self.name!r} is not per channel"
                    )
                if value.dim() > 1:
                    raise invalid(
                        option, tuple(value.shape), "a number or a 1-D tensor, one value per output channel"
                    )
            self.check_option(option, value)

    def check_option(self, option: str, value: Option) -> None:
        """Raise a clear error for an invalid option value; the base accepts everything."""

    def contract(self, fields: torch.Tensor, filters: torch.Tensor, **options: Option) -> torch.Tensor:
        """Return (G, M, Og): the output of every field of the chunk against every filter."""
        raise NotImplementedError(f"variant {self.name!r} must define contract()")

    #: a variant may define ``contract_backward(fields, filters, grad, **options) ->
    #: (grad_fields, grad_filters)``; when it is None the engine differentiates ``contract``.
    contract_backward = None

    #: True when ``contract_backward`` wants the chunk's forward output (before bias): it is then
    #: called as ``contract_backward(fields, filters, grad, output, **options)``, ``output`` a
    #: (G, M, Og) view of the saved output, maybe non-contiguous, that it must not write into. The
    #: cost, when autograd records the call: the engine keeps its output for the backward, one
    #: output-sized tensor more when a bias is given (added to a copy, not while writing) or the
    #: caller drops the output, none otherwise; and, as after ``torch.exp``, changing that output
    #: in place (``nn.ReLU(inplace=True)`` straight after a layer without bias) makes the backward
    #: raise torch's "modified by an inplace operation" error. When option tensors need gradients
    #: the engine differentiates ``contract`` and keeps nothing. A subclass that redefines
    #: ``contract_backward`` is reset to False.
    backward_uses_output: ClassVar[bool] = False

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        """Elements a chunk allocates beyond its fields and output; the engine sizes chunks by it.

        The default suits variants that work through matrix products; a variant that broadcasts
        fields against filters says so by returning ``fields_per_chunk * filters * taps``.
        """
        return 0

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={_short(value)}" for key, value in self.options.items())
        return f"{type(self).__name__}({options})"


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={tuple(value.shape)})"
    return repr(value)
