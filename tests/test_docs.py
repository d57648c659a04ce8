"""The documentation site: ``mkdocs build --strict`` succeeds (warnings are errors) and its API
reference documents every public name of anyconv, anyconv.nn and anyconv.variants."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import anyconv
import anyconv.nn
import anyconv.variants

ROOT = Path(__file__).resolve().parents[1]
MISSING = [
    name
    for name in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python")
    if importlib.util.find_spec(name) is None
]
PUBLIC = [
    (module.__name__, name)
    for module in (anyconv, anyconv.nn, anyconv.variants)
    for name in module.__all__
    if not isinstance(getattr(module, name), types.ModuleType)
]


def _load_fences():
    spec = importlib.util.spec_from_file_location(
        "doctest_fences", ROOT / "docs/_extensions/doctest_fences.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if MISSING:
        pytest.skip(
            f"the documentation tools are not installed ({', '.join(MISSING)}): pip install -e '.[docs]'"
        )
    if not (ROOT / "mkdocs.yml").is_file():
        pytest.skip("not a source tree: no mkdocs.yml next to tests/")
    site = tmp_path_factory.mktemp("site")
    command = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "-f",
        str(ROOT / "mkdocs.yml"),
        "-d",
        str(site),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return site


def test_site_builds_strict_with_every_page(site):
    pages = [path.stem for path in (ROOT / "docs").glob("*.md")]
    assert "index" in pages and "api" in pages
    for page in pages:
        built = site / "index.html" if page == "index" else site / page / "index.html"
        assert built.is_file(), page


@pytest.mark.parametrize("module, name", PUBLIC, ids=[f"{module}.{name}" for module, name in PUBLIC])
def test_api_reference_documents_every_public_name(site, module, name):
    # a public name is documented under its public path, or under its defining module's path
    # where the public path is also a submodule's name (anyconv.conv, anyconv.fold, ...)
    headings = set(
        re.findall(
            r'id="([^"]+)" class="doc doc-heading"',
            (site / "api/index.html").read_text(),
        )
    )
    assert f"{module}.{name}" in headings or any(heading.endswith(f".{name}") for heading in headings)


def test_doctest_examples_become_code_blocks():
    fence = _load_fences().fence_examples
    text = "Adds.\n\n>>> 1 + 1\n2\n\nThen more.\n    >>> f()\n    1"
    assert fence(text) == (
        "Adds.\n\n```pycon\n>>> 1 + 1\n2\n```\n\nThen more.\n    ```pycon\n    >>> f()\n    1\n    ```"
    )
    assert fence("No example.") == "No example."
