"""Gradients that can be differentiated again: the engine's backward when autograd builds a graph.

With ``create_graph=True`` the engine recomputes the variant's formula under autograd (im2col,
itself twice differentiable, then ``contract``) and differentiates that, by ``torch.func.vjp``
under torch.func's transforms; a variant whose backward is its own code (``contract_backward``:
l1, lp, max_plus, min_plus) refuses the second backward (``backward_choice.differentiable_twice``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F

from ..functional.im2col import columns_of
from ..functional.transforms import transformed
from .backward_choice import differentiable_twice
from .graph_gradients import gradients_as_graph

if TYPE_CHECKING:
    from .contraction import Plan

Gradients = tuple[torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor | None, ...]]


def formula_output(input: torch.Tensor, weight: torch.Tensor, plan: Plan, options: dict) -> torch.Tensor:
    """The output before bias, from differentiable operations only, a chunk of samples at a time.

    The graph autograd records holds every chunk's fields: the memory of the unchunked formula.
    """
    geometry, groups = plan.geometry, plan.groups
    padded = F.pad(input, geometry.torch_pad) if geometry.is_padded else input
    filters = weight.reshape(groups, weight.shape[0] // groups, -1)
    starts = sorted({chunk.samples.start for chunk in plan.chunks} | {input.shape[0]})
    outputs = []
    for start, stop in zip(starts, starts[1:]):
        # (b, C*K, L) in im2col's (channel, tap) order, which filters' rows share
        columns = columns_of(padded[start:stop], geometry)
        fields = columns.unflatten(1, (groups, -1)).permute(1, 0, 3, 2).reshape(groups, -1, filters.shape[-1])
        result = plan.variant.contract(fields, filters, **options)
        # (G, b*L, Og) -> (b, O, *out)
        block = result.unflatten(1, (stop - start, -1)).permute(1, 0, 3, 2).flatten(1, 2)
        outputs.append(block.reshape(stop - start, weight.shape[0], *geometry.output_size))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def second_order_gradients(
    plan: Plan,
    input: torch.Tensor,
    weight: torch.Tensor,
    grad_output: torch.Tensor,
    option_tensors: tuple[torch.Tensor, ...],
    options: dict,
    needs: tuple[bool, ...],
    fast: Callable[[], Gradients],
) -> Gradients:
    """The gradients of (input, weight, *option_tensors) as a graph that autograd can differentiate.

    Without grad mode (no graph to build: option tensors that want gradients) autograd runs one
    chunk of samples at a time instead. ``options``: the variant's options with
    ``option_tensors`` in place (as the forward took them); ``needs``: which gradients are
    wanted; ``fast``: the engine's backward without a graph, run for a variant that refuses a
    second backward.
    """
    sources = (input, weight, *option_tensors)
    if not differentiable_twice(plan.variant):
        reason = (
            f"no second derivative for variant {plan.variant.name!r} (its backward is its own code: "
            "the fused loops of a non-smooth formula); compute its gradient without create_graph=True, "
            "or use a smooth variant (dot, l2, rbf, polynomial, cosine, sharpened_cosine)"
        )
        return _refused(reason, fast, needs, grad_output, *sources)
    if transformed():
        return _gradients_by_vjp(plan, sources, grad_output, needs)
    if not torch.is_grad_enabled():
        return _chunked_gradients(plan, input, weight, grad_output, option_tensors, needs)
    answers = gradients_as_graph(
        lambda: formula_output(input, weight, plan, options), sources, needs, grad_output
    )
    return answers[0], answers[1], tuple(answers[2:])


def _gradients_by_vjp(
    plan: Plan, sources: tuple[torch.Tensor, ...], grad_output: torch.Tensor, needs: tuple[bool, ...]
) -> Gradients:
    """The gradients under torch.func's transforms: the formula's vjp, taken by ``torch.func.vjp``.

    Inside a backward that a transform runs (``grad``, ``vjp``, ``jacrev``), ``torch.autograd.grad``
    records at no level the transforms see: a ``jacrev`` of ``jacrev`` would find the second
    derivative zero, and a ``jacrev`` finds the recomputed output unrecorded. ``torch.func.vjp``
    opens its own level inside theirs, so each transform above differentiates the gradients again.
    """
    pullback = torch.func.vjp(_formula_of(plan, sources[1].shape[0]), *sources)[1]
    answers = [gradient if needed else None for gradient, needed in zip(pullback(grad_output), needs)]
    return answers[0], answers[1], tuple(answers[2:])


def formula_tangent(
    plan: Plan, sources: tuple[torch.Tensor, ...], tangents: tuple[torch.Tensor | None, ...]
) -> torch.Tensor:
    """Forward mode: the tangent of the output before bias, for tangents of (input, weight,
    *option_tensors) (None: zero), from the formula: by ``torch.func.jvp`` under torch.func's
    transforms, on dual tensors under an eager dual level."""
    filled = tuple(
        torch.zeros_like(source) if tangent is None else tangent for source, tangent in zip(sources, tangents)
    )
    formula = _formula_of(plan, sources[1].shape[0])
    if torch._C._are_functorch_transforms_active():
        return torch.func.jvp(formula, sources, filled)[1]
    # forward mode in eager (a dual level of torch.autograd.forward_ad): torch.func.jvp would nest a
    # second level, which torch refuses; the formula runs on dual tensors of the level being
    # computed, with forward gradients switched back on (torch turns them off around a jvp rule)
    with forward_ad._set_fwd_grad_enabled(True):
        duals = [forward_ad.make_dual(source.detach(), tangent) for source, tangent in zip(sources, filled)]
        primal, tangent = forward_ad.unpack_dual(formula(*duals))
    return torch.zeros_like(primal) if tangent is None else tangent


def _formula_of(plan: Plan, out_channels: int) -> Callable[..., torch.Tensor]:
    """The output before bias as a function of (input, weight, *option_tensors)."""
    # imported here: contraction imports this module
    from .contraction import options_of

    filters_per_group = out_channels // plan.groups

    def output_of(input: torch.Tensor, weight: torch.Tensor, *option_tensors: torch.Tensor) -> torch.Tensor:
        return formula_output(input, weight, plan, options_of(plan, option_tensors, filters_per_group))

    return output_of


def _chunked_gradients(
    plan: Plan,
    input: torch.Tensor,
    weight: torch.Tensor,
    grad_output: torch.Tensor,
    option_tensors: tuple[torch.Tensor, ...],
    needs: tuple[bool, ...],
) -> Gradients:
    """Without a graph to build (option tensors that want gradients): autograd one chunk of samples
    at a time, each chunk's graph freed before the next."""
    # imported here: contraction imports this module
    from .contraction import options_of

    needs_input, needs_weight, *needs_options = needs
    grad_input = torch.zeros_like(input) if needs_input else None
    totals = [
        torch.zeros_like(tensor) if needed else None
        for tensor, needed in zip((weight, *option_tensors), (needs_weight, *needs_options))
    ]
    starts = sorted({chunk.samples.start for chunk in plan.chunks} | {input.shape[0]})
    for start, stop in zip(starts, starts[1:]):
        with torch.enable_grad():
            piece = input[start:stop].detach().requires_grad_(needs_input)
            leaves = [
                tensor.detach().requires_grad_(needed)
                for tensor, needed in zip((weight, *option_tensors), (needs_weight, *needs_options))
            ]
            options = options_of(plan, tuple(leaves[1:]), weight.shape[0] // plan.groups)
            output = formula_output(piece, leaves[0], plan, options)
            wanted = [tensor for tensor in (piece, *leaves) if tensor.requires_grad]
            found = iter(torch.autograd.grad(output, wanted, grad_output[start:stop], allow_unused=True))
        if needs_input:
            assert grad_input is not None
            grad_input[start:stop] = next(found)
        for total, leaf in zip(totals, leaves):
            if leaf.requires_grad:
                part = next(found)
                if part is not None:
                    assert total is not None
                    total += part
    return grad_input, totals[0], tuple(totals[1:])


def _refused(
    reason: str, fast: Callable[[], Gradients], needs: tuple[bool, ...], *sources: torch.Tensor
) -> Gradients:
    """The engine's gradients, recorded by autograd as a node whose own backward raises ``reason``."""
    grad_input, grad_weight, grad_options = fast()
    found = [gradient for gradient in (grad_input, grad_weight, *grad_options) if gradient is not None]
    recorded = iter(_NoSecondDerivative.apply(reason, len(found), *found, *sources))
    answers = [next(recorded) if needed else None for needed in needs]
    return answers[0], answers[1], tuple(answers[2:])


class _NoSecondDerivative(torch.autograd.Function):
    """Passes gradients through; differentiating them raises a clear error, never a wrong number."""

    # vmap over it (jacrev's vmapped vjp) maps the clones; its backward raises under vmap too
    generate_vmap_rule = True

    @staticmethod
    def forward(reason: str, count: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the first ``count`` are the gradients; the sources after them make autograd record this node
        return tuple(tensor.clone() for tensor in tensors[:count])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.reason = inputs[0]

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> NoReturn:
        raise RuntimeError(f"anyconv: {ctx.reason}")
