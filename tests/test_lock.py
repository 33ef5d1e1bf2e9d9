"""One run per output directory: a second run is refused with the owner's process and start time; a lock
left by a killed run is taken over."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

from unosat.errors import UnosatError
from unosat.io.lock import LOCK_NAME, output_lock


def test_a_second_holder_is_refused_with_the_owner_and_its_start_time(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, "first run"):
        owner = json.loads((out / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid()
        with pytest.raises(UnosatError) as err:
            with output_lock(out, "second run"):
                pass
        assert re.fullmatch(
            rf"{re.escape(str(out))} is in use by process {os.getpid()} since "
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(first run\).*",
            str(err.value),
        )
    assert not (out / LOCK_NAME).exists()  # released
    with output_lock(out):  # and free again
        pass


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from unosat.io.lock import output_lock\n"
            "with output_lock(sys.argv[1], 'killed run'):\n    time.sleep(600)",
            str(out),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (out / LOCK_NAME).exists():
        time.sleep(0.05)
    time.sleep(0.2)
    with pytest.raises(UnosatError, match=rf"in use by process {holder.pid} since"):
        with output_lock(out):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_NAME).exists()  # left behind by the killed run
    with caplog.at_level(logging.WARNING, logger="unosat.io.lock"), output_lock(out):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert any(f"taking over the lock of process {holder.pid}" in r.getMessage() for r in caplog.records)
