"""predict.py as a process: killed and resumed scene by scene, two CPU processes (DDP), two runs on one output,
user errors as one line and status 1."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PRED, REPO, SAMAWAH, read_band

from unosat.config import compose_config
from unosat.predict.run import run


def cli(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "predict.py", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def cli_args(out: Path, *extra: str) -> list[str]:
    return [f"output={out}", f"hydra.run.dir={out.parent / ('hydra_' + out.name)}", *PRED, *extra]


@pytest.fixture(scope="module")
def resumed_run(best_ckpt, tiny_raw_session, tmp_path_factory) -> tuple[Path, dict]:
    """All six tiny scenes predicted by predict.py killed after its first scene, then run again."""
    out = tmp_path_factory.mktemp("resume") / "out"
    args = cli_args(out, f"ckpt={best_ckpt}", f"input={tiny_raw_session}")
    proc = cli(args)
    deadline = time.monotonic() + 120
    while (
        not list((out / "scenes").glob("*_mask.tif")) and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = {p.name: p.stat().st_mtime_ns for p in (out / "scenes").glob("*.tif")}
    state = json.loads((out / "predict.json").read_text())["status"]
    manifest = run(
        compose_config(
            "predict", [a for a in args if not a.startswith("hydra.")] + [f"paths.output_dir={out.parent}"]
        )
    )
    return out, {"interrupted": interrupted, "status_after_kill": state, "manifest": manifest}


@pytest.mark.slow
def test_an_interrupted_prediction_resumes_scene_by_scene(resumed_run, demo_run):
    out, info = resumed_run
    assert info["status_after_kill"] == "running"
    finished = {n for n in info["interrupted"] if n.endswith("_mask.tif")}
    assert 1 <= len(finished) < 6, "the kill did not land in the middle of the run"
    manifest = info["manifest"]
    assert manifest["status"] == "complete" and manifest["resumed"]
    skipped = {s["scene_id"] for s in manifest["scenes"] if s["skipped"]}
    assert skipped == {n.removesuffix("_mask.tif") for n in finished}
    for name, mtime in info["interrupted"].items():  # finished scenes were not redone
        if name.removesuffix("_mask.tif").removesuffix("_probability.tif") in skipped:
            assert (out / "scenes" / name).stat().st_mtime_ns == mtime
    assert len(list((out / "scenes").glob("*_mask.tif"))) == 6 and not list(out.rglob(".*tmp-*"))
    for sid in SAMAWAH:  # the same pixels as an uninterrupted run with the same settings
        for kind in ("probability", "mask"):
            np.testing.assert_array_equal(
                read_band(out / "scenes" / f"{sid}_{kind}.tif"),
                read_band(demo_run / "scenes" / f"{sid}_{kind}.tif"),
            )


@pytest.mark.slow
def test_two_cpu_processes_predict_what_one_does(resumed_run, best_ckpt, tiny_raw_session, tmp_path):
    single, _ = resumed_run
    out = tmp_path / "ddp"
    proc = cli(
        cli_args(
            out,
            f"ckpt={best_ckpt}",
            f"input={tiny_raw_session}",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
        ),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    manifest = json.loads((out / "predict.json").read_text())
    assert manifest["runtime"]["world_size"] == 2 and {s["rank"] for s in manifest["scenes"]} == {0, 1}
    for path in sorted((single / "scenes").glob("*.tif")):
        a, b = read_band(path), read_band(out / "scenes" / path.name)
        if path.name.endswith("_probability.tif"):  # threads per process may differ: allow one step of 1/254
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, path.name
        else:
            assert (a != b).mean() < 1e-3, path.name
    for path in sorted((single / "cities").glob("*.tif")):
        assert (read_band(path) != read_band(out / "cities" / path.name)).mean() < 1e-3


@pytest.mark.slow
def test_two_runs_on_one_output_refuse_each_other_cleanly(best_ckpt, tiny_raw_session, tmp_path):
    out = tmp_path / "shared"
    args = cli_args(out, f"ckpt={best_ckpt}", f"input={tiny_raw_session}", "cities=[Samawah]")
    first = cli(args)
    deadline = time.monotonic() + 180
    while not (out / ".unosat.lock").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (out / ".unosat.lock").exists(), "the first run did not start"
    first.send_signal(signal.SIGSTOP)  # holds the lock for as long as the second run needs
    try:
        second = cli(args[:1] + [f"hydra.run.dir={tmp_path / 'hydra_second'}"] + args[2:])
        _, stderr = second.communicate(timeout=180)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert re.fullmatch(
        rf"error: {re.escape(str(out))} is in use by process {first.pid} since "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC .*",
        lines[-1],
    ), stderr[-2000:]
    assert "Traceback" not in stderr
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert json.loads((out / "predict.json").read_text())["status"] == "complete"
    assert not (out / ".unosat.lock").exists()


@pytest.mark.slow
def test_user_errors_end_with_one_line_and_status_1(tmp_path):
    proc = cli(cli_args(tmp_path / "o", f"ckpt={tmp_path / 'missing.ckpt'}"))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert stderr.strip().splitlines()[-1] == f"error: checkpoint {tmp_path / 'missing.ckpt'} not found"
