"""The engine's Function hands a variant's backward its own forward output, or what its forward
kept, when asked.

A variant whose ``reads`` lists "output" gets each chunk's output (before bias) and its gradients
equal autograd; the saved output is guarded by torch's version counter; rbf and
sharpened_cosine then take two matrix products in backward, as dot does.
"""

import pytest
import torch
from conftest import take_views_everywhere
from torch._library.custom_ops import OPDEFS
from torch.utils._python_dispatch import TorchDispatchMode
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import paths
from anyconv.variants import ProductVariant, Variant
from anyconv.variants.kernels import RBF
from anyconv.variants.squared import centred_blocks


class ScaledExponential(Variant):
    """A user's variant: exp(p.w / temperature), whose derivative is its own value."""

    name = "scaled_exponential"
    defaults = {"temperature": 4.0}
    reads = frozenset({"output"})
    #: (output handed to the backward, the chunk's output recomputed) for every chunk
    seen: list = []

    def contract(self, fields, filters, temperature=4.0):
        return torch.bmm(fields, filters.mT).div(temperature).exp()

    def contract_backward(self, fields, filters, grad, output, temperature=4.0):
        self.seen.append((output.clone(), self.contract(fields, filters, temperature)))
        scale = grad * output / temperature
        return torch.bmm(scale, filters), torch.bmm(scale.mT, fields)


def _tensors(channels=20, outputs=6, groups=2, size=(7, 6), seed=0):
    # more than eight channels per group: the fields path, which this file tests (fewer take the
    # tap loops or the tap products, tests/test_engine_paths_*.py)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, *size, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(
        outputs, channels // groups, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True
    )
    b = torch.randn(outputs, generator=generator, dtype=torch.float64, requires_grad=True)
    return x, w, b


def _assert_same_gradients(actual, expected, leaves):
    grad = torch.randn_like(actual)
    for got, want in zip(
        torch.autograd.grad(actual, leaves, grad), torch.autograd.grad(expected, leaves, grad)
    ):
        torch.testing.assert_close(got, want)


def _naive_scaled_exponential(x, w, b, temperature, **conv_args):
    dot = naive_generalized_conv(x, w, "dot", **conv_args)
    return (dot / temperature).exp() + b.reshape(-1, 1, 1)


def test_a_user_variant_gets_its_own_output_before_bias_and_autograd_gradients(no_budget_floor):
    x, w, b = _tensors()
    args = dict(stride=(2, 1), padding=1, groups=2)
    ScaledExponential.seen.clear()
    # 600 bytes: a few fields per chunk, so the output reaches the backward in several blocks
    actual = anyconv.generalized_conv(x, w, ScaledExponential, b, memory_budget=600, temperature=3.0, **args)
    expected = _naive_scaled_exponential(x, w, b, 3.0, **args)
    torch.testing.assert_close(actual, expected)
    grad = torch.randn_like(actual)
    expected_grads = torch.autograd.grad(expected, (x, w, b), grad)
    actual_grads = torch.autograd.grad(actual, (x, w, b), grad)
    for which, got, want in zip(("input", "weight", "bias"), actual_grads, expected_grads):
        torch.testing.assert_close(got, want, msg=lambda message, which=which: f"{which}: {message}")
    assert len(ScaledExponential.seen) > 2
    for handed, recomputed in ScaledExponential.seen:
        assert handed.shape == recomputed.shape and handed.shape[0] == 2  # (G, M, Og)
        torch.testing.assert_close(handed, recomputed)


def test_changing_the_saved_output_in_place_is_torchs_usual_error():
    x, w, _ = _tensors()
    output = anyconv.generalized_conv(x, w, "rbf", padding=1, groups=2)
    output.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.sum().backward()


def test_the_output_with_bias_added_may_change_in_place():
    # the engine keeps the tensor before bias: the sum handed to the caller is theirs
    x, w, b = _tensors()
    actual = anyconv.generalized_conv(x, w, "rbf", b, padding=1, groups=2).relu_()
    expected = naive_generalized_conv(x, w, "rbf", b, padding=1, groups=2).relu()
    _assert_same_gradients(actual, expected, (x, w))


