"""Fixtures shared by the test modules."""

import importlib

import pytest

#: the engine module, not the function of the same name that anyconv.engine exports
GENERALIZED_CONV = importlib.import_module("anyconv.engine.generalized_conv")


def take_views_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the engine take its backward on shifted views for every real geometry.

    It takes them only where they are faster (stride 1, large images, >= 4 channels per group);
    the tests use them on any geometry, to check them against the references.
    """
    monkeypatch.setattr(
        GENERALIZED_CONV, "shifted_views_fit", lambda geometry, weight: not weight.is_complex()
    )


@pytest.fixture
def no_budget_floor(monkeypatch):
    """Memory budgets taken as given, however small, so that the tests' small inputs are chunked."""
    monkeypatch.setattr(importlib.import_module("anyconv.engine.chunks"), "MINIMUM_MEMORY_BUDGET", 1)


@pytest.fixture
def views_everywhere(monkeypatch):
    """The engine's backward on shifted views for every geometry (see take_views_everywhere)."""
    take_views_everywhere(monkeypatch)
