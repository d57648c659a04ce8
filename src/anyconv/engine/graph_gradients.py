"""Gradients as a graph: the route every fast backward takes when a second derivative is asked for.

A backward written by hand (the tap loops, the cosines' recomputing backwards, the Triton kernels)
gives numbers, not a graph. When autograd builds a graph of the gradients (``create_graph=True``),
each of them instead recomputes its output from differentiable steps and lets autograd
differentiate that, with the graph kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def gradients_as_graph(
    recompute: Callable[[], torch.Tensor],
    sources: Sequence[torch.Tensor | None],
    needs: Sequence[bool],
    grad_output: torch.Tensor,
) -> list[torch.Tensor | None]:
    """The gradients of ``recompute()`` at ``grad_output`` with respect to each needed source, as a
    graph that can be differentiated again.

    One answer per source: None where a source is not needed (or is None), zeros where the output
    does not depend on it. ``recompute`` runs only if some gradient is needed.

    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> y = torch.tensor([3.0], requires_grad=True)
    >>> (gx, gy) = gradients_as_graph(lambda: x.square(), (x, y), (True, True), torch.ones(2))
    >>> gx, gy
    (tensor([2., 4.], grad_fn=<MulBackward0>), tensor([0.]))
    """
    wanted = [source for source, needed in zip(sources, needs) if needed and source is not None]
    if not wanted:
        return [None] * len(sources)
    with torch.enable_grad():
        output = recompute()
        found = iter(torch.autograd.grad(output, wanted, grad_output, create_graph=True, allow_unused=True))
    answers: list[torch.Tensor | None] = []
    for source, needed in zip(sources, needs):
        if not needed or source is None:
            answers.append(None)
            continue
        gradient = next(found)
        answers.append(torch.zeros_like(source) if gradient is None else gradient)
    return answers
