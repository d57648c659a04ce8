"""A griffe extension for the API reference: the docstrings' ``>>>`` examples as code blocks.

The docstrings are plain text whose examples pytest runs as doctests; Markdown would read their
``>>>`` as nested quotes, so each run of example lines is fenced as a ``pycon`` block.
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_examples(text: str) -> str:
    """Put every block of ``>>>`` lines (up to the next blank line) in a ``pycon`` fence.

    >>> print(fence_examples("Adds.\\n\\n>>> 1 + 1\\n2"))
    Adds.
    <BLANKLINE>
    ```pycon
    >>> 1 + 1
    2
    ```
    """
    lines: list[str] = []
    indent = None
    for line in text.split("\n"):
        stripped = line.lstrip()
        if indent is None and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            lines.append(f"{indent}```pycon")
        elif indent is not None and not stripped:
            lines.append(f"{indent}```")
            indent = None
        lines.append(line)
    if indent is not None:
        lines.append(f"{indent}```")
    return "\n".join(lines)


class DoctestFences(griffe.Extension):
    """Fence the examples of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_examples(obj.docstring.value)
