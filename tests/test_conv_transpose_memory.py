"""Peak memory of conv_transpose's forward and backward stays within the memory budget's bound,
for one sample whose col2im columns (out_channels x taps per input position) alone exceed it.

As in tests/test_memory_peak.py: each case runs in a fresh child Python that measures its own
peak resident memory (``ru_maxrss``) around one forward and backward.
"""

from __future__ import annotations

import json
import math

import pytest
from guarded import last_json, run_guarded

MiB = 2**20
BUDGET = MiB

CASES = [
    # (id, input shape, weight shape, stride, padding): the columns are 2 to 5 times the bound
    dict(id="2d-7x7-stride-1", input=(1, 16, 256, 256), weight=(16, 16, 7, 7), stride=1, padding=3),
    dict(id="2d-6x6-stride-2", input=(1, 16, 384, 384), weight=(16, 16, 6, 6), stride=2, padding=2),
    dict(id="1d-long-kernel-stride-2", input=(1, 8, 2**17), weight=(8, 8, 64), stride=2, padding=31),
]

CHILD = """
import json, resource, sys
import torch
import anyconv

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

torch.set_num_threads(1)
case, budget = json.loads(sys.argv[1])
options = dict(stride=case["stride"], padding=case["padding"], memory_budget=budget)
w = torch.randn(case["weight"], requires_grad=True)
# warm up on a small input: the first products of a size grow the BLAS's working buffers once
small = torch.randn(*case["input"][:2], *(16,) * (len(case["input"]) - 2), requires_grad=True)
anyconv.conv_transpose(small, w, **options).sum().backward()
del small
x = torch.randn(case["input"], requires_grad=True)
before = peak()
out = anyconv.conv_transpose(x, w, **options)
out.backward(torch.ones_like(out))
after = peak()
made = 4 * (out.numel() + x.numel() + w.numel())  # output, grad_input, grad_weight
print(json.dumps({"extra": after - before, "made": made, "output_shape": list(out.shape)}))
"""


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_peak_memory_stays_within_the_budget_bound(case):
    completed = run_guarded(CHILD, timeout=300, limit=4 * 2**30, args=(json.dumps([case, BUDGET]),))
    result = last_json(completed)
    # the bound of tests/test_memory_peak.py: what the call must make, a few budgets for the
    # chunks of forward and backward, and the BLAS's and allocator's fixed working memory; plus
    # one output-sized tensor, the phases' convolution output before it is interleaved
    output_bytes = 4 * math.prod(result["output_shape"])
    bound = result["made"] + output_bytes + 8 * BUDGET + 64 * MiB
    in_channels, out_per_group, *kernel = case["weight"]
    columns = 4 * out_per_group * math.prod(kernel) * math.prod(case["input"][2:])
    assert columns > 2 * bound, "the case is too small to show anything"
    assert result["extra"] <= bound, (
        f"peak grew by {result['extra'] / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB "
        f"(of which {result['made'] / MiB:.0f} MiB the output and gradients; the columns "
        f"would take {columns / MiB:.0f} MiB)"
    )
