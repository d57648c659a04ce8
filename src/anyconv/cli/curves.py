"""The demo's training curves drawn to a PNG: test accuracy and training loss per epoch, one line a run.

matplotlib is optional (the ``demo`` extra); it is drawn without pyplot, so no window or backend is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .extras import require
from .training import RunResult


def plot_curves(results: Sequence[RunResult], path: str | Path) -> Path:
    """Draw the curves of ``results`` side by side into the PNG file ``path`` and return its path."""
    figure_module = require("matplotlib.figure", "matplotlib", "draw the training curves (--plot)")
    figure = figure_module.Figure(figsize=(9, 3.5), layout="constrained")
    accuracy_axes, loss_axes = figure.subplots(1, 2)
    for result in results:
        epochs = range(1, len(result.test_accuracy) + 1)
        accuracy_axes.plot(
            epochs, [100 * value for value in result.test_accuracy], marker="o", label=result.variant
        )
        loss_axes.plot(epochs, result.train_loss, marker="o", label=result.variant)
    accuracy_axes.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy", title="Training loss", yscale="log")
    for axes in (accuracy_axes, loss_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle("anyconv demo: a small CNN on scikit-learn's handwritten digits")
    path = Path(path)
    figure.savefig(path, format="png", dpi=120)
    return path
