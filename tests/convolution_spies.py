"""Spies for the tests of convert and intercept: which convolutions still reach torch's own code.

One at the functional level (F.convNd, torch.conv*, torch.convolution, any caller), one at the dispatcher.
"""

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

FUNCTIONAL_CONVOLUTIONS = frozenset(
    {
        F.conv1d,
        F.conv2d,
        F.conv3d,
        F.conv_transpose1d,
        F.conv_transpose2d,
        F.conv_transpose3d,
        F.conv_tbc,
        torch.convolution,
        torch._convolution,
    }
)


class FunctionalConvolutions(TorchFunctionMode):
    """Records torch's functional convolutions called while active.

    A mode rather than patched attributes, so that a function imported by name is caught too;
    entered outside an interception, it sees only the calls that interception left to torch.
    """

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in FUNCTIONAL_CONVOLUTIONS:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


class NativeConvolutions(TorchDispatchMode):
    """Records the aten convolution operators (torch's kernels) that reach the dispatcher."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func.namespace == "aten" and "conv" in name and "convert" not in name:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))
