"""Worker processes that never outlive the main process and create no named semaphore.

Workers are plain child processes (``python -c``) fed pickled ``(func, item)`` tasks on their standard input
and answering on their standard output (what a task prints goes to stderr); no ``multiprocessing`` queue, so
no named POSIX semaphore is ever created and a killed process group leaves nothing in ``/dev/shm``. A
worker exits as soon as the main process is gone: on Linux the kernel kills it (``PR_SET_PDEATHSIG``),
elsewhere a watchdog thread notices that its parent changed, and in any case its standard input closes.
This module imports only the standard library, so a worker starts quickly.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pickle
import selectors
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: seconds between the watchdog's checks that the parent process is alive (where PR_SET_PDEATHSIG is missing)
WATCHDOG_PERIOD_S = 0.5
#: seconds a worker gets to exit after its input is closed, before it is killed
STOP_GRACE_S = 2.0
PR_SET_PDEATHSIG = 1
_BOOTSTRAP = (
    "import pickle, sys; sys.path[:0] = pickle.load(sys.stdin.buffer); "
    "from unosat.worker_pool import worker_main; worker_main(int(sys.argv[1]))"
)


class WorkerPool:
    """``n`` worker processes; :meth:`map` keeps each busy with one task at a time."""

    def __init__(self, n: int):
        self.procs: list[subprocess.Popen] = []
        for _ in range(n):
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
            proc.stdin.write(pickle.dumps(list(sys.path)))
            proc.stdin.flush()
            self.procs.append(proc)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def map(
        self, func: Callable[[T], R], items: Sequence[T], progress: Callable[[int], object] = lambda n: None
    ) -> list[R]:
        results: list = [None] * len(items)
        todo = list(enumerate(items))[::-1]
        busy: dict[int, int] = {}  # worker index -> item index
        with selectors.DefaultSelector() as selector:
            for w, proc in enumerate(self.procs):
                selector.register(proc.stdout, selectors.EVENT_READ, w)

            def give(w: int) -> None:
                if todo:
                    index, item = todo.pop()
                    busy[w] = index
                    self.procs[w].stdin.write(pickle.dumps((func, item)))
                    self.procs[w].stdin.flush()

            for w in range(len(self.procs)):
                give(w)
            while busy:
                for key, _ in selector.select():
                    w = key.data
                    try:
                        ok, payload = pickle.load(self.procs[w].stdout)
                    except (EOFError, pickle.UnpicklingError):
                        code = self.procs[w].wait()
                        raise RuntimeError(
                            f"a worker process died (exit status {code}) while preparing item "
                            f"{busy.get(w)} of {len(items)}: {items[busy[w]]!r}"[:500]
                        ) from None
                    index = busy.pop(w)
                    if not ok:
                        error, remote = payload
                        raise error from _RemoteTraceback(remote)
                    results[index] = payload
                    progress(1)
                    give(w)
        return results

    def close(self) -> None:
        """Close the workers' input (they exit), then kill any still running after a grace period."""
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            with contextlib.suppress(OSError):
                proc.stdout.close()


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as the ``__cause__`` of the re-raised one."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def die_with_parent(parent: int) -> None:
    """Make this process exit when ``parent`` does: ``PR_SET_PDEATHSIG`` where available, else a watchdog."""
    libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if libc_name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc_name, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCHDOG_PERIOD_S)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def worker_main(parent: int) -> None:
    """A worker's loop: read ``(func, item)`` pickles on stdin, answer ``(ok, result or (error, traceback))``.

    Anything the task prints goes to stderr: stdout carries the answers.
    """
    die_with_parent(parent)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        serve(sys.stdin.buffer, answers)
    except (KeyboardInterrupt, BrokenPipeError):  # the main process was interrupted or is gone
        os._exit(1)


def serve(tasks, answers) -> None:
    """Answer tasks until the input closes."""
    while True:
        try:
            func, item = pickle.load(tasks)
        except EOFError:
            return
        try:
            answer = (True, func(item))
        except Exception as err:  # every failure goes back to the main process
            text = "".join(traceback.format_exception(err))
            try:
                pickle.dumps(err)
                answer = (False, (err, text))
            except Exception:
                answer = (False, (RuntimeError(f"{type(err).__name__}: {err}"), text))
        pickle.dump(answer, answers)
        answers.flush()
