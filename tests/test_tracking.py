"""predict.py sends its evaluation to the training run of its checkpoint (MLflow, W&B offline)."""

from __future__ import annotations

import pytest
from conftest import predict_cfg, train_cfg

from unosat.checkpoint import load_checkpoint
from unosat.errors import UnosatError
from unosat.predict.run import run as predict
from unosat.training.run import run as train

#: end-to-end: trains networks and predicts with them (``pytest -m "not slow"`` leaves them out)
pytestmark = pytest.mark.slow

PREDICT = ["cities=[Samawah]", "evaluate=true"]


def _trained(tiny_prepared_db, tmp_path, logger: str):
    train(
        train_cfg(
            tiny_prepared_db,
            tmp_path,
            f"logger={logger}",
            *(["logger.wandb.mode=offline"] if logger == "wandb" else []),
        )
    )
    return tmp_path / "logs" / "train" / "runs" / "run" / "checkpoints" / "last.ckpt"


def test_evaluation_goes_to_the_checkpoints_mlflow_run(tiny_prepared_db, tiny_raw_session, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    ckpt = _trained(tiny_prepared_db, tmp_path, "mlflow")
    meta = load_checkpoint(ckpt)["unosat"]["mlflow"]
    manifest = predict(
        predict_cfg(
            tmp_path / "pred", f"ckpt={ckpt}", f"input={tiny_raw_session}", *PREDICT, "tracking.mlflow=true"
        )
    )
    assert manifest["tracking"] == [
        {"tracker": "mlflow", "run_id": meta["run_id"], "tracking_uri": meta["tracking_uri"]}
    ]
    client = mlflow.tracking.MlflowClient(meta["tracking_uri"])
    metrics = client.get_run(meta["run_id"]).data.metrics
    overall = manifest["evaluation"]["overall"]
    assert metrics["predict/overall/pixel_f1_building"] == pytest.approx(overall["pixel"]["f1_building"])
    assert metrics["predict/Samawah/object_tp"] == overall["object"]["tp"]
    assert [a.path for a in client.list_artifacts(meta["run_id"], "predict")] == ["predict/evaluation.json"]


def test_evaluation_goes_to_the_checkpoints_wandb_run_offline(tiny_prepared_db, tiny_raw_session, tmp_path):
    ckpt = _trained(tiny_prepared_db, tmp_path, "wandb")
    run_id = load_checkpoint(ckpt)["unosat"]["wandb_run_id"]
    out = tmp_path / "pred"
    manifest = predict(
        predict_cfg(out, f"ckpt={ckpt}", f"input={tiny_raw_session}", *PREDICT, "tracking.wandb=true")
    )
    assert manifest["tracking"] == [{"tracker": "wandb", "run_id": run_id, "mode": "offline"}]
    runs = list((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs and (runs[0] / f"run-{run_id}.wandb").stat().st_size > 0


def test_tracking_needs_evaluation_and_an_mlflow_run(best_ckpt, tiny_raw_session, tmp_path):
    ckpt = best_ckpt  # trained with logger=none
    with pytest.raises(UnosatError, match="need evaluate=true"):
        predict(
            predict_cfg(tmp_path / "a", f"ckpt={ckpt}", f"input={tiny_raw_session}", "tracking.mlflow=true")
        )
    pytest.importorskip("mlflow")
    with pytest.raises(UnosatError, match="was not trained with logger=mlflow"):
        predict(
            predict_cfg(
                tmp_path / "b", f"ckpt={ckpt}", f"input={tiny_raw_session}", *PREDICT, "tracking.mlflow=true"
            )
        )
