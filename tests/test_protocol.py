"""The variant protocol and the backward choice: what a class may inherit, and which backward runs.

A backward belongs to the formula it was derived for: a subclass that changes the formula and
would inherit its parent's backward is refused when the class is made, as is one whose ``reads``
does not match its backward. ``backward_choice.choose_backward`` names the backward of every
call; the engine's backward takes that one.
"""

import pytest
import torch
from conftest import take_views_everywhere

import anyconv
from anyconv.engine import backward_choice, contraction, paths
from anyconv.engine.backward_choice import Backward, choose_backward, differentiable_twice, saved_for
from anyconv.variants import (
    BUILTIN_VARIANTS,
    L1,
    L2,
    RBF,
    Cosine,
    Dot,
    Polynomial,
    ProductVariant,
    Variant,
)


def _refused(match):
    return pytest.raises(TypeError, match=match)


def test_a_plain_subclass_that_redefines_contract_must_redefine_or_drop_contract_backward():
    with _refused(
        "L1Squared redefines its formula .*contract_backward\\(\\) from L1.*set contract_backward = None"
    ):

        class L1Squared(L1):
            def contract(self, fields, filters, adder_grad=False):
                return super().contract(fields, filters).square()

    class AutogradL1Squared(L1):
        contract_backward = None

        def contract(self, fields, filters, adder_grad=False):
            return super().contract(fields, filters).square()

    assert choose_backward(AutogradL1Squared(), ()) is Backward.AUTOGRAD


def test_a_product_subclass_that_redefines_contract_must_redefine_product_backward():
    with _refused(
        "HalfCosine redefines its formula .*product_backward\\(\\) from Cosine.*derive it from Variant"
    ):

        class HalfCosine(Cosine):
            def contract(self, fields, filters):
                return super().contract(fields, filters) / 2


def test_a_product_subclass_may_not_define_contract_backward():
    with _refused("ProductVariant, whose backward is product_backward"):

        class OwnRBF(RBF):
            def contract_backward(self, fields, filters, grad, gamma=None):
                raise AssertionError("never called")


def test_a_new_product_backward_does_not_inherit_the_centre_derived_with_the_old_one():
    with _refused("inherit gradient_centre\\(\\) from L2"):

        class ScaledL2(L2):
            def contract(self, fields, filters):
                return 2 * super().contract(fields, filters)

            def product_backward(self, grad, filters):
                return super().product_backward(2 * grad, filters)


@pytest.mark.parametrize(
    "reads, backward, match",
    [
        pytest.param(
            {"outputs"}, "def product_backward(self, grad, filters): ...", "reads 'outputs'", id="unknown"
        ),
        pytest.param(
            {"output"}, "def product_backward(self, grad, filters): ...", "no parameter 'output'", id="unused"
        ),
        pytest.param(
            set(),
            "def product_backward(self, grad, filters, field_norms): ...",
            "takes 'field_norms'",
            id="unlisted",
        ),
        pytest.param(
            {"kept"},
            "def product_backward(self, grad, filters, kept): ...",
            "define contract_and_keep",
            id="no-keeper",
        ),
    ],
)
def test_reads_must_name_what_the_product_backward_takes(reads, backward, match):
    body = {"reads": frozenset(reads), "contract": lambda self, fields, filters: fields @ filters.mT}
    exec(backward, {}, body)
    with _refused(match):
        type("Declared", (ProductVariant,), body)


def test_a_plain_variant_reads_only_the_output_and_only_with_its_own_backward():
    with _refused("reads 'field_norms'"):
        type("Norms", (Variant,), {"reads": frozenset({"field_norms"})})
    with _refused("has no contract_backward"):
        type("Output", (Variant,), {"reads": frozenset({"output"})})


def test_a_subclass_that_changes_only_options_or_name_keeps_the_backward():
    class NamedDot(Dot):
        name = "named_dot_for_protocol_tests"

    class Squared(Polynomial):
        defaults = {"degree": 2, "c": 0.0}

    assert NamedDot.product_backward is Dot.product_backward
    assert Squared().reads == {"kept"} and Polynomial().reads == {"output"}


