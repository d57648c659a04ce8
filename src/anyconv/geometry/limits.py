"""The sizes no tensor can have: refused before anything is allocated or looped over.

torch counts a tensor's elements and bytes in int64, so a tensor of more than 2**63 - 1 bytes
cannot exist on any machine; :func:`check_size` compares a shape's bytes with that, or with a
smaller limit (a device's memory), and names the argument that made the shape that large.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import invalid
from .geometry import Geometry

#: torch's sizes, strides and byte counts are int64: no tensor holds more bytes than this
ADDRESSABLE_BYTES = 2**63 - 1


def check_size(
    what: str,
    shape: tuple[int, ...],
    itemsize: int,
    culprit: tuple[str, Any],
    limit: int = ADDRESSABLE_BYTES,
    holder: str = "torch can address (int64 byte counts)",
) -> None:
    """Refuse, naming ``culprit`` (argument, value), a ``shape`` of more than ``limit`` bytes.

    >>> check_size("the output", (2, 3), 4, ("padding", 1))
    >>> check_size("the output", (2**40, 2**40), 4, ("padding", 2**39))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    anyconv.errors.ArgumentError: padding=549755813888 is invalid: ... 4.0 YiB, more than the 8.0 EiB...
    """
    elements = math.prod(shape)
    if elements * itemsize > limit:
        argument, value = culprit
        raise invalid(
            argument,
            value,
            f"sizes whose tensors fit: {what} {tuple(shape)} would take "
            f"{format_bytes(elements * itemsize)}, more than the {format_bytes(limit)} {holder}",
        )


def culprit(geometry: Geometry, padding: Any, otherwise: tuple[str, Any]) -> tuple[str, Any]:
    """The argument to name for a size too large: the padding when it is larger than the input
    along some dimension (it made the size), else ``otherwise``.

    >>> from anyconv.geometry import make_geometry
    >>> culprit(make_geometry((8,), 3, padding=10**6), 10**6, ("kernel_size", 3))
    ('padding', 1000000)
    """
    if any(before + after > size for size, (before, after) in zip(geometry.input_size, geometry.padding)):
        return ("padding", padding)
    return otherwise


def format_bytes(amount: int) -> str:
    """A byte count for people: powers of 1024.

    >>> format_bytes(27648), format_bytes(12), format_bytes(3 * 2**30), format_bytes(2**63)
    ('27.0 KiB', '12 B', '3.0 GiB', '8.0 EiB')
    """
    if amount < 1024:
        return f"{amount} B"
    value, unit = float(amount), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"
