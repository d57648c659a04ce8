"""Peak memory of a convolution's forward and backward stays within the memory budget's bound.

Each case runs in a fresh child Python (tests/guarded.py) that measures its own peak resident
memory (``ru_maxrss``) before and after the call: the tensors the call must make (the output and
the gradients) plus a few budgets, whatever the layout. The cases are sized so that one sample's
fields, made whole, would exceed that bound several times over.
"""

from __future__ import annotations

import json

import pytest
from guarded import last_json, run_guarded

MiB = 2**20

CASES = [
    # (id, input shape, weight shape, padding, variants): one sample's fields are 2 to 4 times the bound
    ("long-1d", (1, 16, 2**18), (16, 16, 15), 7, ("dot",)),
    ("audio-B-C-1-T", (2, 16, 1, 2**16), (16, 16, 1, 31), (0, 15), ("dot", "l1")),
    ("3d-one-plane", (1, 8, 1, 512, 512), (8, 8, 1, 5, 5), (0, 2, 2), ("dot",)),
    ("3d-large-planes", (1, 8, 2, 384, 384), (8, 8, 2, 5, 5), (0, 2, 2), ("dot",)),
]
RUNS = [(*case[:4], variant) for case in CASES for variant in case[4]]

CHILD = """
import json, math, resource, sys
import torch
import anyconv

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

torch.set_num_threads(1)
input_shape, weight_shape, padding, variant = json.loads(sys.argv[1])
x = torch.randn(input_shape, requires_grad=True)
w = torch.randn(weight_shape, requires_grad=True)
# warm up on a few chunks' worth: the first products of a size grow the BLAS's working buffers
# once, which is not what is measured
*leading, last = input_shape[2:]
small = torch.randn(*input_shape[:2], *leading, max(16, 2**14 // math.prod(leading)), requires_grad=True)
anyconv.generalized_conv(small, w, variant, padding=padding).sum().backward()
del small
geometry = anyconv.make_geometry(input_shape[2:], weight_shape[2:], padding=padding)
grad = torch.randn(input_shape[0], weight_shape[0], *geometry.output_size)
before = peak()
out = anyconv.generalized_conv(x, w, variant, padding=padding)
out.backward(grad)
after = peak()
made = 4 * (out.numel() + x.numel() + w.numel())  # output, grad_input, grad_weight
print(json.dumps({"extra": after - before, "made": made}))
"""


@pytest.mark.parametrize("case", RUNS, ids=[f"{case[0]}-{case[4]}" for case in RUNS])
def test_peak_memory_stays_within_the_budget_bound(case):
    _, input_shape, weight_shape, padding, variant = case
    argument = json.dumps([input_shape, weight_shape, padding, variant])
    completed = run_guarded(CHILD, timeout=120, limit=4 * 2**30, args=(argument,))
    result = last_json(completed)
    # the default budget is 4 MiB, and forward and backward each hold a few chunks' worth at once;
    # on top of that a fixed amount whatever the sizes and the budget (the BLAS's and the
    # allocator's working memory: about 40 MiB in the backward, measured here on 1-D inputs from
    # 2**16 to 2**19 samples and budgets from 256 KiB to 16 MiB)
    bound = result["made"] + 8 * 4 * MiB + 64 * MiB
    assert result["extra"] <= bound, (
        f"peak grew by {result['extra'] / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB "
        f"(of which {result['made'] / MiB:.0f} MiB the output and gradients)"
    )
