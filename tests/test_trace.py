"""torch.jit.trace over converted layers: the traced module gives the eager numbers on new inputs
of the traced shape, traced with gradients on or off.

A trace records torch's operators only; an eager shortcut that writes a native loop's output into
a tensor it made would be traced as that empty tensor (uninitialised memory on replay), so under
a trace the engine takes its custom operators. The engine's geometry is Python arithmetic, which
the trace bakes in (its TracerWarnings say so): a trace holds for the traced shape
(docs/pytorch_integration.md).
"""

import pytest
import torch
import torch.nn as nn

import anyconv

# torch 2.13 deprecates torch.jit.trace (for torch.compile and torch.export), which networks still
# use; the trace warns of every Python condition and size it bakes in (the engine's path choices)
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

#: (layer, input shape), one of each kind the engine routes apart
LAYERS = {
    "dense": (lambda: nn.Conv2d(6, 8, 3, padding=1), (2, 6, 9, 9)),
    "first-layer": (lambda: nn.Conv2d(3, 8, 3, padding=1, stride=2), (2, 3, 12, 12)),
    "pointwise": (lambda: nn.Conv2d(6, 8, 1), (2, 6, 9, 9)),
    "depthwise": (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8), (2, 8, 9, 9)),
    "depthwise-channels-last": (lambda: nn.Conv2d(16, 16, 5, padding=2, groups=16), (2, 16, 9, 9)),
    "grouped": (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=2), (2, 8, 9, 9)),
    "transposed": (lambda: nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1), (2, 6, 5, 5)),
    "1-d": (lambda: nn.Conv1d(4, 6, 5, padding=2), (2, 4, 30)),
    "3-d": (lambda: nn.Conv3d(3, 4, 3, padding=1), (2, 3, 5, 5, 5)),
    "1x1-on-1x1": (lambda: nn.Conv2d(8, 4, 1), (2, 8, 1, 1)),
}

VARIANTS = {"dot": {}, "l1": {}, "lp": {"p": 1.5}, "max_plus": {}, "cosine": {}, "rbf": {}}


def _input(shape, seed, channels_last):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layer", LAYERS)
def test_the_traced_module_gives_the_eager_numbers(layer, variant, grad):
    build, shape = LAYERS[layer]
    torch.manual_seed(0)
    module = anyconv.convert(nn.Sequential(build()), variant, **VARIANTS[variant]).eval()
    channels_last = layer.endswith("channels-last")
    traced_input = _input(shape, 1, channels_last)
    with torch.set_grad_enabled(grad):
        traced = torch.jit.trace(module, traced_input, check_trace=False)
    x = _input(shape, 2, channels_last)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), module(x))
