"""How large should the chunks of the backward on shifted views be? Time it at several sizes.

The backward of the matrix-product variants on shifted views takes one product per kernel tap on
each chunk's padded slab; ``engine/fields_plan.py`` lets its chunks hold ``VIEWS_BUDGET_FACTOR``
times the memory budget. This script times that backward alone, in one process, with the factor
set to each of ``--factors`` in turn within every round, so that the machine's changing speed
falls on all of them alike, and prints per factor the number of chunks and the median time with
its quartiles. Rows: the layer benchmark's 3-D and dilated-4 layers. Run:
``PYTHONPATH=src python benchmarks/bench_views_chunks.py`` (about a minute per (row, variant)).
"""

from __future__ import annotations

import argparse
import statistics
import time

from steady_allocator import steady_allocator

#: name -> (input shape, weight shape, padding, dilation): bench_layers.py's rows of that name
ROWS = {
    "3-D 3x3x3": ((1, 128, 8, 28, 28), (128, 128, 3, 3, 3), 1, 1),
    "dilated 3x3 d4": ((1, 512, 28, 28), (512, 512, 3, 3), 4, 4),
}


def time_row(name: str, variant: str, factors: list[int], rounds: int) -> str:
    import torch

    import anyconv
    import anyconv.engine.fields_plan as fields_plan
    from anyconv.engine import ops
    from anyconv.engine.plan import clear_plans, plan_conv
    from anyconv.variants import resolve_variant

    input_shape, weight_shape, padding, dilation = ROWS[name]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(input_shape, generator=generator).requires_grad_()
    w = (torch.randn(weight_shape, generator=generator) / weight_shape[1] ** 0.5).requires_grad_()
    resolved = resolve_variant(variant)

    def chunks() -> int:
        plan = plan_conv(x, w, resolved, 1, padding, dilation, 1, "zeros", None)
        made = fields_plan.fields_plan(x, w, resolved, plan.geometry, 1, plan.budget)
        return len(made.tap_chunks or ())

    counts, times = {}, {factor: [] for factor in factors}
    for round_index in range(rounds + 1):
        for factor in factors:
            fields_plan.VIEWS_BUDGET_FACTOR = factor
            clear_plans()
            ops.op_plan.cache_clear()
            counts[factor] = chunks()
            out = anyconv.generalized_conv(x, w, variant, padding=padding, dilation=dilation)
            grad = torch.ones_like(out)
            start = time.perf_counter()
            out.backward(grad)
            if round_index:  # the first round warms up
                times[factor].append(1000 * (time.perf_counter() - start))
            x.grad = w.grad = None
    cells = []
    for factor in factors:
        low, middle, high = statistics.quantiles(times[factor], n=4)
        plural = "" if counts[factor] == 1 else "s"
        cells.append(f"{middle:.1f} ms [{low:.1f}, {high:.1f}] ({counts[factor]} chunk{plural})")
    return f"| {name} | {variant} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--factors", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--variants", nargs="*", default=["dot", "cosine"])
    args = parser.parse_args()
    steady_allocator()
    import torch

    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, 2 threads, float32, {args.rounds} rounds, backward only")
    print()
    print("| row | variant | " + " | ".join(f"factor {factor}" for factor in args.factors) + " |")
    print("|---|---|" + "---|" * len(args.factors))
    for name in ROWS:
        for variant in args.variants:
            print(time_row(name, variant, args.factors, args.rounds), flush=True)


if __name__ == "__main__":
    main()
