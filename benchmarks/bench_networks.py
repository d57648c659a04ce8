"""Time whole networks with their convolutions converted by ``anyconv.convert``, against the original.

ResNet-18 and MobileNetV3-small (torchvision) and ConvNeXt-atto (timm), random weights. Run from a
source checkout: ``PYTHONPATH=src python benchmarks/bench_networks.py [--batch 8] [--size 224]``.

Each round runs the original network, then each converted copy ("dot", "l1"), and takes the
ratio to the original's time in that round; the table gives the median and quartiles of the
ratios, for the forward (eval mode, ``no_grad``) and for a training step (forward, cross-entropy
loss, backward, SGD step).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from steady_allocator import steady_allocator

NETWORKS = ("resnet18", "mobilenet_v3_small", "convnext_atto")
VARIANTS = ("dot", "l1")
PASSES = ("forward", "training step")


def _define_torchvision_ops() -> None:
    """torchvision's compiled ops are missing next to a CPU-only torch: declare their schemas."""
    import torch

    for name, schema in (
        ("nms", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"),
        ("qnms", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"),
    ):
        try:
            torch.library.define(f"torchvision::{name}", schema)
        except RuntimeError:
            pass  # defined already (by torchvision itself or an earlier call)


def build(name: str):
    """The network ``name`` with random weights."""
    _define_torchvision_ops()
    if name == "convnext_atto":
        import timm

        return timm.create_model("convnext_atto", pretrained=False)
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


def _step(model, images, labels, training: bool):
    import torch

    if not training:
        with torch.no_grad():
            return model(images)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def time_network(name: str, variants: list[str], batch: int, size: int, rounds: int, training: bool):
    """Per variant, its time / the original's time in each round (plus 'torch_ms')."""
    import torch

    import anyconv

    torch.manual_seed(0)
    original = build(name)
    models = {"torch": original}
    for variant in variants:
        models[variant] = anyconv.convert(copy.deepcopy(original), variant)
    for model in models.values():
        model.train(training)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 1000, (batch,))
    for model in models.values():
        _step(model, images, labels, training)  # warm-up
    ratios: dict[str, list[float]] = {variant: [] for variant in variants}
    ratios["torch_ms"] = []
    for _ in range(rounds):
        times = {}
        for variant, model in models.items():
            start = time.perf_counter()
            _step(model, images, labels, training)
            times[variant] = time.perf_counter() - start
        ratios["torch_ms"].append(1000 * times["torch"])
        for variant in variants:
            ratios[variant].append(times[variant] / times["torch"])
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--size", type=int, default=224, help="image height and width (default 224)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per network and pass (default 5)")
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    steady_allocator()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, batch {args.batch} x 3 x "
        f"{args.size} x {args.size}, {args.rounds} rounds; ratio = time / the original network's time "
        "in the same round: median [quartiles]"
    )
    print()
    print("| network | pass | original ms | variant | x original |")
    print("|---|---|---:|---|---|")
    for name in args.networks:
        for mode in PASSES:
            ratios = time_network(
                name, args.variants, args.batch, args.size, args.rounds, mode == "training step"
            )
            torch_ms = statistics.median(ratios.pop("torch_ms"))
            for variant, values in ratios.items():
                if len(values) > 1:
                    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
                else:
                    low = high = values[0]
                print(
                    f"| {name} | {mode} | {torch_ms:.1f} | {variant} | "
                    f"{statistics.median(values):.2f} [{low:.2f}, {high:.2f}] |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
