"""unfold (im2col): equal to F.unfold in 2-D, to unfoldNd in 1-D and 3-D, to a naive loop for N=4, 5."""

import torch

import anyconv


def test_unfold_never_aliases_its_input():
    # regression: with a 1x1 kernel the permute + reshape was a view, so writing the columns wrote the input
    input = torch.zeros(1, 2, 3, 3)
    columns = anyconv.unfold(input, 1)
    columns += 1
    assert input.eq(0).all()
