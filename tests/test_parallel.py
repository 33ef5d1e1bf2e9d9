"""Preparation's worker processes: results in order, errors raised in the main process, and nothing left
running or in /dev/shm when the main process is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from unosat.errors import UnosatError
from unosat.prepare.parallel import map_scenes
from unosat.prepare.run import validate_steps


def test_results_keep_the_order_of_the_items():
    items = [str(i) for i in range(7)]
    assert map_scenes(int, items, 3, "test") == list(range(7)) == map_scenes(int, items, 1, "test")


@pytest.mark.slow
def test_an_error_in_a_worker_is_raised_in_the_main_process():
    with pytest.raises(UnosatError, match=r"unknown step\(s\) \['nope'\]"):
        map_scenes(validate_steps, [["bands"], ["nope"], ["stats"]], 2, "test")
    with pytest.raises(ValueError, match="invalid literal"):
        map_scenes(int, ["1", "x", "3"], 2, "test")


SCRIPT = """
import sys, time
import multiprocessing.synchronize as synchronize

record = open(sys.argv[1], "a")
original = synchronize.SemLock.__init__

def recording(self, *args, **kwargs):  # every named semaphore multiprocessing would create
    original(self, *args, **kwargs)
    record.write(str(self._semlock.name) + "\\n")
    record.flush()

synchronize.SemLock.__init__ = recording
from unosat.prepare.parallel import map_scenes
map_scenes(time.sleep, [60, 60, 60], 2, "sleep")
"""


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_main_process_ends_its_workers_and_leaks_no_semaphore(tmp_path):
    names = tmp_path / "semaphores.txt"
    names.touch()
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(names)],
        cwd=REPO,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        workers: list[int] = []
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.2)
            workers = [
                p
                for p in children_of(proc.pid)
                if "worker_main" in Path(f"/proc/{p}/cmdline").read_text()
                or "multiprocessing" in Path(f"/proc/{p}/cmdline").read_text()
            ]
        assert len(workers) >= 2, "the workers did not start"
        time.sleep(1.0)  # the workers are inside their 60 s tasks
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(running(p) for p in workers):
            time.sleep(0.1)
        assert not [p for p in workers if running(p)], "workers outlived the main process"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # then the whole group, as a batch system would
    time.sleep(0.5)
    leaked = [n for n in names.read_text().split() if Path("/dev/shm", "sem." + n.lstrip("/")).exists()]
    assert leaked == []