def test_bias_is_added_alike_with_and_without_a_graph():
    # without grad mode nothing is kept, and the bias is added while writing, not to a copy
    x, w, b = _tensors()
    recorded = anyconv.generalized_conv(x, w, "sharpened_cosine", b, padding=1, groups=2)
    with torch.no_grad():
        unrecorded = anyconv.generalized_conv(x, w, "sharpened_cosine", b, padding=1, groups=2)
    torch.testing.assert_close(unrecorded, recorded.detach())
    # only the bias wants a gradient: the backward still runs its chunks, output in hand
    only_bias = anyconv.generalized_conv(x.detach(), w.detach(), "rbf", b, padding=1, groups=2)
    (grad_bias,) = torch.autograd.grad(only_bias.sum(), b)
    torch.testing.assert_close(grad_bias, torch.full_like(b, only_bias[0, 0].numel() * 2.0))


def test_learnable_options_take_autograd_and_keep_no_output():
    x, w, _ = _tensors()
    gamma = torch.full((6,), 0.2, dtype=torch.float64, requires_grad=True)
    output = anyconv.generalized_conv(x, w, "rbf", padding=1, groups=2, gamma=gamma)
    output.mul_(2)  # nothing of the output is saved, so no version error
    output.sum().backward()
    assert gamma.grad is not None


def test_a_subclass_that_reads_something_else_is_handed_that_and_not_the_output():
    class DistanceRBF(RBF):
        """rbf whose backward reads the distances its forward kept, not the output."""

        reads = frozenset({"kept"})

        def contract_and_keep(self, fields, filters, gamma=None):
            distances = -anyconv.variants.L2().contract(fields, filters)
            gamma = 1 / fields.shape[-1] if gamma is None else gamma
            return (distances * -gamma).exp(), distances

        def product_backward(self, grad, filters, kept, gamma=None):
            gamma = 1 / filters.shape[-1] if gamma is None else gamma
            return super().product_backward(grad, filters, (kept * -gamma).exp(), gamma)

        def gradient_centre(self, filters):
            return super().gradient_centre(filters)

    assert RBF.reads == {"output"} and DistanceRBF.reads == {"kept"}
    x, w, _ = _tensors()
    expected = anyconv.generalized_conv(x, w, "rbf", padding=1, groups=2, gamma=0.3)
    actual = anyconv.generalized_conv(x, w, DistanceRBF, padding=1, groups=2, gamma=0.3)
    # saved (the plain Function): input, weight, then the kept distances only
    assert len(actual.grad_fn.saved_tensors) == 3
    _assert_same_gradients(actual, expected, (x, w))


