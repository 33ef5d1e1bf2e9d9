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


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type's name when the
    message is empty: what a one-line :class:`UnosatError` quotes of a library's error."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__


def exit_on_user_error(func: Callable[..., T]) -> Callable[..., T]:
    """Run ``func``; on :class:`UnosatError` print ``error: <message>`` and exit with status 1.

    Wraps the package functions that entry points call, so bad input ends with one clear line instead of a
    traceback from library internals. Inside a sweep the error is re-raised instead, so that only that job
    fails.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None:
                raise
            print(f"error: {user_error}", file=sys.stderr, flush=True)
            if in_multirun():  # a sweep records the failed job and goes on; SystemExit would end it
                raise user_error from None
            raise SystemExit(1) from None

    return wrapper


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


def find_user_error(err: BaseException) -> UnosatError | None:
    """The :class:`UnosatError` behind ``err``, if any (Hydra's instantiate wraps errors raised in constructors)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UnosatError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
