"""Real architectures from torchvision and timm (random weights), converted and intercepted whole.

For each: ``dot`` gives the original's outputs, no convolution is left to torch's kernels, and
``l1`` trains a few steps with finite parameters. Layers that compute their own way (timm's
Conv2dSame and StdConv2d, a causal 1-D conv) go through the interception, the others through convert.
"""

import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F
from convolution_spies import FunctionalConvolutions, NativeConvolutions

from anyconv import convert, intercept
from anyconv.nn import Intercepted


def _import_vision_libraries():
    """torchvision and timm, or None each; torchvision's compiled ops are declared first, as a
    CPU-only torch lacks them."""
    for name in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):  # defined already
            torch.library.define(
                f"torchvision::{name}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            )
    libraries = []
    for name in ("torchvision", "timm"):
        try:
            libraries.append(__import__(name))
        except ImportError:
            libraries.append(None)
    return libraries


torchvision, timm = _import_vision_libraries()
NEEDS_TORCHVISION = pytest.mark.skipif(
    torchvision is None, reason="torchvision is not installed (a test-only extra: pip install -e .[dev])"
)
NEEDS_TIMM = pytest.mark.skipif(
    timm is None, reason="timm is not installed (a test-only extra: pip install -e .[dev])"
)


class CausalConv1d(torch.nn.Conv1d):
    """Pads on the left only, in its forward, as temporal convolution networks do."""

    def forward(self, input):
        return F.conv1d(
            F.pad(input, (self.dilation[0] * (self.kernel_size[0] - 1), 0)),
            self.weight,
            self.bias,
            self.stride,
            0,
            self.dilation,
            self.groups,
        )


def signal_network():
    """A small 1-D network: strided stem, depthwise, dilated 'same', grouped, causal and pointwise."""
    return torch.nn.Sequential(
        torch.nn.Conv1d(3, 16, 7, stride=2, padding=3),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Conv1d(16, 16, 5, padding=2, groups=16),
        torch.nn.Conv1d(16, 24, 3, padding="same", dilation=2, bias=False),
        torch.nn.BatchNorm1d(24),
        torch.nn.ReLU(),
        torch.nn.Conv1d(24, 24, 3, groups=4, padding=1, padding_mode="reflect"),
        CausalConv1d(24, 32, 3, dilation=4),
        torch.nn.BatchNorm1d(32),
        torch.nn.ReLU(),
        torch.nn.Conv1d(32, 10, 1),
        torch.nn.AdaptiveAvgPool1d(1),
        torch.nn.Flatten(),
    )


def bit_network():
    """BiT's ResNetV2 (StdConv2d, GroupNorm, the fixed stem), with one block per stage."""
    from timm.layers import GroupNormAct, StdConv2d
    from timm.models.resnetv2 import ResNetV2

    return ResNetV2(
        layers=[1, 1, 1, 1],
        channels=(64, 128, 128, 256),
        num_classes=10,
        stem_type="fixed",
        conv_layer=functools.partial(StdConv2d, eps=1e-8),
        norm_layer=functools.partial(GroupNormAct, num_groups=8),
    )


def timm_own_convolutions():
    from timm.layers import Conv2dSame, StdConv2d, StdConv2dSame

    return (Conv2dSame, StdConv2d, StdConv2dSame)


# small inputs keep the suite fast; training takes two samples (batch norm in training mode needs
# two values per channel at a 1x1 output) of a smaller size where the network allows it
IMAGE, CLIP, SIGNAL = (1, 3, 32, 32), (1, 3, 4, 16, 16), (1, 3, 64)
SMALL_IMAGE, SMALL_CLIP, SMALL_SIGNAL = (2, 3, 16, 16), (2, 3, 2, 8, 8), (2, 3, 32)
# build: the network with random weights; own: its layers that compute their own way
MODELS = [
    dict(
        id="resnet18",
        needs=NEEDS_TORCHVISION,
        build=lambda: torchvision.models.resnet18(),
        input=IMAGE,
        train=SMALL_IMAGE,
    ),
    dict(
        id="mobilenet_v3_small",
        needs=NEEDS_TORCHVISION,
        build=lambda: torchvision.models.mobilenet_v3_small(),
        input=IMAGE,
        train=SMALL_IMAGE,
    ),
    dict(
        id="tf_efficientnet_b0",
        needs=NEEDS_TIMM,
        build=lambda: timm.create_model("tf_efficientnet_b0", num_classes=10),
        input=IMAGE,
        train=SMALL_IMAGE,
        own=timm_own_convolutions,
    ),
    dict(
        id="efficientnet_b0",
        needs=NEEDS_TIMM,
        build=lambda: timm.create_model("efficientnet_b0", num_classes=10),
        input=IMAGE,
        train=SMALL_IMAGE,
    ),
    dict(
        id="convnext_atto",
        needs=NEEDS_TIMM,
        build=lambda: timm.create_model("convnext_atto", num_classes=10),
        input=IMAGE,
        train=(2, 3, 32, 32),  # four stride-2 stages after a stride-4 stem
    ),
    dict(
        id="regnet_x_400mf-grouped",
        needs=NEEDS_TORCHVISION,
        build=lambda: torchvision.models.regnet_x_400mf(),
        input=IMAGE,
        # at 16x16 its last stage sees 1x1: l1 makes both samples equal there, and batch norm's
        # backward on a zero variance is NaN (torch's, whatever computes the convolutions)
        train=(2, 3, 32, 32),
    ),
    dict(
        id="bit-resnetv2",
        needs=NEEDS_TIMM,
        build=bit_network,
        input=IMAGE,
        train=SMALL_IMAGE,
        own=timm_own_convolutions,
    ),
    dict(
        id="r3d_18",
        needs=NEEDS_TORCHVISION,
        build=lambda: torchvision.models.video.r3d_18(),
        input=CLIP,
        train=SMALL_CLIP,
    ),
    dict(id="signal-1d", build=signal_network, input=SIGNAL, train=SMALL_SIGNAL, own=lambda: (CausalConv1d,)),
]
PARAMETERS = [pytest.param(case, id=case["id"], marks=case.get("needs", ())) for case in MODELS]


def build(case, dtype):
    torch.manual_seed(0)
    return case["build"]().to(dtype).eval()


def own_classes(case):
    return case["own"]() if "own" in case else ()


def converted(model, variant, own):
    """convert for every layer it can take; the interception, as a wrapper, for the others."""
    convert(model, variant, include=lambda name, layer: not isinstance(layer, own))
    return Intercepted(model, variant) if any(isinstance(layer, own) for layer in model.modules()) else model


@pytest.mark.parametrize("case", PARAMETERS)
def test_dot_gives_the_original_outputs_with_no_convolution_left_to_torch(case):
    model = build(case, torch.float64)
    input = torch.randn(case["input"], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = model(input)
    own = own_classes(case)
    convert(model, "dot", include=lambda name, layer: not isinstance(layer, own))
    computing_own_way = sum(isinstance(layer, own) for layer in model.modules())
    assert (computing_own_way > 0) == ("own" in case)  # the case tests what it says
    with FunctionalConvolutions() as functional, NativeConvolutions() as native:
        with intercept("dot") as interception:
            output = model(input)
    assert functional.seen == [] and native.seen == []
    assert interception.calls == computing_own_way  # each such layer runs once in these networks
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item())


FLOAT32 = [
    parameter for parameter in PARAMETERS if parameter.id in ("resnet18", "tf_efficientnet_b0", "r3d_18")
]


@pytest.mark.parametrize("case", FLOAT32)
def test_dot_in_float32_within_its_rounding(case):
    model = build(case, torch.float32)
    input = torch.randn(case["input"], generator=torch.Generator().manual_seed(1))
    expected = model(input)
    output = converted(model, "dot", own_classes(case))(input)
    assert ((output - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.parametrize("case", PARAMETERS)
def test_l1_trains_with_finite_parameters(case):
    model = converted(build(case, torch.float32).train(), "l1", own_classes(case))
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    for _ in range(2):
        input = torch.randn(case["train"], generator=generator)
        output = model(input)
        loss = F.cross_entropy(output, torch.randint(0, output.shape[1], (2,), generator=generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert loss.isfinite()
    assert all(parameter.isfinite().all() for parameter in model.parameters())
    assert any(not torch.equal(old, new) for old, new in zip(before, model.parameters()))
