"""Whether a call runs under a transform that sees only torch's own operations through.

torch.func's transforms (``grad``, ``vmap``, ``jacrev``, ``jacfwd``...) and forward-mode automatic
differentiation (``torch.autograd.forward_ad``'s dual tensors) follow a call through torch's ops
and through autograd Functions that carry their rules; a native loop or a product written into
an ``out=`` buffer would drop the tangent or fail. Under either, the engine takes the custom
operator's route, which carries a backward, a vmap rule and a forward-mode (``jvp``) rule.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad


def transformed() -> bool:
    """Whether torch.func's transforms or a forward-mode dual level are active.

    >>> import torch.autograd.forward_ad as forward_ad
    >>> transformed()
    False
    >>> with forward_ad.dual_level():
    ...     transformed()
    True
    """
    # the dual level is a module global of forward_ad (torch has no public query): entered levels
    # count from 0, and -1 is none
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0