class _MatrixProducts(TorchDispatchMode):
    """Counts the matrix products torch runs, in place or not (torch's flop counter misses baddbmm_)."""

    NAMES = {"mm", "bmm", "addmm", "baddbmm", "addbmm", "matmul"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__.rstrip("_") in self.NAMES
        if func.namespace == "anyconv":
            # the engine's custom ops: run their Python kernel here, counting its products too
            kernel = OPDEFS[func.overloadpacket._qualified_op_name.replace(".", "::", 1)]._init_fn
            with self:
                return kernel(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name, options", [("rbf", {}), ("sharpened_cosine", {"exponent": 1.5, "q": 0.1})])
def test_rbf_and_sharpened_cosine_backward_take_two_matrix_products(name, options):
    x, w, b = _tensors()
    # the default budget holds this layer in one chunk: one backward, two products, as dot's
    output = anyconv.generalized_conv(x, w, name, b, padding=1, groups=2, **options)
    with _MatrixProducts() as products:
        torch.autograd.grad(output, (x, w), torch.randn_like(output))
    assert products.count == 2


@pytest.mark.parametrize("offset", [0.0, 1000.0], ids=["near-zero", "centred"])
def test_l2_backward_takes_two_matrix_products_centred_or_not(offset):
    # far from zero the backward takes its products on centred fields: the fields' gradient in
    # one product, the filters' in one per block of centred fields (see centred_blocks; one here)
    x, w, b = _tensors(groups=1)  # grouped, the tap loops would take it
    x = (x + offset).detach().requires_grad_()
    w = (w + offset).detach().requires_grad_()
    output = anyconv.generalized_conv(x, w, "l2", b, padding=1)
    with _MatrixProducts() as products:
        torch.autograd.grad(output, (x, w), torch.randn_like(output))
    fields, taps, filters = output[0, 0].numel() * len(output), w[0].numel(), len(w)
    assert len(centred_blocks(fields, taps, filters)) == 1
    assert products.count == 2


class SquaredDot(ProductVariant):
    """A user's variant that keeps s for its backward: y = s^2 does not give back the sign of s."""

    name = "squared_dot"
    reads = frozenset({"kept"})
    calls: list = []

    def contract(self, fields, filters):
        return torch.bmm(fields, filters.mT).square()

    def contract_and_keep(self, fields, filters):
        self.calls.append(fields.shape[1])
        products = torch.bmm(fields, filters.mT)
        return products.square(), products

    def product_backward(self, grad, filters, kept):
        return 2 * kept * grad, None, None


@pytest.mark.parametrize("views", [False, True], ids=["fields", "views"])
def test_a_user_variant_keeps_a_value_of_its_forward_for_its_backward(views, monkeypatch, no_budget_floor):
    if views:
        take_views_everywhere(monkeypatch)
    x, w, b = _tensors()
    args = dict(stride=(2, 1), padding=1, groups=2)
    SquaredDot.calls.clear()
    actual = anyconv.generalized_conv(x, w, SquaredDot, b, memory_budget=600, **args)
    assert len(SquaredDot.calls) > 2  # one call per chunk, with several chunks
    expected = naive_generalized_conv(x, w, "dot", **args).square() + b.reshape(-1, 1, 1)
    torch.testing.assert_close(actual, expected)
    _assert_same_gradients(actual, expected, (x, w, b))
    SquaredDot.calls.clear()
    with torch.no_grad():
        anyconv.generalized_conv(x, w, SquaredDot, b, **args)
    assert SquaredDot.calls == []  # nothing is kept without a graph


@pytest.mark.parametrize("route", ["operator", "function"])
def test_polynomial_keeps_its_output_for_odd_degrees_and_s_plus_c_for_even_ones(route, monkeypatch):
    # the custom operator (as under torch.compile) or the plain Function (a plain eager call)
    monkeypatch.setattr(paths, "machinery_watches", lambda *tensors: route == "operator")
    x, w, _ = _tensors()
    odd = anyconv.generalized_conv(x, w, "polynomial", padding=1, groups=2, degree=3)
    even = anyconv.generalized_conv(x, w, "polynomial", padding=1, groups=2, degree=2, c=0.5)
    # saved: input, weight, and the output (the tensor returned) or the kept s + c
    odd_saved, even_saved = (
        [tensor for tensor in output.grad_fn.saved_tensors if tensor is not None] for output in (odd, even)
    )
    assert len(odd_saved) == len(even_saved) == 3
    assert odd_saved[2].data_ptr() == odd.data_ptr() and even_saved[2].data_ptr() != even.data_ptr()
    s_plus_c = naive_generalized_conv(x, w, "dot", padding=1, groups=2) + 0.5
    torch.testing.assert_close(even_saved[2], s_plus_c.detach())


def test_a_subclass_that_redefines_contract_is_refused_its_parents_backward():
    with pytest.raises(TypeError, match="Cubed redefines its formula .* inherit product_backward"):

        class Cubed(SquaredDot):
            name = "cubed_dot"

            def contract(self, fields, filters):
                return torch.bmm(fields, filters.mT).pow(3)

    class AutogradCubed(Variant):
        name = "cubed_dot"

        def contract(self, fields, filters):
            return torch.bmm(fields, filters.mT).pow(3)

    x, w, _ = _tensors()
    actual = anyconv.generalized_conv(x, w, AutogradCubed, padding=1, groups=2)
    _assert_same_gradients(actual, naive_generalized_conv(x, w, "dot", padding=1, groups=2).pow(3), (x, w))


@pytest.mark.parametrize("name", ["l1", "max_plus", "cosine", "polynomial"])
def test_a_call_with_nothing_to_differentiate_skips_the_function_and_gives_its_numbers(
    name, monkeypatch, fields_for_dense
):
    # under no_grad, or with no tensor requiring grad, the fields path runs the chunked forward
    # alone; with a graph to record it goes through the autograd Function (the dense cosine and
    # polynomial taken off the tap products)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, 7, 6, generator=g, dtype=torch.float64)
    w = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    expected = naive_generalized_conv(x, w, name, b, padding=1)
    applied = []

    class Counted(paths.GeneralizedConvFunction):
        @classmethod
        def apply(cls, *args):
            applied.append(name)
            return super().apply(*args)

    monkeypatch.setattr(paths, "GeneralizedConvFunction", Counted)
    torch.testing.assert_close(anyconv.generalized_conv(x, w, name, b, padding=1), expected)
    with torch.no_grad():
        recorded = anyconv.generalized_conv(x, w.requires_grad_(), name, b, padding=1)
    torch.testing.assert_close(recorded, expected)
    assert applied == [] and not recorded.requires_grad
    out = anyconv.generalized_conv(x, w, name, b, padding=1)
    assert applied == [name] and out.requires_grad
    torch.testing.assert_close(out.detach(), expected)
