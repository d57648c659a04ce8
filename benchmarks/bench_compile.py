"""Time a cold ``torch.compile`` of one training step: torch's convolution against anyconv's layers.

Run from a source checkout: ``PYTHONPATH=src python benchmarks/bench_compile.py [--runs N]
[--cases TEXT] [--backends inductor,aot_eager] [--breakdown]``.

Every (case, backend, run) is a fresh process with its own empty ``TORCHINDUCTOR_CACHE_DIR``, so
no compiled code is reused. In it, a trivial function is compiled first (inductor's start-up,
paid once per process by any model, reported apart), then ``torch._dynamo.reset()``, then the
case's module is compiled with ``fullgraph=True`` and one training step (forward, a loss,
backward) is timed: that first step is the compile. A second step is timed too (the run alone).
On a shared machine the compile's CPU time (the first step's less the second's, each the
process's and its C++ compiler runs'; inductor builds in the process with
``TORCHINDUCTOR_COMPILE_THREADS=1``) is steadier than the wall time, which other jobs stretch.
The table gives medians over the runs, with the time of three phases of the compile as dynamo
records them (its tracing of the Python, AOT autograd, which includes the forward's inductor
compile, and inductor, forward and backward); ``--breakdown`` prints all of dynamo's phase
times (``torch._dynamo.utils.compile_times``) of each child.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

#: name -> (module factory source, input shape); the factories are evaluated in the child
CASES: dict[str, tuple[str, tuple[int, ...]]] = {
    "torch Conv2d": ("torch.nn.Conv2d(16, 32, 3, padding=1)", (2, 16, 16, 16)),
    "anyconv Conv2d": ("anyconv.nn.Conv2d(16, 32, 3, padding=1)", (2, 16, 16, 16)),
    "anyconv l1": ("anyconv.nn.GeneralizedConv2d(16, 32, 3, padding=1, variant='l1')", (2, 16, 16, 16)),
    "torch depthwise": ("torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)", (2, 32, 16, 16)),
    "anyconv depthwise l1": (
        "anyconv.nn.GeneralizedConv2d(32, 32, 3, padding=1, groups=32, variant='l1')",
        (2, 32, 16, 16),
    ),
}
BACKENDS = ("inductor", "aot_eager")
#: table column -> dynamo's timer of that phase (``torch._dynamo.utils.compilation_time_metrics``)
PHASES = {
    "dynamo trace": "bytecode_tracing",
    "AOT autograd": "create_aot_dispatcher_function",
    "inductor (fw + bw)": "compile_fx_inner",
}
COLUMNS = ("compile cpu", "first", "second", *PHASES, "startup")


def _child(case: str, backend: str, breakdown: bool) -> dict:
    """One cold compile in this process: start-up, first step (the compile) and second step, in s."""
    import torch
    import torch._dynamo

    _define_torchvision_ops(torch)
    import anyconv

    factory, shape = CASES[case]
    torch.manual_seed(0)
    module = eval(factory, {"torch": torch, "anyconv": anyconv})
    input = torch.randn(shape, requires_grad=True)

    def step(compiled: Callable) -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), _cpu_time()
        compiled(input).square().sum().backward()
        return time.perf_counter() - start, _cpu_time() - start_cpu

    warm = torch.compile(lambda x: (x.sin() + 1).sum(), backend=backend, fullgraph=True)
    startup, _ = step(lambda _: warm(torch.randn(4, requires_grad=True)))
    torch._dynamo.reset()
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    first, first_cpu = step(compiled)
    second, second_cpu = step(compiled)
    metrics = torch._dynamo.utils.compilation_time_metrics
    result = {"startup": startup, "first": first, "second": second, "compile cpu": first_cpu - second_cpu}
    result.update({column: sum(metrics.get(phase, ())) for column, phase in PHASES.items()})
    if breakdown:
        result["phases"] = torch._dynamo.utils.compile_times(repr="str", aggregate=True)
    return result


def _cpu_time() -> float:
    """CPU seconds of this process and its finished children (the C++ compiler runs)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _define_torchvision_ops(torch: object) -> None:
    """torchvision's op schemas, which the CPU build misses, before anything imports torchvision."""
    library = torch.library  # type: ignore[attr-defined]
    for name, schema in (
        ("nms", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"),
        ("qnms", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"),
    ):
        try:
            library.define(f"torchvision::{name}", schema)
        except RuntimeError:
            pass  # defined already


def _run(case: str, backend: str, breakdown: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="anyconv-inductor-") as cache:
        environment = {
            **os.environ,
            "TORCHINDUCTOR_CACHE_DIR": cache,
            "TRITON_CACHE_DIR": cache,
            # C++ built by the process itself, so that its CPU time is counted
            "TORCHINDUCTOR_COMPILE_THREADS": "1",
        }
        command = [sys.executable, __file__, "--child", json.dumps([case, backend, breakdown])]
        finished = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"{case} / {backend} failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per (case, backend)")
    parser.add_argument("--cases", default="", help="only the cases whose name contains this text")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated backends")
    parser.add_argument("--breakdown", action="store_true", help="print dynamo's phase times")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(_child(*json.loads(arguments.child))))
        return
    cases = [name for name in CASES if arguments.cases in name]
    backends = [name for name in arguments.backends.split(",") if name]
    titles = ("compile, CPU", "compile + first step", "second step", *PHASES, "start-up")
    print("| case | backend | " + " | ".join(f"{title} (s)" for title in titles) + " | runs |")
    print("|---|---|" + "---|" * (len(titles) + 1))
    for backend in backends:
        for case in cases:
            results = [_run(case, backend, arguments.breakdown) for _ in range(arguments.runs)]
            medians = [statistics.median(result[column] for result in results) for column in COLUMNS]
            cells = " | ".join(f"{value:.3f}" if value < 1 else f"{value:.2f}" for value in medians)
            print(f"| {case} | {backend} | {cells} | {len(results)} |", flush=True)
            if arguments.breakdown:
                print(results[-1]["phases"], file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
