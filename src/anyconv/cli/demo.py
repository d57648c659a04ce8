"""``anyconv demo``: the same small CNN trained on real handwritten digits, standard and as a variant.

Each run trains in a fresh Python process, so the peak memory in the table is that run's alone;
both start from the same seeded weights, and the table compares accuracy, time and memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from ..errors import ArgumentError, ArgumentTypeError
from ..variants import resolve_variant
from . import recipe_check
from .extras import INSTALL_HINT, MissingExtra, available
from .training import RunConfig, RunResult

#: options a paper trains its variant with, used unless --option is given: AdderNet's gradients
#: for l1 (with the exact sign gradient this small network hardly learns in a few epochs)
PAPER_OPTIONS: dict[str, dict[str, bool | float | str]] = {"l1": {"adder_grad": True}}


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``demo`` subcommand."""
    parser = commands.add_parser(
        "demo",
        help="the main job: train a small CNN on handwritten digits, standard and as a variant",
        description="Check the unfold + matmul recipe against torch, then train the same small CNN "
        "on scikit-learn's bundled handwritten digits (no download) twice, with standard "
        "convolutions and converted to a variant by anyconv.convert, and print a table of test "
        f"accuracy, seconds per epoch and peak memory. Needs the demo extra: {INSTALL_HINT}.",
    )
    parser.add_argument("--variant", default="l1", help="the variant to compare (default l1)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        type=variant_option,
        help="an option of the variant, e.g. --option adder_grad=false (repeatable); default: the "
        "paper's training options (l1: adder_grad=true)",
    )
    parser.add_argument("--epochs", type=positive_int, default=RunConfig.epochs, help="(default %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=RunConfig.seed, help="of weights and batch order (default 0)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=RunConfig.batch_size, help="(default 32)")
    parser.add_argument("--limit", type=positive_int, help="use only the first N images, for a quick try")
    parser.add_argument(
        "--plot", metavar="FILE", help="draw the training curves to this PNG (needs matplotlib)"
    )
    parser.add_argument("--check-only", action="store_true", help="only run the unfold + matmul recipe check")
    parser.add_argument(
        "--architecture",
        action="store_true",
        help="then time a training step of a real architecture (ResNet-18) as built, converted to "
        "dot and converted to the variant",
    )
    parser.add_argument(
        "--architecture-size", type=positive_int, default=224, help="its image size (default 224)"
    )
    parser.add_argument(
        "--architecture-batch", type=positive_int, default=8, help="its batch size (default 8)"
    )
    parser.set_defaults(run=run)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def variant_option(text: str) -> tuple[str, bool | float | str]:
    """``NAME=VALUE`` -> (name, value): true/false become bools, numbers floats, the rest stays text.

    >>> variant_option("adder_grad=true"), variant_option("p=3")
    (('adder_grad', True), ('p', 3.0))
    """
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    try:
        return name, float(value)
    except ValueError:
        return name, value


def run(arguments: argparse.Namespace) -> int:
    """Recipe check, then the two trainings, the table and (with ``--plot``) the curves."""
    status = recipe_check.run()
    if status or arguments.check_only:
        return status
    options = dict(arguments.option) if arguments.option else PAPER_OPTIONS.get(arguments.variant, {})
    try:
        resolve_variant(arguments.variant, **options)
        _check_extras(arguments.plot)
    except (ArgumentError, ArgumentTypeError, MissingExtra) as error:
        print(f"anyconv demo: error: {error}", file=sys.stderr)
        return 2
    base = RunConfig(
        epochs=arguments.epochs, seed=arguments.seed, batch_size=arguments.batch_size, limit=arguments.limit
    )
    label = arguments.variant + "".join(f" {name}={value}" for name, value in options.items())
    print(f"\ntraining a small CNN on the handwritten digits: standard convolutions, then {label}")
    results = []
    for config in (base, replace(base, variant=arguments.variant, variant_options=options)):
        result = train_in_fresh_process(config)
        if result is None:
            return 1
        results.append(result)
    results[1].variant = label
    print()
    print(format_table(results))
    if arguments.plot:
        from .curves import plot_curves

        print(f"training curves written to {plot_curves(results, arguments.plot)}")
    if arguments.architecture:
        from .architecture import format_step_times, training_step_times

        batch, size = arguments.architecture_batch, arguments.architecture_size
        print(f"\ntiming ResNet-18 training steps: as built, converted to dot, converted to {label}")
        times = training_step_times(arguments.variant, options, batch=batch, size=size)
        times[-1].label = label
        print(format_step_times(times, batch, size))
    return 0


def _check_extras(plot: str | None) -> None:
    if not available("sklearn"):
        raise MissingExtra(f"the demo needs scikit-learn for the handwritten digits: {INSTALL_HINT}")
    if plot and not available("matplotlib"):
        raise MissingExtra(f"--plot needs matplotlib: {INSTALL_HINT}, or leave --plot out")
    if not available("tqdm"):
        print(f"(tqdm is not installed, so one line per epoch instead of a progress bar: {INSTALL_HINT})")


def train_in_fresh_process(config: RunConfig) -> RunResult | None:
    """Train in a new interpreter (progress on the inherited stderr); None if it failed."""
    package_parent = str(Path(__file__).resolve().parents[2])
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, environment.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-m", "anyconv.cli.training", json.dumps(asdict(config))],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    if completed.returncode != 0:
        print(f"anyconv demo: the {config.variant} run failed (exit {completed.returncode})", file=sys.stderr)
        return None
    return RunResult(**json.loads(completed.stdout.strip().splitlines()[-1]))


def format_table(results: Sequence[RunResult]) -> str:
    """The comparison as a Markdown table (it reads as plain text too).

    >>> print(format_table([RunResult("standard", [0.5, 0.9], [1.0, 0.3], 1.25, 300 * 2**20, 310 * 2**20)]))
    | variant | test accuracy | seconds / epoch | peak memory |
    |---|---:|---:|---:|
    | standard | 90.0 % | 1.25 | 310 MiB (+10 training) |
    """
    rows = ["| variant | test accuracy | seconds / epoch | peak memory |", "|---|---:|---:|---:|"]
    for result in results:
        rows.append(
            f"| {result.variant} | {100 * result.test_accuracy[-1]:.1f} % | {result.seconds_per_epoch:.2f} "
            f"| {_memory(result)} |"
        )
    return "\n".join(rows)


def _memory(result: RunResult) -> str:
    if result.peak_memory is None:
        return "n/a"
    mebibytes = result.peak_memory / 2**20
    if result.memory_before_training is None:
        return f"{mebibytes:.0f} MiB"
    return f"{mebibytes:.0f} MiB (+{mebibytes - result.memory_before_training / 2**20:.0f} training)"
