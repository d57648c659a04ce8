"""The variant protocol: how one chunk of receptive fields meets the filters.

A variant is the only thing that changes between the standard convolution and its relatives.
The engine hands it a chunk of fields and the filters, per group, and gets one number per
(field, filter) pair back; everything else (padding, grouping, chunking under a memory budget,
bias, layout, the backward pass) is the engine's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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

    A variant that is a function of the dot product p . w and the norms (see
    ``product_backward``) may instead hand the engine the derivative per (field, filter) pair and
    let it take the matrix products, without copying fields; one whose derivative follows from its
    own value reads the forward's output rather than recomputing it (``backward_uses_output``):

    >>> class Exponential(Variant):
    ...     name = "exponential"
    ...     backward_uses_output = True
    ...     def contract(self, fields, filters):
    ...         return torch.bmm(fields, filters.mT).exp()
    ...     def product_backward(self, grad, filters, output):
    ...         return grad * output, None, None  # d exp(s) / d s = exp(s); no norm terms
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
    #: the kinds of dtype the formula is defined for, among "floating", "complex", "integer" and
    #: "bool"; the engine refuses the others up front (see ``anyconv.variants.checks``)
    dtype_kinds: ClassVar[tuple[str, ...]] = ("floating",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # a subclass that changes the formula or its backward must not inherit a backward
        # derived for its parent's formula, nor the flags that describe that backward
        own = vars(cls)
        if ("contract" in own or "contract_backward" in own) and "product_backward" not in own:
            cls.product_backward = None
        if "contract" in own and "contract_and_keep" not in own:
            cls.contract_and_keep = None
        if "contract_backward" in own or "product_backward" in own:
            for flag in ("backward_uses_output", "backward_uses_kept", "backward_uses_field_norms"):
                if flag not in own:
                    setattr(cls, flag, False)

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
    contract_backward: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] | None = None

    #: A variant whose output is a function y = f(s, |p|, |w|) of the dot product s = p . w and
    #: the norms of field and filter only (dot, l2, rbf, polynomial, cosine, sharpened_cosine)
    #: may define instead ``product_backward(grad, filters, **options) -> (pair_scale,
    #: field_radial, filter_radial)``, (G, M, Og), (G, M, 1) or None, (G, Og, 1) or None, such
    #: that the gradients are
    #:
    #:     d loss / d p_m = sum_o pair_scale[m, o] w_o - field_radial[m] p_m
    #:     d loss / d w_o = sum_m pair_scale[m, o] p_m - filter_radial[o] w_o
    #:
    #: (every such f has gradients of this form: ds/dp = w, d|p|/dp = p / |p|). The engine then
    #: needs no fields for the backward: at stride 1 it takes both sums as matrix products on
    #: shifted views of the input, one per kernel tap, and folds nothing back (see
    #: ``anyconv.engine.product_gradients``). What the method reads besides ``grad`` (G, M, Og)
    #: and ``filters`` (G, Og, Kg) it asks for with the flags below, as keyword arguments.
    product_backward: (
        Callable[..., tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] | None
    ) = None

    #: True when ``contract_backward`` or ``product_backward`` wants the chunk's forward output
    #: (before bias): ``contract_backward(fields, filters, grad, output, **options)``,
    #: ``product_backward(grad, filters, output=output, **options)``; ``output`` is a (G, M, Og)
    #: view of the saved output, maybe non-contiguous, that it must not write into. The cost, when
    #: autograd records the call: the engine keeps its output for the backward, one output-sized
    #: tensor more when a bias is given (added to a copy, not while writing) or the caller drops
    #: the output, none otherwise; and, as after ``torch.exp``, changing that output in place
    #: (``nn.ReLU(inplace=True)`` straight after a layer without bias) makes the backward raise
    #: torch's "modified by an inplace operation" error. When option tensors need gradients the
    #: engine differentiates ``contract`` and keeps nothing. A subclass that redefines a backward
    #: is reset to False.
    backward_uses_output: ClassVar[bool] = False
    #: True when ``product_backward`` wants ``kept=``, a (G, M, Og) view of a per-pair value the
    #: forward computed and its output does not give back (``polynomial`` of even degree keeps
    #: s + c, whose sign its output lost): the forward then calls ``contract_and_keep(fields,
    #: filters, **options) -> (output, kept)`` in place of ``contract`` and the engine keeps
    #: ``kept``, one output-sized tensor, for the backward (only when autograd records the call)
    backward_uses_kept: ClassVar[bool] = False
    contract_and_keep: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    #: True when ``product_backward`` wants ``field_norms=`` |p| (G, M, 1)
    backward_uses_field_norms: ClassVar[bool] = False

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
