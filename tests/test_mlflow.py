"""MLflow tracking (optional extra): logger=mlflow writes a local SQLite store in the run directory."""

from __future__ import annotations

import pytest
from conftest import train_cfg

from unosat.checkpoint import load_checkpoint
from unosat.training.run import run

mlflow = pytest.importorskip("mlflow")


@pytest.mark.slow
def test_training_logs_to_a_local_mlflow_store_and_the_checkpoint_knows_the_run(tiny_prepared_db, tmp_path):
    cfg = train_cfg(tiny_prepared_db, tmp_path, "logger=mlflow", "trainer.max_epochs=2")
    run(cfg)
    run_dir = tmp_path / "logs" / "train" / "runs" / "run"
    store = run_dir / "mlruns" / "mlflow.db"
    assert store.is_file()
    meta = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["unosat"]["mlflow"]
    client = mlflow.tracking.MlflowClient(meta["tracking_uri"])
    logged = client.get_run(meta["run_id"])
    assert meta["tracking_uri"] == f"sqlite:///{store}"
    history = client.get_metric_history(meta["run_id"], "val/iou_building")
    assert len(history) == 2 and all(0.0 <= m.value <= 1.0 for m in history)
    assert "baseline/val_iou_building" in logged.data.metrics
    assert logged.data.params  # the resolved config
    artifacts = [a.path for a in client.list_artifacts(meta["run_id"], "val")]
    assert any(p.endswith(".png") for p in artifacts)


@pytest.mark.slow
def test_resumed_run_continues_the_mlflow_run(tiny_prepared_db, tmp_path):
    run(train_cfg(tiny_prepared_db, tmp_path, "logger=mlflow", run_name="first"))
    first = load_checkpoint(tmp_path / "logs" / "train" / "runs" / "first" / "checkpoints" / "last.ckpt")[
        "unosat"
    ]["mlflow"]
    run(
        train_cfg(
            tiny_prepared_db,
            tmp_path,
            "logger=mlflow",
            "trainer.max_epochs=2",
            "ckpt_path=last",
            run_name="second",
        )
    )
    second = load_checkpoint(tmp_path / "logs" / "train" / "runs" / "second" / "checkpoints" / "last.ckpt")[
        "unosat"
    ]["mlflow"]
    assert second == first
    history = mlflow.tracking.MlflowClient(first["tracking_uri"]).get_metric_history(
        first["run_id"], "val/iou_building"
    )
    assert len(history) == 2  # epoch 0 from the first run, epoch 1 from the resumed one
