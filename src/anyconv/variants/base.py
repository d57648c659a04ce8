"""The variant protocol: how one chunk of receptive fields meets the filters, and its backward.

A variant is the only thing that changes between the standard convolution and its relatives.
The engine hands it a chunk of fields and the filters, per group, and gets one number per
(field, filter) pair back; everything else (padding, grouping, chunking under a memory budget,
bias, layout, running the backward) is the engine's. There are two kinds: a plain
:class:`Variant`, whose backward is autograd through ``contract`` or its own
``contract_backward``, and a :class:`ProductVariant`, a function of p . w and the norms whose
backward the engine takes as matrix products from the per-pair terms of ``product_backward``.
A backward belongs to the formula it was derived for: a subclass that changes the formula and
would inherit its parent's backward is refused when the class is made (see ``check_protocol``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from ..errors import ArgumentError, invalid

Option = float | torch.Tensor


class Variant:
    """A variant whose backward is autograd through :meth:`contract`, or its own ``contract_backward``.

    ``contract(fields, filters, **options)`` takes fields (G, M, Kg), filters (G, Og, Kg) and
    returns (G, M, Og): G groups, M receptive fields, Og filters per group, Kg = in_channels
    // groups * prod(kernel_size) taps. Options are floats or tensors that broadcast against
    (G, 1, Og) (per output channel). Autograd through ``contract`` gives the backward, one
    chunk at a time:

    >>> import torch
    >>> class Manhattan(Variant):
    ...     name = "manhattan"
    ...     def contract(self, fields, filters):
    ...         return -torch.cdist(fields, filters, p=1)
    >>> Manhattan().contract(torch.ones(1, 2, 3), torch.zeros(1, 4, 3)).shape
    torch.Size([1, 2, 4])

    For speed or memory a variant may write its backward, ``contract_backward(fields, filters,
    grad, **options) -> (grad_fields, grad_filters)``; with ``reads = frozenset({"output"})`` it
    is also handed the chunk's forward output (before bias) as ``output=``, rather than
    recomputing it:

    >>> class Exponential(Variant):
    ...     name = "exponential"
    ...     reads = frozenset({"output"})
    ...     def contract(self, fields, filters):
    ...         return torch.bmm(fields, filters.mT).exp()
    ...     def contract_backward(self, fields, filters, grad, output):
    ...         scale = grad * output  # d exp(s) / ds = exp(s)
    ...         return torch.bmm(scale, filters), torch.bmm(scale.mT, fields)
    >>> import anyconv
    >>> x = torch.randn(1, 2, 5, 5, requires_grad=True)
    >>> anyconv.generalized_conv(x, torch.randn(3, 2, 3, 3) / 9, Exponential).sum().backward()
    >>> x.grad.shape
    torch.Size([1, 2, 5, 5])

    ``output`` is a (G, M, Og) view of the saved output, maybe non-contiguous, that the backward
    must not write into. The cost, when autograd records the call: the engine keeps its output
    for the backward, one output-sized tensor more when a bias is given (added to a copy, not
    while writing) or the caller drops the output, none otherwise; and, as after ``torch.exp``,
    changing that output in place (``nn.ReLU(inplace=True)`` straight after a layer without
    bias) makes the backward raise torch's "modified by an inplace operation" error. When option
    tensors need gradients the engine differentiates ``contract`` and keeps nothing.
    """

    name: ClassVar[str] = "variant"
    #: option name -> default value; every option must be listed here
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: options that may be tensors with one value per output channel (learnable in the papers)
    per_channel: ClassVar[tuple[str, ...]] = ()
    #: the kinds of dtype the formula is defined for, among "floating", "complex", "integer" and
    #: "bool"; the engine refuses the others up front (see ``anyconv.variants.checks``)
    dtype_kinds: ClassVar[tuple[str, ...]] = ("floating",)
    #: what the backward is handed besides fields, filters, grad and options, by keyword (see
    #: ``readable``); an instance may narrow it to what its options need
    reads: frozenset[str] = frozenset()
    #: what a backward of this kind can read: ``"output"``; or ``"filter_sum"``, a
    #: :class:`~anyconv.variants.filter_sums.FilterGradientSum` of the whole backward to add the
    #: chunk's filter gradient into (returning None for it), None when no filter gradient is needed
    readable: ClassVar[frozenset[str]] = frozenset({"output", "filter_sum"})
    #: the methods that state the formula, and the one that states its backward: a backward
    #: defined above the formula's class was derived for another formula (see check_protocol)
    formula_methods: ClassVar[tuple[str, ...]] = ("contract",)
    backward_method: ClassVar[str] = "contract_backward"

    #: the variant's own backward, ``contract_backward(fields, filters, grad, **reads, **options)
    #: -> (grad_fields, grad_filters)``, or None: autograd differentiates ``contract``
    contract_backward: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__ != __name__:  # the protocol's own classes, ProductVariant, are its rules
            check_protocol(cls)

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

    def contract(
        self, fields: torch.Tensor, filters: torch.Tensor, *args: Any, **options: Any
    ) -> torch.Tensor:
        """Return (G, M, Og): the output of every field of the chunk against every filter."""
        raise NotImplementedError(f"variant {self.name!r} must define contract()")

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        """Elements a chunk allocates beyond its fields and output; the engine sizes chunks by it.

        The default suits variants that work through matrix products; a variant that broadcasts
        fields against filters says so by returning ``fields_per_chunk * filters * taps``.
        """
        return 0

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={_short(value)}" for key, value in self.options.items())
        return f"{type(self).__name__}({options})"

    def __fx_create_arg__(self, tracer: Any) -> Any:
        """A torch.fx graph's argument for this variant (an object no graph's code can spell): an
        attribute of the traced module, read by a ``get_attr`` node; with tensor options, a call of
        :func:`with_tensor_options` that hands it the graph's own tensors (a module's parameters
        stay the graph's: in its ``parameters()`` and ``state_dict``, trained and saved with it).

        >>> import torch, anyconv
        >>> graph = torch.fx.symbolic_trace(anyconv.nn.GeneralizedConv2d(2, 3, 3, variant="l1"))
        >>> [node.op for node in graph.graph.nodes]
        ['placeholder', 'get_attr', 'get_attr', 'get_attr', 'call_function', 'output']
        """
        # a module's variant carries its parameters as the trace hands them over: proxies
        tensors = {
            option: value
            for option, value in self.options.items()
            if isinstance(value, (torch.Tensor, torch.fx.Proxy))
        }
        name = tracer.get_fresh_qualname("_anyconv_variant_")
        # the graph's attribute holds no tensor (nor proxy): the call below hands the variant its own
        setattr(tracer.root, name, with_tensor_options(self, dict.fromkeys(tensors)))
        node = tracer.create_node("get_attr", name, (), {})
        if not tensors:
            return node
        arguments = (node, tracer.create_arg(tensors))
        call = tracer.create_node("call_function", with_tensor_options, arguments, {})
        # as torch.fx.wrap marks its calls: the graph's code then wraps the function too, so that a
        # trace of that code (torch.load of a saved graph retraces it) records it as one node
        call.meta["is_wrapped"] = True
        return call


def with_tensor_options(variant: Variant, tensors: Mapping[str, Any]) -> Variant:
    """A copy of ``variant`` with its tensor options replaced by ``tensors`` (a module's or a traced
    graph's parameters as they are at the call), unchecked, as they were checked when made.

    >>> import torch
    >>> from anyconv.variants import RBF
    >>> with_tensor_options(RBF(gamma=torch.ones(2)), {"gamma": torch.full((2,), 3.0)}).options["gamma"]
    tensor([3., 3.])
    """
    copied = copy.copy(variant)
    copied.options = {**variant.options, **tensors}
    return copied


class ProductVariant(Variant):
    """A variant y = f(s, |p|, |w|) of the dot product s = p . w and the norms, and its backward.

    Its backward is ``product_backward(grad, filters, **reads, **options) -> (pair_scale,
    field_radial, filter_radial)``, (G, M, Og), (G, M, 1) or None, (G, Og, 1) or None, such that
    the gradients are

        d loss / d p_m = sum_o pair_scale[m, o] w_o - field_radial[m] p_m
        d loss / d w_o = sum_m pair_scale[m, o] p_m - filter_radial[o] w_o

    (every such f has gradients of this form: ds/dp = w, d|p|/dp = p / |p|). The engine takes
    both sums as matrix products: at stride 1 on shifted views of the input, one per kernel tap,
    with no field copied and none folded back (``anyconv.engine.product_gradients``). What it
    reads besides ``grad`` (G, M, Og) and ``filters`` (G, Og, Kg) it lists in ``reads``:
    ``"output"`` (the chunk's output before bias, as for :class:`Variant`), ``"field_norms"``
    (|p|, (G, M, 1), from tap sums of the squared input) and ``"kept"`` (a per-pair value the
    forward computed and its output does not give back, such as s + c for ``polynomial`` of even
    degree: the forward then calls ``contract_and_keep(fields, filters, **options) -> (output,
    kept)`` in place of ``contract``, and the engine keeps ``kept``, one output-sized tensor,
    only when autograd records the call).

    >>> import torch
    >>> class Exponential(ProductVariant):
    ...     name = "exponential"
    ...     reads = frozenset({"output"})  # d exp(s) / ds = exp(s): read it, do not recompute it
    ...     def contract(self, fields, filters):
    ...         return torch.bmm(fields, filters.mT).exp()
    ...     def product_backward(self, grad, filters, output):
    ...         return grad * output, None, None  # no norm terms
    >>> import anyconv
    >>> x = torch.randn(1, 2, 5, 5, requires_grad=True)
    >>> anyconv.generalized_conv(x, torch.randn(3, 2, 3, 3) / 9, Exponential).sum().backward()
    >>> x.grad.shape
    torch.Size([1, 2, 5, 5])
    """

    readable = frozenset({"output", "kept", "field_norms"})
    formula_methods = ("contract", "contract_and_keep")
    backward_method = "product_backward"

    def product_backward(
        self, grad: torch.Tensor, filters: torch.Tensor, *args: Any, **reads_and_options: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The per-pair and radial terms of the gradients (see the class docstring)."""
        raise NotImplementedError(f"variant {self.name!r} must define product_backward()")

    def contract_and_keep(
        self, fields: torch.Tensor, filters: torch.Tensor, *args: Any, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The output and the per-pair value its backward reads as ``kept`` (when it reads one)."""
        raise NotImplementedError(f"variant {self.name!r} reads 'kept' and must define contract_and_keep()")

    def gradient_centre(self, filters: torch.Tensor) -> torch.Tensor | None:
        """A centre c (G, 1, Kg) to take the gradients' products on p - c and w - c, or None.

        Only for a formula of p - w (its radial terms the sums of the pair scales over filters and
        over fields), whose gradients do not change when p and w move together: products on data
        seen from a nearby centre do not cancel far from zero. The base takes none.
        """
        return None


def check_protocol(cls: type[Variant]) -> None:
    """Refuse, when ``cls`` is made, a backward derived for another formula or reading the wrong things.

    The backward (``contract_backward`` or ``product_backward``) must be defined in the class that
    states the formula (``contract``, ``contract_and_keep``) or below it; what was derived along
    with it (``gradient_centre``, a ``contract_and_keep`` that it reads) likewise; and ``reads``
    must name what the backward takes.
    """
    formula = _owner(cls, cls.formula_methods)
    backward = _owner(cls, (cls.backward_method,))
    if getattr(cls, cls.backward_method) is not None and _above(cls, backward, formula):
        fix = (
            "or derive it from Variant to let autograd differentiate contract()"
            if issubclass(cls, ProductVariant)
            else "or set contract_backward = None to let autograd differentiate contract()"
        )
        raise TypeError(
            f"variant class {cls.__name__} redefines its formula ({_defined(formula, cls.formula_methods)}) "
            f"but would inherit {cls.backward_method}() from {backward.__name__}, derived for "
            f"{backward.__name__}'s formula: define {cls.backward_method}() in {cls.__name__} {fix}"
        )
    unknown = sorted(set(cls.reads) - cls.readable)
    if unknown:
        raise TypeError(
            f"variant class {cls.__name__} reads {unknown[0]!r}: its backward can read "
            f"{', '.join(map(repr, sorted(cls.readable)))}"
        )
    if issubclass(cls, ProductVariant):
        _check_product(cls)
    # filter_sum goes to a contract_backward only: a subclass of l1 or max_plus that takes
    # autograd (contract_backward = None) may keep its parent's reads
    elif cls.reads - {"filter_sum"} and cls.contract_backward is None:
        raise TypeError(
            f"variant class {cls.__name__} reads {sorted(cls.reads)} but has no contract_backward(): "
            "autograd through contract() reads nothing; define contract_backward() or drop reads"
        )
    _check_reads_signature(cls)


def _check_product(cls: type[ProductVariant]) -> None:
    if cls.contract_backward is not None:
        raise TypeError(
            f"variant class {cls.__name__} is a ProductVariant, whose backward is product_backward(): "
            "define that instead of contract_backward(), or derive the class from Variant"
        )
    backward = _owner(cls, ("product_backward",))
    centre = _owner(cls, ("gradient_centre",))
    if centre is not ProductVariant and _above(cls, centre, backward):
        raise TypeError(
            f"variant class {cls.__name__} redefines product_backward() but would inherit "
            f"gradient_centre() from {centre.__name__}, derived with {centre.__name__}'s backward: "
            f"define gradient_centre() in {cls.__name__} (return None to take no centre)"
        )
    if "kept" in cls.reads:
        keeper, contract = _owner(cls, ("contract_and_keep",)), _owner(cls, ("contract",))
        if keeper is ProductVariant or _above(cls, keeper, contract):
            raise TypeError(
                f"variant class {cls.__name__} reads 'kept' but its contract_and_keep() is not "
                f"defined for its contract() (in {contract.__name__}): define contract_and_keep()"
            )


def _check_reads_signature(cls: type[Variant]) -> None:
    """``reads`` names parameters the backward takes, and every required one it takes of those."""
    backward = getattr(cls, cls.backward_method)
    if backward is None or _owner(cls, (cls.backward_method,)) in (Variant, ProductVariant):
        return
    parameters = inspect.signature(backward).parameters
    takes_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values())
    for name in sorted(cls.reads):
        if name not in parameters and not takes_any:
            raise TypeError(
                f"variant class {cls.__name__} reads {name!r} but its {cls.backward_method}() has no "
                f"parameter {name!r}: declare reads for the backward it defines"
            )
    for name, parameter in parameters.items():
        required = parameter.default is inspect.Parameter.empty and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
        if name in cls.readable and required and name not in cls.reads:
            raise TypeError(
                f"variant class {cls.__name__}'s {cls.backward_method}() takes {name!r} but reads "
                f"does not list it: set reads = frozenset({{{name!r}, ...}})"
            )


def _owner(cls: type, methods: tuple[str, ...]) -> type:
    """The first class in ``cls``'s method resolution order that defines one of ``methods``."""
    return next(klass for klass in cls.__mro__ if any(name in vars(klass) for name in methods))


def _above(cls: type, upper: type, lower: type) -> bool:
    """Whether ``upper`` comes strictly after ``lower`` in ``cls``'s method resolution order."""
    return cls.__mro__.index(upper) > cls.__mro__.index(lower)


def _defined(owner: type, methods: tuple[str, ...]) -> str:
    return ", ".join(f"{name}()" for name in methods if name in vars(owner))


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={tuple(value.shape)})"
    return repr(value)
