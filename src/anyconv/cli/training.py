"""One training run of the demo: a small CNN on the digits, standard or converted to a variant.

Run as ``python -m anyconv.cli.training CONFIG_JSON`` it trains in a fresh process and prints
its result as JSON on the last line, so that the process's peak memory belongs to this run alone.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..nn import Conv2d, convert
from .digits import Digits, load_digits_split
from .extras import available

STANDARD = "standard"


@dataclass(frozen=True)
class RunConfig:
    """What one run trains: ``variant`` is a variant name, or ``"standard"`` for anyconv.nn.Conv2d."""

    variant: str = STANDARD
    variant_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    seed: int = 0
    batch_size: int = 32
    learning_rate: float = 0.01
    limit: int | None = None
    progress: bool = True


@dataclass
class RunResult:
    """Accuracy and loss after each epoch, mean training seconds per epoch, peak resident memory."""

    variant: str
    test_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    seconds_per_epoch: float = 0.0
    memory_before_training: int | None = None
    peak_memory: int | None = None


def digits_cnn(width: int = 16) -> torch.nn.Sequential:
    """Three 3x3 convolutions with batch norm, one pooling, global average, a linear classifier.

    Batch norm after each convolution brings a variant's outputs (an L1 distance is large and
    negative) to the range the next layer expects.

    >>> digits_cnn()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    wide = 2 * width
    return torch.nn.Sequential(
        Conv2d(1, width, 3, padding=1),
        torch.nn.BatchNorm2d(width),
        torch.nn.ReLU(),
        Conv2d(width, wide, 3, padding=1),
        torch.nn.BatchNorm2d(wide),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        Conv2d(wide, wide, 3, padding=1),
        torch.nn.BatchNorm2d(wide),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(wide, 10),
    )


def train(config: RunConfig, digits: Digits | None = None) -> RunResult:
    """Train ``digits_cnn`` (converted to ``config.variant`` unless standard) and test every epoch.

    The seed fixes the initial weights (the same for every variant) and the batch order.
    """
    digits = digits if digits is not None else load_digits_split(config.limit)
    result = RunResult(config.variant, memory_before_training=peak_resident_memory())
    torch.manual_seed(config.seed)
    model = digits_cnn()
    if config.variant != STANDARD:
        convert(model, config.variant, **config.variant_options)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    order = torch.Generator().manual_seed(config.seed)
    batches_per_epoch = -(-len(digits.train_labels) // config.batch_size)
    advance = _progress(config, batches_per_epoch * config.epochs)
    seconds = 0.0
    for epoch in range(config.epochs):
        start = time.perf_counter()
        loss = _train_one_epoch(model, optimizer, digits, config.batch_size, order, advance)
        seconds += time.perf_counter() - start
        result.train_loss.append(loss)
        refresh_batch_norm_statistics(model, digits.train_images, config.batch_size)
        result.test_accuracy.append(accuracy(model, digits.test_images, digits.test_labels))
        advance(0, f"epoch {epoch + 1}/{config.epochs}: loss {loss:.3f}, test {result.test_accuracy[-1]:.1%}")
    advance(None, None)
    result.seconds_per_epoch = seconds / max(config.epochs, 1)
    result.peak_memory = peak_resident_memory()
    return result


def _train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    digits: Digits,
    batch_size: int,
    order: torch.Generator,
    advance: Callable[[int | None, str | None], None],
) -> float:
    model.train()
    total, count = 0.0, 0
    for batch in torch.randperm(len(digits.train_labels), generator=order).split(batch_size):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(digits.train_images[batch]), digits.train_labels[batch]
        )
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * len(batch), count + len(batch)
        advance(1, None)
    return total / count


@torch.no_grad()
def refresh_batch_norm_statistics(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """Recompute batch norm's running statistics as plain means over the training images.

    The running averages lag behind a distance variant's output scale, which moves fast while
    the filters travel from their near-zero start to the data: tested with them, accuracy swings
    from epoch to epoch. Averages over the current weights ("precise batch norm") do not lag.
    """
    norms = [layer for layer in model.modules() if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative mean over the batches below
    model.train()
    for batch in images.split(batch_size):
        model(batch)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``images`` whose most likely class is the label, in eval mode."""
    model.eval()
    return (model(images).argmax(1) == labels).float().mean().item()


def _progress(config: RunConfig, total: int) -> Callable[[int | None, str | None], None]:
    """``advance(steps, status)``: a tqdm bar on stderr, or one plain line per epoch without tqdm.

    ``advance(None, None)`` closes the bar.
    """
    label = f"{config.variant:>12}"
    if config.progress and available("tqdm"):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=label, unit="batch", file=sys.stderr, leave=True)

        def advance(steps: int | None, status: str | None) -> None:
            if steps is None:
                bar.close()
                return
            bar.update(steps)
            if status:
                bar.set_postfix_str(status)

        return advance

    def advance_plainly(steps: int | None, status: str | None) -> None:
        if config.progress and status:
            print(f"{label} {status}", file=sys.stderr, flush=True)

    return advance_plainly


def peak_resident_memory() -> int | None:
    """The largest resident memory of this process so far, in bytes (None where unknown)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def run_from_json(text: str) -> str:
    """Train the run described by a JSON config and return its result as one line of JSON."""
    return json.dumps(asdict(train(RunConfig(**json.loads(text)))))


if __name__ == "__main__":
    print(run_from_json(sys.argv[1]))
