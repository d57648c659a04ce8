"""Naive references for the variant tests: each built-in's formula broadcast over receptive fields.

The fields come from anyconv.unfold (itself checked against torch's F.unfold); every (field,
filter) pair is broadcast in full, which is slow and memory hungry, and obviously right.
"""

from __future__ import annotations

import torch

import anyconv


def _norm(values: torch.Tensor) -> torch.Tensor:
    return values.pow(2).sum(-1).sqrt()


def _sharpened(p, w, exponent, q):
    similarity = (p * w).sum(-1) / ((_norm(p) + q) * (_norm(w) + q))
    return torch.sign(similarity) * similarity.abs().pow(exponent)


#: name -> (formula of broadcast fields p (..., 1, K) and filters w (O, K), option defaults)
FORMULAS = {
    "dot": (lambda p, w: (p * w).sum(-1), {}),
    "l1": (lambda p, w, adder_grad=False: -(p - w).abs().sum(-1), {}),
    "l2": (lambda p, w: -(p - w).pow(2).sum(-1), {}),
    "lp": (lambda p, w, p_=2.0: -(p - w).abs().pow(p_).sum(-1).pow(1 / p_), {"p": 2.0}),
    "rbf": (lambda p, w, gamma: torch.exp(-gamma * (p - w).pow(2).sum(-1)), {"gamma": None}),
    "polynomial": (lambda p, w, degree=3, c=1.0: ((p * w).sum(-1) + c).pow(degree), {"degree": 3, "c": 1.0}),
    "cosine": (lambda p, w: (p * w).sum(-1) / (_norm(p) * _norm(w) + 1e-8), {}),
    # the cosine with eps 0: what the backwards' unit-vector forms compute (see eps_zero_cosine)
    "exact_cosine": (lambda p, w: (p * w).sum(-1) / (_norm(p) * _norm(w)), {}),
    "sharpened_cosine": (_sharpened, {"exponent": 2.0, "q": 1e-3}),
    "max_plus": (lambda p, w: (p + w).amax(-1), {}),
    "min_plus": (lambda p, w: (p - w).amin(-1), {}),
}


def eps_zero_cosine(monkeypatch, module) -> list[bool]:
    """Give the cosine eps 0 and check every division, so that wherever no norm is zero the
    cosine's backward in ``module`` (``engine.pointwise_cosine`` or ``engine.tap_cosine``) takes its
    ``_unit_gradients`` (eps negligible, also in float64); returns the list each of its calls
    appends to. The formula to compare with is ``"exact_cosine"``."""
    from anyconv.engine import tap_norms
    from anyconv.variants import Cosine

    monkeypatch.setattr(tap_norms, "_CHECKED_DIVISION", 0)
    monkeypatch.setattr(Cosine, "eps", 0.0)
    taken: list[bool] = []
    original = module._unit_gradients

    def recorded(*args):
        taken.append(True)
        return original(*args)

    monkeypatch.setattr(module, "_unit_gradients", recorded)
    return taken


def naive_generalized_conv(
    input,
    weight,
    variant,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    padding_mode="zeros",
    **options,
):
    """The output of generalized_conv by the formula, broadcast over all fields and filters."""
    formula, defaults = FORMULAS[variant]
    options = {**defaults, **options}
    if variant == "lp":
        options = {"p_": options["p"]}
    taps = weight[0].numel()
    if variant == "rbf" and options["gamma"] is None:
        options["gamma"] = 1 / taps
    kernel = tuple(weight.shape[2:])
    columns = anyconv.unfold(input, kernel, dilation, padding, stride, padding_mode=padding_mode)
    out_channels = weight.shape[0]
    per_group = out_channels // groups
    outputs = []
    for group in range(groups):
        fields = columns[:, group * taps : (group + 1) * taps].transpose(1, 2)  # (B, L, K)
        filters = weight[group * per_group : (group + 1) * per_group].reshape(per_group, -1)
        # a per-channel option: the values of this group's filters
        group_options = {
            name: value[group * per_group : (group + 1) * per_group]
            if torch.is_tensor(value) and value.dim()
            else value
            for name, value in options.items()
        }
        outputs.append(formula(fields[:, :, None, :], filters, **group_options))
    output = torch.cat(outputs, -1).transpose(1, 2)  # (B, O, L)
    geometry = anyconv.make_geometry(input.shape[2:], kernel, stride, padding, dilation, padding_mode)
    output = output.reshape(input.shape[0], out_channels, *geometry.output_size)
    if bias is not None:
        output = output + bias.reshape(-1, *(1,) * len(kernel))
    return output
