"""train.py: fast_dev_run, resume, seeds, bad input, multirun, Optuna, DDP with 2 CPU processes."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, REPO, TINY_PREPARE, summary, train_cfg
from omegaconf import OmegaConf

from unosat.checkpoint import load_checkpoint
from unosat.config import compose_config
from unosat.errors import UnosatError
from unosat.training.run import run


def cli(
    args: list[str], tmp_path: Path, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, "WANDB_MODE": "offline", **(env or {})},
    )
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:])
    return proc


# ---------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_fast_dev_run(tiny_prepared_db, tmp_path):
    cfg = train_cfg(tiny_prepared_db, tmp_path, "debug=fdr")
    value = run(cfg)
    out = summary(tmp_path / "logs" / "train" / "runs" / "run")
    # fast_dev_run keeps no checkpoint: the value returned is the optimized metric as last logged
    assert "best_score" not in out and value == out["fit_metrics"]["val/iou_building"]
    assert "train/loss_step" in out["fit_metrics"] or "train/loss" in out["fit_metrics"]
    assert np.isfinite(out["fit_metrics"]["val/loss"])
    # debug=fdr writes no checkpoint (Lightning's own ModelCheckpoint wrote last.ckpt at train end)
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


@pytest.mark.slow
def test_debug_overfit_reaches_its_criterion(tiny_prepared_db, tmp_path, caplog):
    # the demo's own figure is in conf/debug/overfit.yaml (75 s, loss ratio 0.13); here on the tiny demo
    cfg = train_cfg(
        tiny_prepared_db,
        tmp_path,
        "debug=overfit",
        "trainer.max_epochs=40",
        "data.batch_size=8",
        "baseline=false",
    )
    assert cfg.trainer.overfit_batches == 3 and not cfg.scheduler and cfg.optimizer.lr == 3e-3
    with caplog.at_level("INFO", logger="unosat.training.overfit_check"):
        run(cfg)
    line = next(r.getMessage() for r in caplog.records if "overfit check" in r.getMessage())
    ratio = float(re.search(r"ratio ([0-9.]+)", line).group(1))
    assert line.startswith("overfit check PASS") and ratio <= 0.2, line


@pytest.mark.slow
def test_training_run_writes_checkpoints_grid_baseline_and_returns_the_metric(tiny_prepared_db, tmp_path):
    cfg = train_cfg(tiny_prepared_db, tmp_path, "trainer.max_epochs=2", "test=true")
    value = run(cfg)
    run_dir = tmp_path / "logs" / "train" / "runs" / "run"
    out = summary(run_dir)
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")
    # the value returned is the best epoch's validation building IoU, as logged
    assert value == pytest.approx(out["best_score"]) and value == pytest.approx(
        metrics["val/iou_building"].max()
    )
    # the baseline is what it says: building IoU on the validation pixels (each counted once) of "VV (dB) >=
    # its threshold", recomputed here pixel by pixel
    from unosat.bands import to_db
    from unosat.data import UnosatDataModule

    dm = UnosatDataModule(tiny_prepared_db, seed=0)
    dm.setup("fit")
    band = dm.recipe.bands.index("vv")
    tp = fp = fn = 0
    for i in range(len(dm.val_dataset)):
        image, mask = dm.val_dataset.read_raw(i)
        vv = image[..., band] if dm.recipe.units == "db" else to_db(image[..., band])
        valid = (mask != 255) & np.isfinite(vv)
        said = vv >= out["baseline"]["vv_threshold_db"]
        tp += int((said & (mask == 1) & valid).sum())
        fp += int((said & (mask == 0) & valid).sum())
        fn += int((~said & (mask == 1) & valid).sum())
    assert tp > 0 and out["baseline"]["val_iou_building"] == pytest.approx(tp / (tp + fp + fn), rel=1e-9)
    assert "test/iou_building" in out["test_metrics"]
    best = Path(out["best_checkpoint"])
    assert best.name.startswith("best-epoch") and (run_dir / "checkpoints" / "last.ckpt").is_file()
    # the checkpoint carries the data recipe and loads without unpickling code
    ckpt = load_checkpoint(best)
    data = ckpt["unosat"]["data"]
    assert (
        data["recipe"]["units"] == "db"
        and data["tile_size"] == 64
        and len(data["normalization"]["mean"]) == 3
    )
    assert ckpt["unosat"]["model"]["name"] == "unet" and "_target_" not in ckpt["unosat"]["model"]["args"]
    torch.load(best, weights_only=True)
    assert list((run_dir / "figures").glob("prediction_grid_epoch*.png"))
    assert list((run_dir / "figures").glob("val_confusion_epoch*.png"))
    assert (run_dir / "config_resolved.yaml").is_file()
    for column in (
        "val/iou_building",
        "val/iou_background",
        "val/miou",
        "val/precision_building",
        "val/recall_building",
        "val/f1_building",
        "train/ce_epoch",
        "train/iou_building",
        "lr-AdamW",
    ):
        assert column in metrics.columns


@pytest.mark.slow
def test_same_seed_gives_the_same_first_epoch_losses(tiny_prepared_db, tmp_path):
    losses = []
    for i in range(2):
        cfg = train_cfg(tiny_prepared_db, tmp_path, "seed=7", "baseline=false", run_name=f"r{i}")
        run(cfg)
        m = pd.read_csv(tmp_path / "logs" / "train" / "runs" / f"r{i}" / "csv" / "metrics.csv")
        losses.append(m["train/loss_step"].dropna().to_numpy())
    assert len(losses[0]) >= 2
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


@pytest.mark.slow
def test_resume_continues_epoch_optimizer_schedule_and_wandb_run(tiny_prepared_db, tmp_path):
    first = train_cfg(
        tiny_prepared_db,
        tmp_path,
        "trainer.max_epochs=1",
        "logger=wandb",
        "logger.wandb.mode=offline",
        "optimizer=sgd",
        run_name="first",
    )
    run(first)
    last = tmp_path / "logs" / "train" / "runs" / "first" / "checkpoints" / "last.ckpt"
    c1 = load_checkpoint(last)
    second = train_cfg(
        tiny_prepared_db,
        tmp_path,
        "trainer.max_epochs=2",
        "logger=wandb",
        "logger.wandb.mode=offline",
        "optimizer=sgd",
        "ckpt_path=last",
        run_name="second",
    )
    run(second)
    c2 = load_checkpoint(tmp_path / "logs" / "train" / "runs" / "second" / "checkpoints" / "last.ckpt")
    assert c1["epoch"] == 0 and c2["epoch"] == 1
    assert c2["global_step"] == 2 * c1["global_step"]
    assert c2["unosat"]["wandb_run_id"] == c1["unosat"]["wandb_run_id"]
    # the poly schedule went on from step 2 (of 4 now), it did not restart at lr0
    assert c2["lr_schedulers"][0]["last_epoch"] == c2["global_step"]
    lrs = pd.read_csv(tmp_path / "logs" / "train" / "runs" / "second" / "csv" / "metrics.csv")[
        ["step", "lr-SGD"]
    ].dropna()
    first_lr = lrs.sort_values("step")["lr-SGD"].iloc[0]
    assert first_lr == pytest.approx(0.05 * (1 - 2 / 4) ** 0.9, rel=1e-6)
    # the optimizer state (momentum buffers) was restored and updated
    assert c2["optimizer_states"][0]["state"] and c1["optimizer_states"][0]["state"]
    wandb_dirs = list((tmp_path / "logs" / "train" / "runs" / "second" / "wandb").glob("offline-run-*"))
    assert wandb_dirs and wandb_dirs[0].name.endswith(c1["unosat"]["wandb_run_id"])


@pytest.mark.slow
def test_resume_skips_a_truncated_last_ckpt_and_refuses_a_finished_run(tiny_prepared_db, tmp_path, caplog):
    import logging

    run(train_cfg(tiny_prepared_db, tmp_path, "baseline=false", run_name="first"))
    folder = tmp_path / "logs" / "train" / "runs" / "first" / "checkpoints"
    # the 1-epoch run is finished: resuming it trains nothing, and says so in one line
    with pytest.raises(
        UnosatError,
        match=r"last.ckpt: this run already finished \(1 of its 1 epochs\); to train longer "
        r"set trainer.max_epochs above 1",
    ):
        run(train_cfg(tiny_prepared_db, tmp_path, "ckpt_path=last", run_name="again"))
    best = next(folder.glob("best-*.ckpt"))
    with pytest.raises(UnosatError, match=r"completed 1 epoch\(s\), not fewer than trainer.max_epochs=1"):
        ckpt = torch.load(best, weights_only=True)
        ckpt["unosat"]["config"]["trainer"]["max_epochs"] = 5  # a run of 5 epochs stopped after 1
        torch.save(ckpt, tmp_path / "five.ckpt")
        run(train_cfg(tiny_prepared_db, tmp_path, f"ckpt_path={tmp_path / 'five.ckpt'}", run_name="lower"))
    # a kill during a non-atomic write truncated last.ckpt: resume from the whole best-* beside it
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])
    with caplog.at_level(logging.WARNING):
        run(
            train_cfg(
                tiny_prepared_db,
                tmp_path,
                "ckpt_path=last",
                "trainer.max_epochs=2",
                "baseline=false",
                run_name="second",
            )
        )
    assert f"skipping {last}: not a readable PyTorch checkpoint" in caplog.text
    assert f"using {best}, the newest checkpoint that loads (1 newer one(s) skipped)" in caplog.text
    resumed = load_checkpoint(tmp_path / "logs" / "train" / "runs" / "second" / "checkpoints" / "last.ckpt")
    assert resumed["epoch"] == 1 and resumed["global_step"] == 4


@pytest.mark.slow
def test_resume_last_with_only_a_leftover_temporary_starts_from_scratch_with_a_warning(
    tiny_prepared_db, tmp_path, caplog
):
    import logging

    # a kill during the very first checkpoint write leaves only the temporary file of the atomic write
    folder = tmp_path / "logs" / "train" / "runs" / "killed" / "checkpoints"
    folder.mkdir(parents=True)
    leftover = folder / ".last.ckpt.tmp-4242-abcd.ckpt"
    leftover.write_bytes(b"PK\x03\x04 partial")
    with caplog.at_level(logging.WARNING):
        run(
            train_cfg(
                tiny_prepared_db, tmp_path, "ckpt_path=last", "seed=5", "baseline=false", run_name="resumed"
            )
        )
    assert (f"no checkpoint that loads (skipped: {leftover}); starting from scratch") in caplog.text
    resumed = load_checkpoint(tmp_path / "logs" / "train" / "runs" / "resumed" / "checkpoints" / "last.ckpt")
    # a fresh start equals a run that was never interrupted (same seed)
    run(train_cfg(tiny_prepared_db, tmp_path, "seed=5", "baseline=false", run_name="plain"))
    plain = load_checkpoint(tmp_path / "logs" / "train" / "runs" / "plain" / "checkpoints" / "last.ckpt")
    assert resumed["epoch"] == plain["epoch"] == 0
    assert all(torch.equal(resumed["state_dict"][k], plain["state_dict"][k]) for k in plain["state_dict"])
    # weights to score, a best checkpoint, or a named file that does not load are still refused
    with pytest.raises(UnosatError, match=r"ckpt_path=best .*: no best-\*.ckpt of an earlier training run"):
        run(train_cfg(tiny_prepared_db, tmp_path / "empty", "ckpt_path=best", run_name="b"))
    with pytest.raises(UnosatError, match=r"none of the 1 checkpoint\(s\) loads"):
        (tmp_path / "x" / "logs" / "train" / "runs" / "k" / "checkpoints").mkdir(parents=True)
        (tmp_path / "x" / "logs" / "train" / "runs" / "k" / "checkpoints" / "last.ckpt").write_bytes(
            b"broken"
        )
        run(
            train_cfg(
                tiny_prepared_db, tmp_path / "x", "ckpt_path=last", "train=false", "test=true", run_name="t"
            )
        )
    with pytest.raises(UnosatError, match=r"broken.ckpt: not a readable PyTorch checkpoint"):
        (tmp_path / "broken.ckpt").write_bytes(b"PK\x03\x04")
        run(train_cfg(tiny_prepared_db, tmp_path, f"ckpt_path={tmp_path / 'broken.ckpt'}", run_name="named"))


@pytest.mark.slow
def test_test_only_scores_the_checkpoint_weights_as_a_direct_evaluation(
    best_ckpt, tiny_prepared_db, tmp_path, capsys
):
    from hydra.utils import instantiate

    from unosat.checkpoint import build_model
    from unosat.metrics import scores_from_confusion

    best = best_ckpt  # the shared LW-RefineNet run's (conftest.trained_log_dir)
    # fp32 as the direct evaluation below (the default trainer picks bf16-mixed on a CPU with AMX)
    model = ["model=lwrefinenet", "model.output_stride=4", "trainer.precision=32-true"]
    cfg = train_cfg(tiny_prepared_db, tmp_path, *model)
    assert cfg.channels_last
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")

    def direct_evaluation(path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Confusion matrix (numpy, valid pixels) of the checkpoint's network on the test tiles, and the
        building-minus-background logit of every valid pixel. Channels-last as in training (cfg.channels_last):
        another memory format sums convolutions in another order, and pixels whose two logits differ by ~1e-6
        would flip."""
        net = build_model(load_checkpoint(path)).to(memory_format=torch.channels_last)
        confusion, margins = np.zeros((2, 2), np.int64), []
        with torch.inference_mode():
            for batch in datamodule.test_dataloader():
                logits = net(batch["image"].contiguous(memory_format=torch.channels_last))
                pred, truth = logits.argmax(1).numpy().ravel(), batch["mask"].numpy().ravel()
                valid = truth != 255
                np.add.at(confusion, (truth[valid], pred[valid]), 1)
                margins.append((logits[:, 1] - logits[:, 0]).numpy().ravel()[valid])
        return confusion, np.concatenate(margins)

    # a network that calls every pixel background would pass with any weights: shift the final layer's
    # building bias so that about half the test pixels are called building, then score those weights
    ckpt = torch.load(best, weights_only=True)
    key = [
        k
        for k, v in ckpt["state_dict"].items()
        if k.startswith("net.") and k.endswith("bias") and v.shape == (2,)
    ][-1]
    ckpt["state_dict"][key][1] -= float(np.median(direct_evaluation(best)[1]))
    shifted = tmp_path / "shifted.ckpt"
    torch.save(ckpt, shifted)
    confusion, _ = direct_evaluation(shifted)
    assert (
        confusion[1].sum() > 0 and confusion[:, 1].sum() > 0.3 * confusion.sum()
    )  # buildings, predicted too
    direct = scores_from_confusion(confusion)
    assert 0.0 < direct["iou_building"] < 1.0

    capsys.readouterr()
    value = run(
        train_cfg(
            tiny_prepared_db,
            tmp_path,
            *model,
            "train=false",
            "test=true",
            f"ckpt_path={shifted}",
            run_name="test",
        )
    )
    out = summary(tmp_path / "logs" / "train" / "runs" / "test")
    assert out["test_checkpoint"] == str(shifted) and value == out["test_metrics"]["test/iou_building"]
    for key in ("iou_building", "iou_background", "precision_building", "recall_building"):
        assert out["test_metrics"][f"test/{key}"] == pytest.approx(direct[key], abs=1e-6), key
    printed = capsys.readouterr().out
    assert "test scores (test split, 5 tiles, weights: " in printed
    assert re.search(rf"^  iou_building +{value:.4f}$", printed, re.M)
    # another seed (other initial weights) scores the same: the weights come from the checkpoint
    reseeded = run(
        train_cfg(
            tiny_prepared_db,
            tmp_path,
            *model,
            "train=false",
            "test=true",
            f"ckpt_path={shifted}",
            "seed=5",
            run_name="test2",
        )
    )
    assert reseeded == pytest.approx(value, abs=1e-9)


