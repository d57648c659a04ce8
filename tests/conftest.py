"""Fixtures shared by the test modules."""

import importlib
import os

import pytest
import torch

#: the planner of the fields path, whose choice of a backward on shifted views tests override
FIELDS_PLAN = importlib.import_module("anyconv.engine.fields_plan")
PLAN = importlib.import_module("anyconv.engine.plan")
TAP_LOOPS = importlib.import_module("anyconv.engine.tap_loops")
TAP_PRODUCTS = importlib.import_module("anyconv.engine.tap_products")
FUSED = importlib.import_module("anyconv.variants.fused")


def _share_the_cores_among_workers() -> None:
    """Give each pytest-xdist worker its share of the cores.

    Each worker is a process with torch's (and the native loops') OpenMP pool of one thread per
    core; with two workers on two cores that is twice as many threads as cores, whose spinning
    waits slow both workers. The tests that check splits over threads ask for them explicitly.
    """
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // int(workers)))


_share_the_cores_among_workers()


@pytest.fixture
def two_threads():
    """Two threads for the test, whatever the worker's share of the cores: for the modules whose
    loops split their work among threads (``pytestmark = pytest.mark.usefixtures("two_threads")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seeded():
    """Each test draws the same random numbers in every run, whichever worker runs it after
    which tests: a failure is reproduced by running the test again, and none comes and goes with
    the order (a float32 comparison of two paths once failed in CI on one unlucky draw)."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_plans():
    """Each test plans its calls afresh: a plan made under another test's patches is not reused."""
    PLAN.clear_plans()
    yield
    PLAN.clear_plans()


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, calls: list | None = None) -> list:
    """Replace ``owner.name`` by a spy that calls it and appends 1 to ``calls`` (a new list if
    None) on each call; the list is returned, so that several functions can share one count."""
    calls = [] if calls is None else calls
    original = getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def take_views_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the engine take its backward on shifted views for every real geometry.

    It takes them only where they are faster (stride 1, large images, >= 4 channels per group);
    the tests use them on any geometry, to check them against the references.
    """
    monkeypatch.setattr(FIELDS_PLAN, "shifted_views_fit", lambda geometry, weight: not weight.is_complex())


@pytest.fixture
def no_budget_floor(monkeypatch):
    """Memory budgets taken as given, however small, so that the tests' small inputs are chunked."""
    monkeypatch.setattr(importlib.import_module("anyconv.engine.chunks"), "MINIMUM_MEMORY_BUDGET", 1)


@pytest.fixture
def views_everywhere(monkeypatch):
    """The engine's backward on shifted views for every geometry (see take_views_everywhere)."""
    take_views_everywhere(monkeypatch)


@pytest.fixture
def fields_for_dense(monkeypatch):
    """The fields path for dense layers: the tap loops' filter blocks (which take the standard
    convolution of up to MAX_BLOCKED_CHANNELS channels, MAX_BLOCKED_CHANNELS_1D in 1-D, where the
    loops are built, and the tap products the variants composed from it) turned off."""
    for module in (TAP_LOOPS, TAP_PRODUCTS):
        monkeypatch.setattr(module, "filter_blocks_fit", lambda *arguments, **options: False)
    PLAN.clear_plans()


@pytest.fixture(params=["native", "eager"])
def path(request, monkeypatch):
    """Run the test on the native loops (skipped without a compiler) and on the eager path."""
    if request.param == "native":
        if not FUSED.native_kernels_available():
            pytest.skip("no C++ compiler here")
        monkeypatch.setenv("ANYCONV_NATIVE", "1")
    else:
        monkeypatch.setenv("ANYCONV_NATIVE", "0")
    return request.param
