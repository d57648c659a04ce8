"""Impossible sizes are refused at once, before any allocation or loop proportional to them.

Each call runs in a child Python with an address-space limit and a timeout (tests/guarded.py),
so that a regression fails the test instead of taking the machine's memory.
"""

from __future__ import annotations

import pytest
from guarded import last_json, run_guarded

P = 10**12  # padding whose sizes no int64 holds: torch refuses it in milliseconds
Q = 2**24  # padding whose sizes fit int64 but no machine's memory (2-d: 2**50 elements)

#: (id, call, the argument the message must name)
CALLS = [
    ("conv-padding", "anyconv.conv(x, w, padding=P)", "padding"),
    ("generalized-padding", "anyconv.generalized_conv(x, w, 'l1', padding=P)", "padding"),
    ("generalized-reflect-padding", "anyconv.generalized_conv(x, w, 'l2', padding=(1, P))", "padding"),
    ("nn-conv-padding", "anyconv.nn.Conv2d(2, 3, 3, padding=P)(x)", "padding"),
    (
        "nn-generalized-padding",
        "anyconv.nn.GeneralizedConv2d(2, 3, 3, padding=P, variant='l1')(x)",
        "padding",
    ),
    ("unfold-padding", "anyconv.unfold(x, 3, padding=P)", "padding"),
    ("nn-unfold-padding", "anyconv.nn.Unfold(3, padding=P)(x)", "padding"),
    ("patches-padding", "anyconv.patches(x, 3, padding=P)", "padding"),
    ("fold-output-size", "anyconv.fold(torch.ones(1, 2, 1), (P, P), 1, stride=P)", "output_size"),
    ("conv-transpose-stride", "anyconv.conv_transpose(x, w.transpose(0, 1), stride=P)", "stride"),
    ("conv-transpose-dilation", "anyconv.conv_transpose(x, w.transpose(0, 1), dilation=P)", "dilation"),
    ("conv-padding-beyond-memory", "anyconv.conv(x, w, padding=Q)", "padding"),
    ("generalized-beyond-memory", "anyconv.generalized_conv(x, w, 'max_plus', padding=Q)", "padding"),
    ("unfold-beyond-memory", "anyconv.unfold(x, 3, padding=Q)", "padding"),
    ("fold-beyond-memory", "anyconv.fold(torch.ones(1, 2, 1), (Q, Q), 1, stride=Q)", "output_size"),
    ("conv-transpose-beyond-memory", "anyconv.conv_transpose(x, w.transpose(0, 1), stride=Q)", "stride"),
    ("dilation-beyond-memory", "anyconv.conv(x, w, padding=Q, dilation=Q)", "dilation"),
]

CHILD = """
import json, signal, sys, time
import torch
import anyconv
from anyconv.errors import ArgumentError

class Late(Exception):
    pass

def late(*_):
    raise Late()

signal.signal(signal.SIGALRM, late)
P, Q = {P}, {Q}
x, w = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3)
results = {{}}
for name, call in {calls!r}:
    signal.alarm(5)
    start = time.perf_counter()
    try:
        eval(call)
        outcome = ["accepted", ""]
    except ArgumentError as error:
        outcome = ["ArgumentError", str(error)]
    except BaseException as error:
        outcome = [type(error).__name__, str(error)[:300]]
    signal.alarm(0)
    results[name] = [*outcome, time.perf_counter() - start]
    print(name, outcome[0], file=sys.stderr, flush=True)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def refusals():
    calls = [(name, call) for name, call, _ in CALLS]
    completed = run_guarded(CHILD.format(P=P, Q=Q, calls=calls), timeout=240)
    return last_json(completed)


@pytest.mark.parametrize("name, call, argument", CALLS, ids=[case[0] for case in CALLS])
def test_impossible_sizes_are_refused_at_once_naming_the_argument(refusals, name, call, argument):
    kind, message, seconds = refusals[name]
    assert kind == "ArgumentError", f"{call}: {kind} {message}"
    assert message.startswith(f"{argument}="), message
    assert "more than" in message, message
    # torch refuses in about 2 ms; a generous bound for a shared machine, far below any loop over rows
    assert seconds < 0.5, f"{call} took {seconds:.2f} s"
