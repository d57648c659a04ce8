"""fold (col2im): equal to F.fold in 2-D, to unfoldNd's FoldNd in 1-D and 3-D, to a naive loop for N=4, 5."""

import torch

import anyconv


def test_fold_one_element_tuples_mean_one_spatial_dimension():
    # regression: (5,) and (3,) were taken as 2-D, so fold refused unfold's own 1-D columns
    input = torch.randn(2, 3, 5, dtype=torch.float64)
    columns = anyconv.unfold(input, (3,))
    assert anyconv.fold(columns, (5,), (3,)).shape == (2, 3, 5)
    assert anyconv.fold(columns, [5], 3).shape == (2, 3, 5)
