"""Which errors the command line reports as one line and exit 2: bad arguments and lack of memory.

An allocation that fails is the input's size meeting the machine, not a wrong number: it is
refused like a bad argument, and exit 1 stays the code for a check that found a mismatch.
"""

from __future__ import annotations

from ..errors import ArgumentError, ArgumentTypeError

#: the words of torch's allocation failures (CPU allocator, CUDA caching allocator, MPS)
ALLOCATION_WORDS = ("can't allocate memory", "out of memory", "not enough memory")


def is_allocation_failure(error: BaseException) -> bool:
    """Whether ``error`` says that memory could not be allocated.

    >>> is_allocation_failure(MemoryError()), is_allocation_failure(RuntimeError("shape mismatch"))
    (True, False)
    """
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(words in str(error) for words in ALLOCATION_WORDS)


def refusal(error: BaseException) -> str | None:
    """The one line to print for ``error``, or None if it is not a refusal (a bug: let it show).

    >>> refusal(MemoryError())
    'not enough memory for these sizes (MemoryError)'
    """
    if isinstance(error, (ArgumentError, ArgumentTypeError)):
        text = str(error)
    elif is_allocation_failure(error):
        detail = str(error) or type(error).__name__
        text = f"not enough memory for these sizes ({detail})"
    else:
        return None
    return " ".join(text.split())
