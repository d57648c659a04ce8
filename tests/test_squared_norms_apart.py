"""squared.norms_apart: the Cauchy-Schwarz shortcut that lets the product form skip its pair check.

Whenever it answers True, no pair may have cancelled: every distance is at least
CANCELLATION_SHARE of its norms in exact arithmetic (float64 here), so the per-pair check it
replaces would have found nothing; and the float32 distances then equal the naive formula's.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anyconv.variants import squared

NAN, INF = float("nan"), float("inf")

magnitudes = st.floats(1e-4, 1e4)


@settings(max_examples=200, deadline=None)
@given(
    field_scale=magnitudes,
    filter_scale=magnitudes,
    aligned=st.booleans(),
    groups=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_apart_norms_leave_no_pair_under_its_share(field_scale, filter_scale, aligned, groups, seed):
    generator = torch.Generator().manual_seed(seed)
    fields = field_scale * torch.randn(groups, 30, 7, generator=generator, dtype=torch.float64)
    filters = filter_scale * torch.randn(groups, 5, 7, generator=generator, dtype=torch.float64)
    if aligned:
        # the worst case of Cauchy-Schwarz: filters parallel to fields
        filters[:, :2] = fields[:, :2] * (filter_scale / field_scale)
    field_norms = fields.square().sum(-1, keepdim=True)
    filter_norms = filters.square().sum(-1).unsqueeze(1)
    distances = (fields[:, :, None] - filters[:, None]).square().sum(-1)
    margin = distances - squared.CANCELLATION_SHARE * (field_norms + filter_norms)
    if squared.norms_apart(field_norms, filter_norms):
        assert (margin >= -1e-12 * (field_norms + filter_norms)).all()


def test_norms_apart_at_the_bound():
    # a field parallel to a filter, their squared norms exactly NORMS_APART apart: the distance is
    # then exactly CANCELLATION_SHARE of the norms
    ratio = squared.NORMS_APART
    filter_ = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    field = filter_ * ratio**0.5
    distance = (field - filter_).square().sum()
    assert distance.item() == pytest.approx(squared.CANCELLATION_SHARE * (ratio + 1))
    filter_norms = torch.tensor([[[1.0]]], dtype=torch.float64)
    assert squared.norms_apart(torch.tensor([[[ratio]]], dtype=torch.float64), filter_norms)
    assert not squared.norms_apart(torch.tensor([[[ratio * 0.99]]], dtype=torch.float64), filter_norms)
    assert squared.norms_apart(torch.tensor([[[1 / ratio]]], dtype=torch.float64), filter_norms)


@pytest.mark.parametrize(
    ("fields", "filters"),
    [
        ([NAN], [1.0]),
        ([INF], [1.0]),
        ([1e6, INF], [1.0]),
        ([0.0], [INF]),
        ([1e6], [NAN, 1.0]),
    ],
    ids=["nan-field", "inf-field", "inf-among-many", "inf-filter", "nan-filter"],
)
def test_special_norms_are_never_apart(fields, filters):
    # the product form gives NaN where the naive formula gives inf: the pair check must run
    field_norms = torch.tensor(fields).view(1, -1, 1)
    filter_norms = torch.tensor(filters).view(1, 1, -1)
    assert not squared.norms_apart(field_norms, filter_norms)


def test_one_group_close_is_enough_to_check():
    field_norms = torch.tensor([[[100.0]], [[1.5]]])
    filter_norms = torch.tensor([[[1.0, 1.2]], [[1.0, 1.2]]])
    assert not squared.norms_apart(field_norms, filter_norms)
    assert squared.norms_apart(field_norms[:1], filter_norms[:1])


@pytest.mark.parametrize("offset", [0.0, 1000.0, -5000.0])
def test_float32_distances_with_apart_norms_equal_the_naive_formula(offset):
    # activations far from zero against small filters: the shortcut's case, centred or not
    generator = torch.Generator().manual_seed(0)
    fields = offset + torch.randn(2, 50, 27, generator=generator)
    filters = 0.05 * torch.randn(2, 8, 27, generator=generator)
    exact = (fields.double()[:, :, None] - filters.double()[:, None]).square().sum(-1)
    naive32 = (fields[:, :, None] - filters[:, None]).square().sum(-1).double()
    got = squared.squared_distances(fields, filters).double()
    allowed = 4 * (naive32 - exact).abs() + 8 * torch.finfo(torch.float32).eps * exact
    assert ((got - exact).abs() <= allowed).all()
