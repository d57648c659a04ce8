"""The two error types of anyconv: bad values and bad types, each naming the argument at fault.

Both derive from the built-in exceptions, so ``except ValueError`` keeps working for callers
that do not know anyconv.
"""

from __future__ import annotations

from typing import Any


class ArgumentError(ValueError):
    """An argument has a valid type but an invalid value."""


class ArgumentTypeError(TypeError):
    """An argument has a type anyconv cannot use."""


def invalid(argument: str, value: Any, valid: str) -> ArgumentError:
    """Build the standard message: the argument, the value given, what would be valid.

    >>> str(invalid("stride", (2, 0), "positive integers"))
    'stride=(2, 0) is invalid: expected positive integers'
    """
    return ArgumentError(f"{argument}={shown(value)} is invalid: expected {valid}")


def wrong_type(argument: str, value: Any, valid: str) -> ArgumentTypeError:
    """Like :func:`invalid`, for a value of the wrong type.

    >>> str(wrong_type("kernel_size", 2.5, "an int or a tuple of ints"))
    'kernel_size=2.5 has type float: expected an int or a tuple of ints'
    """
    return ArgumentTypeError(f"{argument}={shown(value)} has type {type(value).__name__}: expected {valid}")


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` short enough for one line: arrays by their shape, long reprs cut.

    >>> shown((1, 2))
    '(1, 2)'
    >>> shown(list(range(100)))
    '[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21...'
    """
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (tuple, list)):
        return f"<{type(value).__name__} of shape {tuple(shape)}>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
