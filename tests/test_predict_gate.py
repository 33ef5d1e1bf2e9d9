"""unosat.predict.gate (issue 6): a tile classifier skips windows before segmentation; tile classifiers and
segmentation checkpoints are not confused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import predict_cfg, train_cfg

from unosat.bands import BandRecipe, Normalization
from unosat.errors import UnosatError
from unosat.predict.distributed import Runtime
from unosat.predict.ensemble import LoadedModel
from unosat.predict.run import run


@pytest.fixture(scope="module")
def gate_ckpt(tiny_prepared_db, tmp_path_factory) -> Path:
    """A tiny tile classifier trained by train.py."""
    from unosat.training.run import run as train

    root = tmp_path_factory.mktemp("gate")
    train(
        train_cfg(
            tiny_prepared_db,
            root,
            "model=tile_classifier",
            "debug=limit",
            "trainer.max_epochs=1",
            "logger=csv",
            "model.window_px=32",
            "data.augment.0.height=${model.window_px}",
            "data.augment.0.width=${model.window_px}",
        )
    )
    return next((root / "logs" / "train" / "runs" / "run" / "checkpoints").glob("best-*.ckpt"))


def test_gate_cells_cover_the_window():
    from unosat.predict.gate import cell_starts, window_cells

    assert cell_starts(512, 256) == [0, 256] and cell_starts(100, 256) == [0] and cell_starts(256, 256) == [0]
    assert cell_starts(600, 256) == [0, 172, 344]  # 3 cells, evenly spread, the last ends at the border
    x = np.arange(2 * 1 * 80 * 40, dtype=np.float32).reshape(2, 1, 80, 40)
    cells = window_cells(x, 32)
    assert cells.shape == (2, 3 * 2, 1, 32, 32)
    np.testing.assert_array_equal(
        cells[1, 5], x[1, :, 48:80, 8:40]
    )  # last row, last column: bottom-right corner
    assert window_cells(x, None).shape == (2, 1, 1, 80, 40)


def test_gate_skips_a_window_only_when_every_cell_is_empty():
    """A classifier of 16 px windows that sees a building where any pixel is > 0.5: a 48 px window with one
    bright pixel is kept wherever the pixel lies, even where averaging over the window would dilute it."""
    from unosat.predict.gate import TileGate
    from unosat.predict.sliding_window import WindowBatch

    class BrightPixelClassifier(torch.nn.Module):
        task, window_px = "tile_classification", 16

        def forward(self, x):
            assert x.shape[-2:] == (16, 16)
            return (x.amax(dim=(1, 2, 3)) > 0.5).float()[:, None] * 20 - 10

    model = LoadedModel(
        "bright",
        BrightPixelClassifier(),
        BandRecipe("vv", ("vv",), "db"),
        Normalization(mean=(0.0,), std=(1.0,)),
    )
    gate = TileGate(model, threshold=0.5, runtime=Runtime(channels_last=False), group=0)
    x = np.zeros((4, 1, 48, 48), dtype=np.float32)
    x[1, 0, 47, 47] = 1.0  # bottom-right corner cell
    x[2, 0, 20, 30] = 1.0  # a middle cell
    x[3] = 0.4  # dim everywhere: no building
    batch = WindowBatch(
        rows=np.zeros(4, int), cols=np.zeros(4, int), valid=np.ones((4, 48, 48), bool), inputs=[x]
    )
    assert gate(batch).tolist() == [True, False, False, True]
    assert gate.probabilities[1] > 0.99 and gate.probabilities[0] < 0.01


def _gated(out: Path, best_ckpt: Path, tiny_raw_session: Path, *overrides: str) -> dict:
    return run(
        predict_cfg(
            out,
            f"ckpt={best_ckpt}",
            f"input={tiny_raw_session}",
            "cities=[Samawah]",
            "vectorize=false",
            *overrides,
        )
    )


@pytest.mark.slow
def test_gate_that_calls_every_window_empty_writes_background_without_segmenting(
    best_ckpt, gate_ckpt, tiny_raw_session, tmp_path
):
    manifest = _gated(
        tmp_path / "out", best_ckpt, tiny_raw_session, f"gate.ckpt={gate_ckpt}", "gate.threshold=1.0"
    )
    assert manifest["gate"]["threshold"] == 1.0 and manifest["settings"]["gate"]["sha256"]
    for rec in manifest["scenes"]:
        assert rec["windows_predicted"] == 0 and rec["forward_passes"] == 0
        assert rec["windows_skipped"]["TileGate"] == rec["windows"] - rec["windows_skipped"].get(
            "NodataSkip", 0
        )
        with rasterio.open(rec["probability"]) as src:
            prob = src.read(1)
        with rasterio.open(rec["mask"]) as src:
            mask = src.read(1)
        valid = prob != 255
        assert valid.any() and (prob[valid] == 0).all()  # probability 0, not nodata
        assert set(np.unique(mask)) <= {0, 255} and ((mask == 255) == ~valid).all()


@pytest.mark.slow
def test_gate_that_skips_nothing_changes_nothing(best_ckpt, gate_ckpt, tiny_raw_session, tmp_path):
    plain = _gated(tmp_path / "plain", best_ckpt, tiny_raw_session)
    gated = _gated(
        tmp_path / "gated", best_ckpt, tiny_raw_session, f"gate.ckpt={gate_ckpt}", "gate.threshold=0.0"
    )
    for a, b in zip(plain["scenes"], gated["scenes"]):
        assert b["windows_skipped"].get("TileGate", 0) == 0
        with rasterio.open(a["probability"]) as sa, rasterio.open(b["probability"]) as sb:
            np.testing.assert_array_equal(sa.read(), sb.read())


@pytest.mark.slow
def test_gate_and_segmentation_checkpoints_are_not_confused(best_ckpt, gate_ckpt, tiny_raw_session, tmp_path):
    with pytest.raises(UnosatError, match="not a tile classifier"):
        _gated(tmp_path / "a", best_ckpt, tiny_raw_session, f"gate.ckpt={best_ckpt}")
    with pytest.raises(UnosatError, match="tile classification model, not a segmentation model"):
        _gated(tmp_path / "b", gate_ckpt, tiny_raw_session)


@pytest.mark.slow
def test_default_checkpoint_is_the_latest_segmentation_run(trained_log_dir, gate_ckpt, best_ckpt, tmp_path):

    from unosat.predict.settings import resolve_checkpoints

    logs = Path(shutil.copytree(trained_log_dir, tmp_path / "logs"))
    later = logs / "train" / "runs" / "z_tile_classifier" / "checkpoints"
    later.mkdir(parents=True)
    shutil.copy(gate_ckpt, later / gate_ckpt.name)  # newer, but a tile classifier
    (found,) = resolve_checkpoints(None, logs)
    assert found.name == best_ckpt.name and "z_tile_classifier" not in str(found)
