"""Training killed with SIGKILL at random moments, then resumed with ``ckpt_path=last``: how many trials resume
without a hand step, and whether the resumed run's final weights equal an uninterrupted run's; then a 3-trial
Optuna sweep killed mid-trial and re-run with the same sweep directory.

The baseline, measured side by side in the same run, is one uninterrupted run of the same command (same
seed, deterministic CPU, no augmentation): its duration sets the range of kill moments and its final
``last.ckpt`` is what every resumed run must reproduce bit for bit. Trial ``i`` kills either at a random
moment of the run (uniform over the baseline's duration) or, every ``--write-every``-th trial, inside a
checkpoint write: when a temporary checkpoint file appears, alternately inside the very first write (only
the temporary is left: ``ckpt_path=last`` starts from scratch with a warning) and inside a later one (beside
a complete checkpoint: the rewrite of ``last.ckpt`` or a new ``best-*``). The resume is exactly the command a
requeued job would run again: ``python train.py <same args> ckpt_path=last``.

The sweep part runs ``hparams_search=optuna`` with ``--sweep-trials`` trials (default 3), SIGKILLs the sweep
in the middle of its second trial, runs the same command again and reads the study: how many trials
finished (goal: all), the killed trial's state (goal: FAIL), and the job directories (goal: new trials in new
directories).

    python benchmarks/kill_resume.py [--trials 20] [--epochs 3] [--write-every 3] [--sweep-trials 3]
        [--workdir /tmp/kill_resume]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: the tiny demo (160 x 192 px scenes) prepared as the tests prepare it
PREPARE = [
    "demo=tiny",
    "bands=db",
    "tiling.train_size=64",
    "tiling.train_min_overlap=8",
    "tiling.test_size=128",
    "workers=1",
    "steps=[bands,labels,tiles,stats]",
]


def train_args(data: Path, log_dir: Path, run_name: str, epochs: int) -> list[str]:
    return [
        f"data.dir={data}",
        f"paths.log_dir={log_dir}",
        f"hydra.run.dir={log_dir}/train/runs/{run_name}",
        "seed=11",
        "data.augment=[]",
        "data.batch_size=4",
        "data.val_batch_size=8",
        "data.epoch_length=16",
        f"trainer.max_epochs={epochs}",
        "trainer.deterministic=true",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "logger=csv",
        "baseline=false",
        "callbacks.prediction_grid.num_tiles=0",
    ]


def train(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def kill_during(
    args: list[str], ckpt_dir: Path, delay: float | None, limit: float, first_write: bool = False
) -> tuple[str, float]:
    """Start training; SIGKILL it after ``delay`` s, or (``delay`` None) when a temporary checkpoint file
    appears in ``ckpt_dir`` beside a complete one (``first_write``: the very first temporary). Return (what
    happened, seconds)."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started = time.perf_counter()
    while proc.poll() is None:
        elapsed = time.perf_counter() - started
        # inside a write: a temporary appears while a complete checkpoint already exists (a rewrite of
        # last.ckpt or a new best-*: the case that truncated last.ckpt); see --first-write for the first one
        files = list(ckpt_dir.iterdir()) if delay is None and ckpt_dir.is_dir() else []
        temporaries = [p for p in files if p.name.startswith(".")]
        appeared = bool(temporaries) and (first_write or len(files) > len(temporaries))
        if appeared or (delay is not None and elapsed >= delay) or elapsed > limit:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            files = sorted(p.name for p in ckpt_dir.iterdir()) if ckpt_dir.is_dir() else []
            return f"killed at {elapsed:.1f} s, checkpoint folder: {files or 'empty'}", elapsed
        time.sleep(0.005 if delay is None else 0.05)
    return f"finished before the kill (exit {proc.returncode})", time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--write-every", type=int, default=3, help="every n-th trial kills inside a checkpoint write"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unosat_kill_resume"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sweep-trials", type=int, default=3, help="trials of the killed Optuna sweep (0: none)"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.workdir.resolve()
    data = work / "prepared"
    if not (data / "statistics.csv").is_file():
        subprocess.run(
            [
                sys.executable,
                "prepare.py",
                f"raw_dir={work / 'raw'}",
                f"out_dir={data}",
                f"paths.demo_dir={work}",
                *PREPARE,
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if not (work / "raw").is_dir():
            raise SystemExit(f"prepare.py did not generate {work / 'raw'}")
    print(machine())

    base_logs = work / "baseline"
    t = time.perf_counter()
    proc = train(train_args(data, base_logs, "run", args.epochs), timeout=3600)
    baseline_s = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"baseline run failed:\n{proc.stderr[-3000:]}")
    reference = final_weights(base_logs / "train" / "runs" / "run")
    print(
        f"uninterrupted run: {baseline_s:.1f} s for {args.epochs} epochs "
        f"(kill moments drawn in [0, {baseline_s:.1f}] s)"
    )

    rows, resumed_ok, equal, nothing, fresh = [], 0, 0, 0, 0
    for i in range(args.trials):
        logs = work / f"trial{i:02d}"
        inside_write = args.write_every > 0 and i % args.write_every == args.write_every - 1
        first_write = inside_write and (i // args.write_every) % 2 == 0  # alternately the very first write
        delay = None if inside_write else rng.uniform(0.0, baseline_s)
        first = train_args(data, logs, "first", args.epochs)
        what, _ = kill_during(
            first,
            logs / "train" / "runs" / "first" / "checkpoints",
            delay,
            limit=3 * baseline_s,
            first_write=first_write,
        )
        resume = train(train_args(data, logs, "resumed", args.epochs) + ["ckpt_path=last"], timeout=3600)
        text = resume.stdout + resume.stderr
        last_line = (resume.stderr.strip().splitlines() or ["?"])[-1]
        if resume.returncode == 0:
            resumed_ok += 1
            same = same_weights(final_weights(logs / "train" / "runs" / "resumed"), reference)
            equal += same
            source = next(
                (
                    line.split(": using ", 1)[1].split(",")[0]
                    for line in text.splitlines()
                    if ": using " in line
                ),
                None,
            )
            if source is None and "starting from scratch" in text:
                fresh += 1
                outcome = "nothing loadable: started from scratch (warning), final weights " + (
                    "equal" if same else "DIFFER"
                )
            else:
                outcome = f"resumed from {Path(source or '?').name}, final weights " + (
                    "equal" if same else "DIFFER"
                )
        elif "this run already finished" in last_line:  # killed after its last checkpoint: nothing left to do
            resumed_ok += 1
            same = same_weights(final_weights(logs / "train" / "runs" / "first"), reference)
            equal += same
            outcome = "already finished (one-line refusal), final weights " + ("equal" if same else "DIFFER")
        else:
            nothing += "no *.ckpt of an earlier training run" in last_line
            outcome = f"hand step needed: {last_line[:90]}"
        moment = (
            ("inside the first checkpoint write" if first_write else "inside a checkpoint write")
            if inside_write
            else f"random, {delay:.1f} s"
        )
        rows.append((i, moment, what, outcome))
        print(f"trial {i}: {rows[-1][1]}; {what}; {outcome}", flush=True)

    print()
    print(
        table(
            rows, ("trial", "kill moment", "what the kill left", "after python train.py ... ckpt_path=last")
        )
    )
    print(
        f"\nresumed without a hand step: {resumed_ok}/{args.trials}; final weights equal to the uninterrupted "
        f"run's: {equal}/{resumed_ok}; nothing loadable yet, started from scratch: {fresh}; refused: {nothing}"
    )
    if args.sweep_trials > 0:
        sweep_kill_resume(data, work / "sweep", args.sweep_trials)


def sweep_args(data: Path, sweep_dir: Path, n_trials: int) -> list[str]:
    return [
        "-m",
        "hparams_search=optuna",
        f"data.dir={data}",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra/sweeper/pruner=none",
        "~search_space",
        "+search_space={optimizer.lr:'tag(log,interval(1e-4,1e-2))'}",
        "data.augment=[]",
        "data.batch_size=4",
        "data.val_batch_size=8",
        "data.epoch_length=16",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "logger=csv",
        "baseline=false",
        "callbacks.prediction_grid.num_tiles=0",
    ]


def sweep_kill_resume(data: Path, sweep_dir: Path, n_trials: int) -> None:
    """An Optuna sweep SIGKILLed during its second trial (once job directory 1 holds a checkpoint), then the
    same command again: print the study's trial states and the job directories."""
    import optuna

    if sweep_dir.exists():
        import shutil

        shutil.rmtree(sweep_dir)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    args = sweep_args(data, sweep_dir, n_trials)
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started = time.perf_counter()
    while proc.poll() is None and not list((sweep_dir / "1" / "checkpoints").glob("*.ckpt")):
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    storage = f"sqlite:///{sweep_dir}/optuna.db"
    before = [
        (t.number, t.state.name) for t in optuna.load_study(study_name="unosat", storage=storage).trials
    ]
    print(
        f"\nOptuna sweep of {n_trials} trials "
        + (
            f"killed at {time.perf_counter() - started:.1f} s (during trial 1)"
            if killed
            else "finished before the kill"
        )
        + f": trials {before}"
    )
    t = time.perf_counter()
    again = train(args, timeout=3600)
    trials = optuna.load_study(study_name="unosat", storage=storage).trials
    finished = [t.number for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    jobs = sorted(int(p.name) for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    print(
        f"re-run (exit {again.returncode}, {time.perf_counter() - t:.1f} s): trials "
        f"{[(t.number, t.state.name) for t in trials]}; job directories {jobs}"
    )
    killed_failed = any(t.number == 1 and t.state.name == "FAIL" for t in trials)
    print(
        f"study finished {len(finished)}/{n_trials} trials on re-run; killed trial "
        f"{'FAIL' if killed_failed else 'not FAIL'}; "
        f"job directory n holds trial n: {jobs == [t.number for t in trials]}"
    )


if __name__ == "__main__":
    main()
