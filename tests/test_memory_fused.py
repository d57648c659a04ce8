"""Peak memory of the fused backwards: a wide layer's filter gradient is held once, not once per thread.

Each case runs in a fresh child Python (tests/guarded.py) with two threads and measures its own
peak resident memory (``ru_maxrss``) across one call of the fused backward, and across one
forward and backward of a layer whose filters outweigh its fields (DeepLab's dilated 512 x 512).
glibc's mmap threshold is fixed in the child: by default it rises to the largest block freed, and
later blocks of that size then stay resident in the heap after they are freed, by chance.
"""

from __future__ import annotations

import json

import pytest
from guarded import last_json, run_guarded

from anyconv.variants import fused

MiB = 2**20

needs_native = pytest.mark.skipif(not fused.native_kernels_available(), reason="no C++ compiler here")

KERNEL_CHILD = """
import json, resource, sys
import torch
from anyconv.variants import fused

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

torch.set_num_threads(2)
kernel, rows, filters, taps = json.loads(sys.argv[1])
backward = {
    "l1": lambda f, w, g: fused.l1_backward(f, w, g),
    "lp": lambda f, w, g: fused.power_sums_backward(f, w, g, 3.0),
}[kernel]
backward(torch.randn(1, 8, 8), torch.randn(1, 8, 8), torch.randn(1, 8, 8))  # loads the library
f, w, g = torch.randn(1, rows, taps), torch.randn(1, filters, taps), torch.randn(1, rows, filters)
before = peak()
grad_fields, grad_filters = backward(f, w, g)
after = peak()
print(json.dumps({"extra": after - before, "made": 4 * (f.numel() + w.numel())}))
"""

# (id, kernel, fields, filters, taps): the filters (9 MiB) three times the fields
KERNEL_CASES = [
    ("l1-wide", "l1", 200, 512, 4608),
    ("lp-wide", "lp", 200, 512, 4608),
]


@needs_native
@pytest.mark.parametrize("case", KERNEL_CASES, ids=[case[0] for case in KERNEL_CASES])
def test_wide_fused_backward_holds_one_filter_gradient(case, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    argument = json.dumps(case[1:])
    result = last_json(run_guarded(KERNEL_CHILD, timeout=120, args=(argument,)))
    filter_bytes = 4 * case[3] * case[4]
    # the gradients it returns, and less than the second filter gradient two threads splitting
    # the rows would hold (with lp's power table and the allocator's slack)
    bound = result["made"] + filter_bytes // 2
    assert result["extra"] <= bound, (
        f"peak grew by {result['extra'] / MiB:.1f} MiB, bound {bound / MiB:.1f} MiB "
        f"(of which {result['made'] / MiB:.1f} MiB the gradients)"
    )


LAYER_CHILD = """
import json, resource, sys
import torch
import anyconv

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

torch.set_num_threads(2)
variant = sys.argv[1]
arguments = dict(padding=4, dilation=4)
small = torch.randn(1, 512, 9, 9, requires_grad=True)
w = torch.randn(512, 512, 3, 3, requires_grad=True)
anyconv.generalized_conv(small, w, variant, **arguments).sum().backward()  # loads what calls share
w.grad = None
x = torch.randn(1, 512, 28, 28, requires_grad=True)
grad = torch.randn(1, 512, 28, 28)
before = peak()
anyconv.generalized_conv(x, w, variant, **arguments).backward(grad)
after = peak()
print(json.dumps({"extra": after - before, "filters": 4 * w.numel(), "image": 4 * x.numel()}))
"""


@needs_native
@pytest.mark.parametrize("variant", ["l1"])
def test_wide_dilated_layer_backward_stays_near_its_gradients(variant, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    result = last_json(run_guarded(LAYER_CHILD, timeout=300, args=(variant,)))
    # output, grad_input and grad_weight (what torch makes too), the filters in the fields' order
    # and their gradient summed over the chunks, two budgets of fields and the allocator's slack;
    # before the threads shared one filter gradient it grew by about 45 MiB here, this bound 35
    bound = 3 * result["image"] + 2 * result["filters"] + 2 * 4 * MiB + 4 * MiB
    assert result["extra"] <= bound, (
        f"peak grew by {result['extra'] / MiB:.1f} MiB, bound {bound / MiB:.1f} MiB"
    )
