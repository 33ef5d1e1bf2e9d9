"""One run per output directory: a lock file that a second run reads and a killed run cannot leave behind.

``<dir>/.unosat.lock`` holds the owner's process id, host and start time (JSON) and is held with an
exclusive ``flock`` for as long as the run lasts. The kernel drops a ``flock`` when its process dies, so a
lock file left by a killed run is *stale*: the next run finds it unlocked, says so, and takes it over. A
second run while the first is alive fails with ``<dir> is in use by process N since T``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from unosat.errors import UnosatError

log = logging.getLogger(__name__)

LOCK_NAME = ".unosat.lock"


def launched_as_rank_zero() -> bool:
    """Whether this process is rank 0 of a distributed launch, or not distributed (the one that locks)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def lock_path(directory: Path | str) -> Path:
    """The lock file of an output directory."""
    return Path(directory) / LOCK_NAME


def _read_owner(fd: int) -> dict:
    """The owner record in an open lock file (empty when unreadable: written by a run killed mid-write)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        owner = json.loads(data.decode() or "{}")
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def output_lock(directory: Path | str, what: str = "run") -> Iterator[Path]:
    """Hold the lock of ``directory`` (created if missing) for the duration of the ``with`` block.

    Raises :class:`UnosatError` ``"<dir> is in use by process N since T"`` when another live process holds
    it. A lock file whose process is gone is taken over (logged). The lock file is removed on exit.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = lock_path(directory)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read_owner(fd)
            os.close(fd)
            pid = owner.get("pid", "?")
            since = owner.get("since", "an unknown time")
            host = owner.get("host")
            where = f" on {host}" if host and host != socket.gethostname() else ""
            raise UnosatError(
                f"{directory} is in use by process {pid}{where} since {since} "
                f"({owner.get('what', 'another run')}); wait for it to finish or choose another "
                "directory"
            ) from None
        # the file may have been removed (and re-created by a third run) between open and flock: retry
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _read_owner(fd)
    if previous.get("pid"):
        log.warning(
            "%s: taking over the lock of process %s (since %s), which is no longer running",
            directory,
            previous.get("pid"),
            previous.get("since", "?"),
        )
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "what": what,
        "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(owner).encode())
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
