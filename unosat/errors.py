"""User-facing errors.

Anything wrong with the user's input or configuration raises :class:`UnosatError` with a message that
names the file (or config key) and the problem. Entry points print that message without a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UnosatError(Exception):
    """A problem with the user's data or configuration, explained in the message."""


def exit_on_user_error(func: Callable[..., T]) -> Callable[..., T]:
    """Run ``func``; on :class:`UnosatError` print ``error: <message>`` and exit with status 1.

    Wraps the package functions that entry points call, so bad input ends with one clear line instead of a
    traceback from library internals.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UnosatError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    return wrapper
