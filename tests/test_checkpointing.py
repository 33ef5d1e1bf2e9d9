"""Checkpoint writing and choosing: atomic writes through the CheckpointIO plugin, last.ckpt at every epoch
and on interruption, the newest loadable checkpoint for ckpt_path=last (unit level: Lightning's BoringModel,
no dataset; train.py-level checks are in test_train.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel, RandomDataset
from torch.utils.data import DataLoader

from unosat.checkpoint import best_of_latest_run, checkpoint_files, epochs_completed, newest_loadable
from unosat.errors import UnosatError
from unosat.training.checkpoint_io import AtomicCheckpointIO, save_atomically
from unosat.training.model_checkpoint import LastEveryEpochCheckpoint


class ConstantMetricModel(BoringModel):
    """Logs ``metric`` = 0.5 at every validation: it never improves after the first epoch, so Lightning's own
    ModelCheckpoint would keep ``last.ckpt`` at epoch 0."""

    def __init__(self, stop_at_step: int | None = None):
        super().__init__()
        self.stop_at_step = stop_at_step

    def training_step(self, batch, batch_idx):
        if self.stop_at_step is not None and self.global_step == self.stop_at_step:
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.log("metric", 0.5)
        return super().validation_step(batch, batch_idx)

    def train_dataloader(self):
        return DataLoader(RandomDataset(32, 8), batch_size=2)

    def val_dataloader(self):
        return DataLoader(RandomDataset(32, 4), batch_size=2)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["unosat"] = {"model": {"name": "boring", "args": {}}, "data": {}}


def trainer(tmp_path: Path, callback: LastEveryEpochCheckpoint, **kwargs) -> pl.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=[callback], plugins=[AtomicCheckpointIO()], **options)


def checkpoint_callback(tmp_path: Path) -> LastEveryEpochCheckpoint:
    return LastEveryEpochCheckpoint(
        dirpath=tmp_path / "checkpoints",
        filename="best-epoch{epoch:03d}",
        monitor="metric",
        mode="max",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
    )


# -------------------------------------------------------------------------------- atomic writes


def test_a_failed_write_leaves_nothing_under_the_final_name(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    seen_during_write = []

    def failing_save(obj, f):
        f.write(b"x" * 1000)  # part of the file is written, then the process "dies"
        seen_during_write.append(target.exists())
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_atomically({"a": torch.zeros(3)}, target, save=failing_save)
    assert seen_during_write == [False] and not target.exists()
    assert list(target.parent.iterdir()) == []  # the temporary is removed too


def test_a_failed_overwrite_keeps_the_previous_complete_file(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "w": torch.arange(4.0)}, target)
    staged_in = []
    real_save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):
        staged_in.append(Path(f.name).parent)
        real_save(obj, f, *args, **kwargs)
        raise KeyboardInterrupt  # a kill between writing and renaming

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.arange(8.0)}, target)
    monkeypatch.undo()
    assert staged_in == [tmp_path]  # staged beside the checkpoint, never in $TMPDIR
    assert io.load_checkpoint(target)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        "last.ckpt"
    ]


def test_reads_are_weights_only_even_when_asked_otherwise(tmp_path):
    import argparse

    path = tmp_path / "evil.ckpt"
    torch.save({"x": argparse.Namespace(a=1)}, path)  # an arbitrary pickled object: weights_only refuses it
    with pytest.raises(Exception, match="[Ww]eights only"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)


# ----------------------------------------------------------------------- last.ckpt every epoch


def test_last_ckpt_follows_every_epoch_although_the_metric_never_improves(tmp_path):
    callback = checkpoint_callback(tmp_path)
    trainer(tmp_path, callback).fit(ConstantMetricModel())
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(tmp_path / "checkpoints" / "best-epoch000.ckpt", weights_only=True)
    assert last["epoch"] == 2 and epochs_completed(last) == 3 and last["global_step"] == 12
    assert best["epoch"] == 0 and sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best-epoch000.ckpt",
        "last.ckpt",
    ]


def test_an_interrupted_run_writes_last_ckpt_at_the_step_it_reached(tmp_path):
    callback = checkpoint_callback(tmp_path)
    with pytest.raises((SystemExit, KeyboardInterrupt)):
        trainer(tmp_path, callback).fit(ConstantMetricModel(stop_at_step=6))  # during the second epoch
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6 and last["epoch"] == 1 and epochs_completed(last) == 1


def test_fast_dev_run_writes_no_checkpoint(tmp_path):
    callback = checkpoint_callback(tmp_path)
    trainer(tmp_path, callback, fast_dev_run=True).fit(ConstantMetricModel())
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


# ------------------------------------------------------------------ the newest loadable checkpoint


def test_newest_loadable_skips_a_truncated_last_and_a_leftover_temporary(tmp_path, caplog):
    callback = checkpoint_callback(tmp_path)
    trainer(tmp_path, callback, max_epochs=1).fit(ConstantMetricModel())
    folder = tmp_path / "checkpoints"
    last = folder / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # what a kill during a non-atomic write left
    (folder / ".last.ckpt.tmp-123-abcd.ckpt").write_bytes(data[:100])
    os.utime(last, (last.stat().st_mtime + 5,) * 2)  # the broken file is the newest
    candidates, temporaries = checkpoint_files([folder], "*.ckpt")
    assert [p.name for p in candidates] == ["last.ckpt", "best-epoch000.ckpt"]
    assert [p.name for p in temporaries] == [".last.ckpt.tmp-123-abcd.ckpt"]
    with caplog.at_level(logging.WARNING, logger="unosat.checkpoint"):
        path, checkpoint = newest_loadable(candidates, "ckpt_path=last", temporaries)
    assert path.name == "best-epoch000.ckpt" and checkpoint["epoch"] == 0
    text = caplog.text
    assert "skipping" in text and "last.ckpt: not a readable PyTorch checkpoint" in text
    assert ".last.ckpt.tmp-123-abcd.ckpt, a temporary file" in text and "1 newer one(s) skipped" in text
    (folder / "best-epoch000.ckpt").write_bytes(b"")
    with pytest.raises(UnosatError, match=r"none of the 2 checkpoint\(s\) loads"):
        newest_loadable(candidates, "ckpt_path=last", temporaries)
    # when asked to (ckpt_path=last while training), nothing loadable means a fresh start, every file named
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unosat.checkpoint"):
        assert newest_loadable(candidates, "ckpt_path=last", temporaries, fresh_start=True) == (None, None)
    assert (
        f"ckpt_path=last: no checkpoint that loads (skipped: {last}, {folder / 'best-epoch000.ckpt'}, "
        f"{folder / '.last.ckpt.tmp-123-abcd.ckpt'}); starting from scratch"
    ) in caplog.text


def test_the_default_checkpoint_is_the_best_of_the_latest_run_of_the_task(tmp_path, caplog):
    """``ckpt=null`` (predict.py, export): the newest best-*.ckpt that loads and was trained for the task."""

    def written(run: str, name: str, task: str | None, age_s: float, content: bytes | None = None) -> Path:
        path = tmp_path / "train" / "runs" / run / "checkpoints" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            meta = {"model": {"name": "unet", "args": {}}, "data": {}} | ({"task": task} if task else {})
            torch.save({"state_dict": {}, "unosat": meta}, path)
        else:
            path.write_bytes(content)
        os.utime(path, (1_000_000 - age_s,) * 2)
        return path

    with pytest.raises(
        UnosatError,
        match=r"ckpt=null: no best-\*.ckpt of a training run under .*train/runs; train "
        r"one with python train.py, or pass ckpt=PATH",
    ):
        best_of_latest_run(tmp_path)
    older = written("a", "best-epoch001.ckpt", None, age_s=300)  # an older checkpoint recording no task
    written("a", "last.ckpt", "segmentation", age_s=10)  # not a best-*
    assert best_of_latest_run(tmp_path) == older
    newer = written("b", "best-epoch004.ckpt", "segmentation", age_s=200)
    written("c", "best-epoch002.ckpt", "tile_classification", age_s=100)
    written("d", "best-epoch000.ckpt", "segmentation", age_s=50, content=b"truncated")
    with caplog.at_level(logging.INFO, logger="unosat.checkpoint"):
        assert best_of_latest_run(tmp_path) == newer
        assert best_of_latest_run(tmp_path, "tile_classification").parent.parent.name == "c"
    assert "best-epoch000.ckpt: not a readable PyTorch checkpoint" in caplog.text
    assert "best-epoch002.ckpt: a tile classification checkpoint" in caplog.text
    for path in (older, newer):
        path.unlink()
    with pytest.raises(
        UnosatError, match=r"none of the 2 checkpoint\(s\) loads as a segmentation checkpoint"
    ):
        best_of_latest_run(tmp_path)


# ------------------------------------------------------------------------------- SLURM requeue


def test_a_requeued_slurm_job_resumes_from_its_own_newest_loadable_checkpoint(tmp_path, monkeypatch, caplog):
    from unosat.training.run import requeued_checkpoint

    trainer(tmp_path, checkpoint_callback(tmp_path), max_epochs=2).fit(ConstantMetricModel())
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert requeued_checkpoint(tmp_path) == (None, None)  # a first start: nothing is resumed implicitly
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    path, checkpoint = requeued_checkpoint(tmp_path)
    assert path == tmp_path / "checkpoints" / "last.ckpt" and checkpoint["epoch"] == 1
    # Lightning's requeue checkpoint is newer; a truncated one is skipped with a warning
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes((tmp_path / "checkpoints" / "last.ckpt").read_bytes()[:300])
    os.utime(hpc, (hpc.stat().st_mtime + 5,) * 2)
    with caplog.at_level(logging.WARNING, logger="unosat.checkpoint"):
        assert requeued_checkpoint(tmp_path)[0] == tmp_path / "checkpoints" / "last.ckpt"
    assert f"skipping {hpc}" in caplog.text
    save_atomically(checkpoint, hpc)
    os.utime(hpc, (hpc.stat().st_mtime + 5,) * 2)
    assert requeued_checkpoint(tmp_path)[0] == hpc


def test_under_slurm_the_trainer_gets_lightnings_slurm_environment_with_auto_requeue(monkeypatch):
    import signal

    from lightning_fabric.plugins.environments import SLURMEnvironment

    from unosat.config import compose_config
    from unosat.training.run import slurm_options

    cfg = compose_config("train", ["slurm.requeue_signal=SIGUSR2"])
    for key in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    assert slurm_options(cfg) == {}
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    plugins = slurm_options(cfg)["plugins"]
    assert [type(p) for p in plugins] == [AtomicCheckpointIO, SLURMEnvironment]
    assert plugins[1].auto_requeue and plugins[1].requeue_signal == signal.SIGUSR2
    with pytest.raises(UnosatError, match="slurm.requeue_signal: unknown signal 'SIGFOO'"):
        slurm_options(compose_config("train", ["slurm.requeue_signal=SIGFOO"]))


# -------------------------------------------------------------------------- debug=overfit's check


@pytest.mark.parametrize("losses, passed", [((0.9, 0.5, 0.15), True), ((0.9, 0.5, 0.2), False)])
def test_overfit_check_compares_the_last_epoch_loss_with_the_first(losses, passed, caplog):
    from types import SimpleNamespace

    from unosat.training.overfit_check import OverfitCheck

    check = OverfitCheck(max_ratio=0.2)
    logged = []
    fake = SimpleNamespace(
        callback_metrics={},
        current_epoch=0,
        global_step=0,
        loggers=[SimpleNamespace(log_metrics=lambda m, step: logged.append(m))],
    )
    for epoch, loss in enumerate(losses):
        fake.current_epoch = epoch
        check.on_train_epoch_start(fake, None)
        fake.callback_metrics["train/loss_epoch"] = torch.tensor(loss)  # logged at the epoch's end
    with caplog.at_level(logging.INFO, logger="unosat.training.overfit_check"):
        check.on_train_end(fake, None)
    assert check.passed is passed and logged == [
        {"debug/overfit_loss_ratio": pytest.approx(losses[-1] / 0.9)}
    ]
    assert (
        "overfit check PASS" if passed else "overfit check FAIL"
    ) in caplog.text and "criterion <= 0.20" in caplog.text
    with pytest.raises(UnosatError, match=r"max_ratio must be in \(0, 1\)"):
        OverfitCheck(max_ratio=1.5)