#: (variant, which option tensors want gradients, views planned) -> the backward
CHOICES = [
    pytest.param(Dot(), (), True, Backward.VIEWS, id="dot-views"),
    pytest.param(Dot(), (), False, Backward.PRODUCT, id="dot-fields"),
    pytest.param(RBF(gamma=torch.ones(2)), (True,), True, Backward.AUTOGRAD, id="rbf-learning-gamma"),
    pytest.param(RBF(gamma=torch.ones(2)), (False,), True, Backward.VIEWS, id="rbf-fixed-gamma"),
    pytest.param(L1(), (), True, Backward.OWN, id="l1"),
    pytest.param(L1(adder_grad=True), (), False, Backward.OWN, id="l1-adder"),
]


@pytest.mark.parametrize("variant, needs_options, views, backward", CHOICES)
def test_choose_backward(variant, needs_options, views, backward):
    assert choose_backward(variant, needs_options, views) is backward


def test_every_builtin_has_a_named_backward_and_saves_only_what_it_reads():
    kinds = {name: choose_backward(variant(), ()) for name, variant in BUILTIN_VARIANTS.items()}
    assert {name for name, kind in kinds.items() if kind is Backward.PRODUCT} >= {
        "dot",
        "l2",
        "rbf",
        "polynomial",
        "cosine",
        "sharpened_cosine",
    }
    assert {name for name, kind in kinds.items() if kind is Backward.OWN} >= {
        "l1",
        "lp",
        "max_plus",
        "min_plus",
    }
    assert saved_for(Dot(), Backward.VIEWS) == (False, False)
    assert saved_for(Cosine(), Backward.AUTOGRAD) == (False, False)
    assert differentiable_twice(Cosine()) and not differentiable_twice(L1())


@pytest.mark.parametrize("views", [False, True], ids=["fields", "views"])
@pytest.mark.parametrize("variant", ["dot", "l1", "rbf"])
def test_the_engine_takes_the_backward_chosen(variant, views, monkeypatch):
    # the Function's backward asks choose_backward once and takes what it names
    if views:
        take_views_everywhere(monkeypatch)
    chosen = []
    original = backward_choice.choose_backward

    def spy(*args, **kwargs):
        chosen.append(original(*args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(contraction, "choose_backward", spy)
    taken = []
    for name in ("tap_gradients", "_fields_backward"):
        function = getattr(contraction, name)
        monkeypatch.setattr(
            contraction,
            name,
            lambda *a, name=name, function=function, **k: (taken.append(name), function(*a, **k))[1],
        )
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    # an unregistered subclass: the plain Function, planned afresh
    named = type("Unregistered", (BUILTIN_VARIANTS[variant],), {"name": f"unregistered_{variant}"})
    anyconv.generalized_conv(x, w, named, padding=1).sum().backward()
    backward = chosen[-1]
    assert (
        backward
        is {
            "dot": Backward.VIEWS if views else Backward.PRODUCT,
            "rbf": Backward.VIEWS if views else Backward.PRODUCT,
            "l1": Backward.OWN,
        }[variant]
    )
    assert taken == ["tap_gradients" if backward is Backward.VIEWS else "_fields_backward"]


def test_a_registered_variant_differentiated_by_autograd_runs_through_the_ops(monkeypatch):
    # registered by name it takes the custom operators, whose kernel runs below autograd: the
    # autograd backward is taken outside it
    class RegisteredChebyshev(Variant):
        name = "chebyshev_for_protocol_tests"

        def contract(self, fields, filters):
            return -(fields[:, :, None, :] - filters[:, None, :, :]).abs().amax(-1)

    monkeypatch.setitem(BUILTIN_VARIANTS, RegisteredChebyshev.name, RegisteredChebyshev)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    # a plain eager call takes the plain Function; the operators where the machinery watches
    eager = anyconv.generalized_conv(x, w, RegisteredChebyshev.name, padding=1, groups=2)
    assert "GeneralizedConvFunction" in eager.grad_fn.name()
    monkeypatch.setattr(paths, "machinery_watches", lambda *tensors: True)
    output = anyconv.generalized_conv(x, w, RegisteredChebyshev.name, padding=1, groups=2)
    assert "anyconv_generalized_conv" in output.grad_fn.name()
    grad = torch.randn_like(output)
    plain = type("Plain", (RegisteredChebyshev,), {"name": "unregistered_chebyshev"})
    expected = torch.autograd.grad(anyconv.generalized_conv(x, w, plain, padding=1, groups=2), (x, w), grad)
    for got, want in zip(torch.autograd.grad(output, (x, w), grad), expected):
        torch.testing.assert_close(got, want)
