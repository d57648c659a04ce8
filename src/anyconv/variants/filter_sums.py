"""The filters' gradient of one backward, summed over its chunks where the backward computes it.

The engine runs a backward chunk by chunk. A variant whose ``contract_backward`` takes
``filter_sum`` (``"filter_sum"`` in its ``reads``) is handed one :class:`FilterGradientSum` for
the whole backward and adds each chunk's filter gradient into it, returning None in its place.
The fused loops add theirs into per-thread sums in their own layout, kept across the chunks, so
that a chunk neither zeroes, sums nor lays out a filter-sized gradient of its own: on a layer of
many chunks and large filters (a 3-D or a dilated 512-channel layer) that was a tenth of the
backward, and a filter-sized tensor at its peak.
"""

from __future__ import annotations

import torch


class FilterGradientSum:
    """The gradient of ``filters`` (G, Og, Kg), summed over the chunks of one backward.

    A backward adds a chunk's gradient with :meth:`add`, or lets loops add theirs into the
    per-thread sums of :meth:`loop_parts`; :meth:`total` sums everything once.

    >>> filters = torch.zeros(1, 2, 3)
    >>> sums = FilterGradientSum(filters)
    >>> sums.add(torch.ones(1, 2, 3))
    >>> sums.loop_parts(2, (3, 4), torch.float32, outputs_innermost=True)[:, 0, 1, 0] += 5
    >>> sums.total()
    tensor([[[ 1., 11.,  1.],
             [ 1.,  1.,  1.]]])
    """

    def __init__(self, filters: torch.Tensor) -> None:
        self._filters = filters
        self._added: torch.Tensor | None = None
        self._parts: torch.Tensor | None = None
        self._outputs_innermost = False

    def add(self, grad_filters: torch.Tensor) -> None:
        """Add a chunk's gradient (G, Og, Kg)."""
        if self._added is None:
            self._added = grad_filters.to(self._filters.dtype, copy=True)
        else:
            self._added += grad_filters

    def loop_parts(
        self, count: int, shape: tuple[int, int], dtype: torch.dtype, outputs_innermost: bool
    ) -> torch.Tensor:
        """``count`` sums (count, G, *shape) of dtype for loops to add into, zeroed once per backward.

        ``shape`` is (Kg, O') with the outputs innermost, O' >= Og padded (the tropical loops), else
        (Og, Kg). Every chunk of a backward asks for the same shape; a chunk asking for more parts
        than made so far gets them, the sums so far kept.
        """
        parts = self._parts
        if parts is None or parts.shape[0] < count:
            grown = self._filters.new_zeros((count, self._filters.shape[0], *shape), dtype=dtype)
            if parts is not None:
                grown[: parts.shape[0]] = parts
            self._parts, self._outputs_innermost = grown, outputs_innermost
            parts = grown
        return parts[:count]

    def total(self) -> torch.Tensor:
        """The summed gradient (G, Og, Kg), in the filters' dtype, contiguous."""
        total = self._added
        parts = self._parts
        if parts is not None:
            # summed into the first part in place: a fresh sum would hold one more filter-sized tensor
            summed = parts[0]
            for part in parts[1:]:
                summed += part
            if self._outputs_innermost:
                summed = summed[:, :, : self._filters.shape[1]].transpose(1, 2)
            summed = summed.to(self._filters.dtype)
            total = summed if total is None else total.add_(summed)
        if total is None:
            return torch.zeros_like(self._filters)
        return total.contiguous()


def handed_back(
    grad_fields: torch.Tensor, grad_filters: torch.Tensor | None, filter_sum: FilterGradientSum | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A backward's result: with ``filter_sum``, ``grad_filters`` added into it and None in its place.

    >>> sums = FilterGradientSum(torch.zeros(1, 1, 2))
    >>> handed_back(torch.ones(1), torch.ones(1, 1, 2), sums)
    (tensor([1.]), None)
    >>> sums.total()
    tensor([[[1., 1.]]])
    """
    if filter_sum is None or grad_filters is None:
        return grad_fields, grad_filters
    filter_sum.add(grad_filters)
    return grad_fields, None