@pytest.mark.slow
def test_five_band_dataset_trains(tiny_raw_session, tmp_path):
    from conftest import prepare_config

    from unosat.prepare import run as prepare

    out = tmp_path / "prepared_5b"
    prepare(prepare_config(tiny_raw_session, out, "bands=5b", "steps=[bands,labels,tiles,stats]"))
    cfg = train_cfg(out, tmp_path, "debug=fdr")
    run(cfg)
    ckpt_dir = tmp_path / "logs" / "train" / "runs" / "run"
    assert summary(ckpt_dir)["model"] == "unosat.models.UNet"


@pytest.mark.slow  # generates and prepares the demo, then trains
def test_demo_is_prepared_on_first_use(tmp_path):
    demo = tmp_path / "demo"
    overrides = [
        f"paths.demo_dir={demo}",
        f"data.dir={demo}/prepared_db",
        "data.prepare_overrides=[" + ",".join(f"'{o}'" for o in ["bands=db", *TINY_PREPARE]) + "]",
        "debug=fdr",
    ]
    cfg = compose_config(
        "train",
        [f"paths.log_dir={tmp_path / 'logs'}", f"paths.output_dir={tmp_path / 'out'}", *FAST, *overrides],
    )
    run(cfg)
    assert (demo / "raw" / "demo.json").is_file()
    assert (demo / "prepared_db" / "statistics.csv").is_file()


# ----------------------------------------------------------------------- bad input


def test_not_a_prepared_dataset_says_what_is_missing_and_how_to_prepare(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnosatError, match=r"missing dataset.json.*python prepare.py"):
        run(train_cfg(tmp_path / "empty", tmp_path))


def test_fold_that_names_no_city(tiny_prepared_db, tmp_path):
    with pytest.raises(UnosatError, match=r"fold\(s\) \[5\] name no city .*0: Mosul"):
        run(train_cfg(tiny_prepared_db, tmp_path, "data.val_folds=[5]"))


def test_band_count_mismatch(tiny_prepared_db, tmp_path):
    with pytest.raises(UnosatError, match=r"model.in_channels=5 but the dataset .* has 3 bands"):
        run(train_cfg(tiny_prepared_db, tmp_path, "model.in_channels=5"))


@pytest.mark.slow
def test_label_smoothing_outside_range(tiny_prepared_db, tmp_path):
    proc = cli(
        [
            f"data.dir={tiny_prepared_db}",
            f"hydra.run.dir={tmp_path / 'r'}",
            "loss.label_smoothing=1.2",
            *FAST,
        ],
        tmp_path,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "error: loss.label_smoothing must be in [0, 1), got 1.2"


@pytest.mark.slow
def test_unknown_experiment_lists_the_available_ones(tmp_path):
    proc = cli(["experiment=no_such_experiment", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert proc.returncode != 0
    text = proc.stderr + proc.stdout
    assert "Could not find 'experiment/no_such_experiment'" in text and "unosat_ce_jaccard" in text


@pytest.mark.slow
def test_checkpoint_from_another_model(best_ckpt, tiny_prepared_db, tmp_path):
    ckpt = torch.load(best_ckpt, weights_only=True)
    ckpt["unosat"]["model"] = {"name": "gscnn", "args": {"in_channels": 3, "num_classes": 2}}
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(UnosatError, match=r"trained with gscnn.*this run builds unet"):
        run(train_cfg(tiny_prepared_db, tmp_path, f"ckpt_path={other}", run_name="b"))
    not_ours = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, not_ours)
    with pytest.raises(UnosatError, match="not a unosat checkpoint"):
        run(train_cfg(tiny_prepared_db, tmp_path, f"ckpt_path={not_ours}", run_name="c"))


@pytest.mark.slow
def test_crafted_checkpoints_given_to_ckpt_path_end_with_one_line(tiny_prepared_db, tmp_path, capsys):
    from unosat.errors import exit_on_user_error
    from unosat.models import LWRefineNet

    victim = tmp_path / "victim.txt"
    weights = {f"net.{k}": v for k, v in LWRefineNet(3, 2).state_dict().items()}
    meta = {
        "model": {"name": "lwrefinenet", "args": {"in_channels": 3, "num_classes": 2}},
        "data": {},
        "task": "segmentation",
    }
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    nested = tmp_path / "nested.ckpt"
    torch.save(
        {
            "state_dict": weights,
            "unosat": {
                **meta,
                "model": {
                    "_target_": "unosat.models.LWRefineNet",
                    "in_channels": {"_target_": "builtins.open", "file": str(victim), "mode": "w"},
                },
            },
        },
        nested,
    )
    missing = tmp_path / "missing.ckpt"
    torch.save({"state_dict": dict(list(weights.items())[::2]), "unosat": meta}, missing)
    cases = {
        empty: "not a readable PyTorch checkpoint",
        nested: "keys starting with '_'",
        missing: "its weights do not fit the model of this run",
    }
    for path, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            exit_on_user_error(run)(
                train_cfg(
                    tiny_prepared_db,
                    tmp_path,
                    f"ckpt_path={path}",
                    "model=lwrefinenet",
                    "model.output_stride=4",
                    run_name=path.stem,
                )
            )
        assert exit_info.value.code == 1
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert lines[-1].startswith(f"error: {path}: ") and message in lines[-1], lines[-3:]
        assert not (path.parent / ".unosat.lock").exists()  # the resumed run's lock is released
    assert not victim.exists()


@pytest.mark.slow
def test_two_runs_cannot_resume_one_run_at_once(tmp_path):
    from unosat.io.lock import output_lock
    from unosat.training.run import resumed_run_dir

    ckpt = tmp_path / "runs" / "a" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert resumed_run_dir(ckpt) == tmp_path / "runs" / "a"
    with output_lock(tmp_path / "runs" / "a", "a first resume"):
        with pytest.raises(UnosatError, match=r"runs/a is in use by process \d+ since .*\(a first resume\)"):
            run(train_cfg(tmp_path / "unused", tmp_path, f"ckpt_path={ckpt}", run_name="b"))


# ------------------------------------------------------------------ sweeps and DDP


@pytest.mark.slow
def test_multirun_runs_each_job_in_its_own_directory(tiny_prepared_db, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli(
        [
            "-m",
            f"data.dir={tiny_prepared_db}",
            f"hydra.sweep.dir={sweep}",
            "optimizer.lr=0.001,0.004",
            "loss.label_smoothing=0,0.05",
            *[o for o in FAST if not o.startswith("trainer.max")],
            "debug=limit",
            "trainer.max_epochs=1",
            "data.num_workers=0",
        ],
        tmp_path,
    )
    assert proc.returncode == 0
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    # each combination ran once, and each job's optimiser started at its swept learning rate (the poly
    # schedule's first step is lr0) with its swept label smoothing in the loss it ran with
    seen = set()
    for job in jobs:
        resolved = OmegaConf.load(job / "config_resolved.yaml")
        lrs = pd.read_csv(job / "csv" / "metrics.csv")[["step", "lr-AdamW"]].dropna()
        first_lr = lrs.loc[lrs["step"] == 0, "lr-AdamW"].iloc[0]  # logged every step (FAST): step 0 is there
        assert first_lr == pytest.approx(resolved.optimizer.lr, rel=1e-9)
        seen.add((float(first_lr), float(resolved.loss.label_smoothing)))
    assert seen == {(0.001, 0.0), (0.001, 0.05), (0.004, 0.0), (0.004, 0.05)}


@pytest.mark.slow
def test_optuna_sweep_records_trials_and_survives_a_failed_one(tiny_prepared_db, tmp_path):
    pytest.importorskip("optuna")
    sweep = tmp_path / "optuna"
    args = [
        "-m",
        "hparams_search=optuna",
        f"data.dir={tiny_prepared_db}",
        f"hydra.sweep.dir={sweep}",
        # the grid: each value once, the failing one last or not (the sweep goes on either way)
        "hydra.sweeper.n_trials=2",
        "hydra/sweeper/sampler=grid",
        "~search_space",
        "+search_space={loss.label_smoothing:'choice(0.0,1.5)'}",
        *[o for o in FAST if not o.startswith("trainer.max")],
        "debug=limit",
        "trainer.max_epochs=1",
    ]
    proc = cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    db = sweep / "optuna.db"
    assert db.is_file()
    states = [r[0] for r in sqlite3.connect(db).execute("select state from trials order by number")]
    assert sorted(states) == ["COMPLETE", "FAIL"]
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_params == {"loss.label_smoothing": 0.0} and results.trials == {
        "COMPLETE": 1,
        "FAIL": 1,
    }
    assert results.best_value == summary(sweep / str(results.best_trial))["best_score"]
    assert "label_smoothing must be in [0, 1)" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_an_interrupted_optuna_study_finishes_its_n_trials_on_rerun(tiny_prepared_db, tmp_path):
    optuna = pytest.importorskip("optuna")
    sweep = tmp_path / "optuna"
    sweep.mkdir()
    # what a sweep killed during its second trial leaves: trial 0 complete (job directory 0), trial 1 RUNNING
    study = optuna.create_study(
        study_name="unosat", storage=f"sqlite:///{sweep}/optuna.db", direction="maximize"
    )
    done = study.ask()
    done.suggest_categorical("loss.label_smoothing", [0.0, 0.05])
    study.tell(done, 0.25)
    study.ask().suggest_categorical("loss.label_smoothing", [0.0, 0.05])  # never told: RUNNING
    for job in ("0", "1"):
        (sweep / job).mkdir()
        (sweep / job / "earlier.txt").write_text(f"job {job} of the killed sweep")
    args = [
        "-m",
        "hparams_search=optuna",
        f"data.dir={tiny_prepared_db}",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=3",
        "~search_space",
        "+search_space={loss.label_smoothing:'choice(0.0,0.05)'}",
        *[o for o in FAST if not o.startswith("trainer.max")],
        "debug=limit",
        "trainer.max_epochs=1",
    ]
    proc = cli(args, tmp_path, timeout=1200)  # two trials; 5 min on 2 heavily shared cores
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (
        sqlite3.connect(sweep / "optuna.db")
        .execute("select number, state from trials order by number")
        .fetchall()
    )
    # the killed trial is FAIL, and only the 2 missing trials ran: 3 results in all
    assert rows == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE"), (3, "COMPLETE")]
    # the new jobs were numbered after the earlier ones: nothing written into directories 0 and 1
    for job in ("0", "1"):
        assert [p.name for p in (sweep / job).iterdir()] == ["earlier.txt"]
    assert (sweep / "2" / "summary.json").is_file() and (sweep / "3" / "summary.json").is_file()
    assert "trial 1 was left RUNNING by an interrupted sweep; marked FAIL" in proc.stdout + proc.stderr
    # each new job's training run re-attached to its trial and reported its epoch's optimized_metric (pruning)
    trials = optuna.load_study(study_name="unosat", storage=f"sqlite:///{sweep}/optuna.db").trials
    for trial in trials[2:]:
        assert list(trial.intermediate_values) == [0]
        assert trial.intermediate_values[0] == pytest.approx(summary(sweep / str(trial.number))["best_score"])


def _ddp_args(data_dir: Path, run_dir: Path) -> list[str]:
    # default callbacks (checkpoints, prediction grid, learning-rate monitor) and the progress bar stay on: the
    # DDP hang came from a reduction that only rank 0's progress bar started. 2 epochs of 2 optimizer steps.
    # The 5-level U-Net the tolerances below were measured with (the default until 2026-12-05): on the 4-level
    # default, rounding grows faster through batch norm over 64 px single samples (6.6e-5 relative in the
    # second epoch's training loss, measured).
    return [
        f"data.dir={data_dir}",
        "model.widths=[16,32,64,128,256]",
        f"hydra.run.dir={run_dir}",
        "seed=3",
        "data.augment=[]",
        "data.epoch_length=4",
        "data.batch_size=1",
        "data.val_batch_size=2",
        "trainer.max_epochs=2",
        "logger=csv",
        "baseline=false",
        "trainer.precision=32-true",
        "optimizer=sgd",
        "optimizer.lr=0.01",
        "optimizer.nesterov=false",
        "loss.class_weights=[0.1,2.0]",
        "trainer.deterministic=true",
        "callbacks.prediction_grid.num_tiles=2",
        "++trainer.log_every_n_steps=1",
    ]


def epoch_metrics(run_dir: Path, keys: tuple[str, ...]) -> pd.DataFrame:
    """Per-epoch values of ``keys`` from the run's CSV log, one row per epoch."""
    m = pd.read_csv(run_dir / "csv" / "metrics.csv")
    return m.groupby("epoch")[list(keys)].first()


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_and_the_progress_bar_matches_one_process(tiny_prepared_db, tmp_path):
    # The reference sees what DDP does per optimizer step: samples 2k and 2k+1 of the same weighted draw, one
    # per forward pass (batch norm normalises each sample on its own in both), gradients averaged (gradient
    # accumulation over 2 batches of 1 here, the all-reduce over 2 ranks there). One torch thread in every
    # process: Lightning gives each DDP rank cores / ranks threads, and on CPUs whose convolution kernels sum in
    # an order that depends on the thread count (an AVX2 AMD EPYC: 1.3e-5 relative in the first epoch's loss,
    # 1.1e-3 in the second, with 2 threads in the single process) batch norm magnifies the difference.
    one_thread = {"OMP_NUM_THREADS": "1"}
    single = cli(
        [*_ddp_args(tiny_prepared_db, tmp_path / "single"), "trainer.accumulate_grad_batches=2"],
        tmp_path,
        timeout=1200,
        env=one_thread,
    )
    assert single.returncode == 0
    ddp = cli(
        [
            *_ddp_args(tiny_prepared_db, tmp_path / "ddp"),
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
        ],
        tmp_path,
        timeout=1200,
        env=one_thread,
    )
    assert ddp.returncode == 0
    assert (
        "batch norm is not synchronised across ranks" in ddp.stdout + ddp.stderr
    )  # sync_batchnorm: auto, CPU
    # one output directory for both ranks, 2 epochs, checkpoints of both
    assert not (tmp_path / "ddp" / "logs").exists() and (tmp_path / "ddp" / "summary.json").is_file()
    last = {k: load_checkpoint(tmp_path / k / "checkpoints" / "last.ckpt") for k in ("single", "ddp")}
    assert last["ddp"]["epoch"] == 1 and last["ddp"]["global_step"] == last["single"]["global_step"] == 4

    # Training: the same samples, steps, learning rates and averaged gradients give the same losses and training
    # IoU, epoch by epoch, to float rounding (measured: 2e-7 relative).
    keys = ("train/loss_epoch", "train/iou_building", "val/loss", "val/iou_building")
    one, two = epoch_metrics(tmp_path / "single", keys), epoch_metrics(tmp_path / "ddp", keys)
    print(one.to_string(), two.to_string(), sep="\n")
    assert list(one.index) == list(two.index) == [0, 1]
    np.testing.assert_allclose(two["train/loss_epoch"], one["train/loss_epoch"], rtol=1e-5)
    np.testing.assert_allclose(two["train/iou_building"], one["train/iou_building"], rtol=1e-5)
    # ... and the same weights. Not to 1e-7 after the last step: batch norm over single 64 px samples (4 x 4
    # px at 1/16) divides by the standard deviation of near-constant channels, which magnifies rounding.
    # Measured on this VM: weights equal to 2.4e-7 after 2 steps, 1.9e-4 after 4 (of weights up to 0.35);
    # with Nesterov momentum (the sgd config's default, a larger look-ahead step) 1.5e-4 after 2 steps, and
    # 0.5-1.9 % in the training loss after 16: the reason this test takes 4 plain-momentum steps.
    for name, weight in last["single"]["state_dict"].items():
        if torch.is_floating_point(weight) and "running_" not in name:
            np.testing.assert_allclose(
                last["ddp"]["state_dict"][name], weight, atol=2e-3, rtol=0, err_msg=name
            )
    # Validation: under DDP each rank scores its own share of the validation tiles (no padding, nothing twice)
    # and the confusion matrices are summed; the batch-norm running statistics are rank 0's (from its own
    # samples), so the validation scores differ from the single process's by design. What must hold: the
    # logged building IoU is that of the same weights scored by one process on the same tiles.
    rescored = cli(
        [
            f"data.dir={tiny_prepared_db}",
            f"hydra.run.dir={tmp_path / 'rescored'}",
            "model.widths=[16,32,64,128,256]",  # the network the DDP run trained (_ddp_args)
            "trainer.precision=32-true",  # and its precision
            "data.val_batch_size=2",
            "logger=csv",
            "baseline=false",
            "loss.class_weights=[0.1,2.0]",
            "train=false",
            "test=true",
            "test_split=val",
            f"ckpt_path={tmp_path / 'ddp' / 'checkpoints' / 'last.ckpt'}",
        ],
        tmp_path,
    )
    assert rescored.returncode == 0
    metrics = summary(tmp_path / "rescored")["test_metrics"]
    assert metrics["test/iou_building"] > 0
    assert metrics["test/iou_building"] == pytest.approx(two["val/iou_building"].iloc[-1], rel=1e-6)
    # (The loss is a mean of per-batch losses, and DDP batches tiles 0+2, 1+3... instead of 0+1, 2+3: the
    # validation loss is not compared.)


def test_original_experiments_use_the_originals_values():
    """experiment=unosat_ce / unosat_ce_jaccard against the UNOSAT team's configs (baseline_lwrefinenet.py,
    baseline_lwrefinenet_xentropy_jaccard.py): the values below are theirs, read from those files."""
    from hydra.utils import instantiate

    from unosat.data.transforms import compose
    from unosat.losses import CrossEntropyJaccardLoss

    ce = compose_config("train", ["experiment=unosat_ce"])
    assert (ce.optimizer.lr, ce.optimizer.weight_decay, ce.optimizer.momentum, ce.optimizer.nesterov) == (
        0.05,
        5e-4,
        0.9,
        True,
    )
    assert (ce.data.batch_size, ce.trainer.accumulate_grad_batches, ce.trainer.max_epochs) == (22, 1, 100)
    assert list(ce.data.val_folds) == [2] and list(ce.data.train_folds) == [0, 1, 3]
    assert list(ce.loss.class_weights) == [0.1, 2.0] and ce.scheduler.schedule.power == 0.9
    jac = compose_config("train", ["experiment=unosat_ce_jaccard"])
    assert (jac.optimizer.lr, jac.trainer.accumulate_grad_batches) == (0.045, 2)
    loss = instantiate(jac.loss)
    assert isinstance(loss, CrossEntropyJaccardLoss) and loss.jaccard_weight == 2.0
    assert loss.jaccard.reduction == "pooled" and loss.jaccard.classes is None
    for cfg, scale in ((ce, [0.7, 1.0]), (jac, [0.8, 1.0])):
        assert list(cfg.data.augment[0].scale) == scale
        pipeline = compose(instantiate(cfg.data.augment), seed=0)
        mask = np.full((512, 512), 255, dtype=np.uint8)
        mask[:256] = 1
        out = pipeline(image=np.zeros((512, 512, 3), np.float32), mask=mask)
        assert out["image"].shape == (480, 480, 3) and set(np.unique(out["mask"])) <= {1, 255}
