"""Shared fixtures: tiny synthetic scenes made by the project's own generator, prepared once per session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

# wandb must never prompt or reach the network in tests
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Register the ``slow`` marker: end-to-end tests (they train a network, predict whole scenes with a trained
    one, run an entry point in a subprocess, prepare the demo several times, or build the full-size default
    demo), and tests that take about a second or more on 2 cores because they run a whole stage (a preparation,
    an Optuna study, three exports) or compose every configuration. ``pytest -m "not slow"`` is the quick suite
    (under a minute); CI and the README's command run everything."""
    config.addinivalue_line(
        "markers",
        "slow: end-to-end test (training, whole-scene prediction, subprocesses, repeated or full-size "
        "preparation) or one of about a second or more (a whole stage, every configuration)",
    )


#: prepare.py overrides that suit the tiny demo (160 x 192 px scenes)
TINY_PREPARE = [
    "demo=tiny",
    "tiling.train_size=64",
    "tiling.train_min_overlap=8",
    "tiling.test_size=128",
    "workers=1",
    "block_rows=48",
    "report.quicklook_px=96",
    "report.samples_per_class=2000",
    "report.tiles_per_scene=3",
    "report.histogram_bins=20",
    "report.dpi=40",
]


def prepare_config(raw_dir: Path, out_dir: Path, *overrides: str):
    """The composed prepare config for the tiny demo, with extra overrides."""
    from unosat.config import compose_config

    return compose_config("prepare", [f"raw_dir={raw_dir}", f"out_dir={out_dir}", *TINY_PREPARE, *overrides])


@pytest.fixture(scope="session")
def tiny_spec():
    from unosat.config import compose_config
    from unosat.synthetic import DemoSpec

    return DemoSpec.from_config(compose_config("prepare", ["demo=tiny"]).demo)


@pytest.fixture(scope="session")
def tiny_raw_session(tmp_path_factory, tiny_spec) -> Path:
    from unosat.synthetic import generate_demo

    return generate_demo(tmp_path_factory.mktemp("tiny") / "raw", tiny_spec)


@pytest.fixture
def tiny_raw(tiny_raw_session, tmp_path) -> Path:
    """A private copy of the tiny raw scenes, free to break."""
    return Path(shutil.copytree(tiny_raw_session, tmp_path / "raw"))


@pytest.fixture(scope="session")
def tiny_prepared(tiny_raw_session, tmp_path_factory) -> Path:
    """The tiny demo prepared with the default (3b linear) recipe. Read-only for tests."""
    from unosat.prepare import run

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    run(prepare_config(tiny_raw_session, out))
    return out


@pytest.fixture(scope="session")
def tiny_prepared_db(tiny_raw_session, tmp_path_factory) -> Path:
    """The tiny demo prepared with the dB recipe (what training uses by default). Read-only for tests."""
    from unosat.prepare import run

    out = tmp_path_factory.mktemp("prepared_db") / "prepared_db"
    run(prepare_config(tiny_raw_session, out, "bands=db", "steps=[bands,labels,tiles,stats]"))
    return out


def nothing_predicted(out: Path) -> bool:
    """True when a refused predict run left nothing in ``out`` but, at most, its failed-run record
    (``predict.json`` with ``"status": "failed"``, issue 17's failure hygiene)."""
    import json

    if not out.exists():
        return True
    names = {p.name for p in out.iterdir()}
    return names == {"predict.json"} and json.loads((out / "predict.json").read_text())["status"] == "failed"


# ------------------------------------------------------------------------------ training (train.py)

#: small and fast settings for the tiny demo (64 px tiles)
FAST = [
    "data.batch_size=4",
    "data.val_batch_size=8",
    "data.epoch_length=8",
    "data.augment.0.height=48",
    "data.augment.0.width=48",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "callbacks.prediction_grid.num_tiles=2",
    "logger=csv",
]


def train_cfg(data_dir: Path, tmp_path: Path, *overrides: str, run_name: str = "run"):
    """The composed train config on ``data_dir``, logging under ``tmp_path``, with :data:`FAST` settings."""
    from unosat.config import compose_config

    return compose_config(
        "train",
        [
            f"data.dir={data_dir}",
            f"paths.log_dir={tmp_path / 'logs'}",
            f"paths.output_dir={tmp_path / 'logs' / 'train' / 'runs' / run_name}",
            *FAST,
            *overrides,
        ],
    )


def summary(run_dir: Path) -> dict:
    """A training run's ``summary.json``."""
    return json.loads((run_dir / "summary.json").read_text())


# ----------------------------------------------------------------------------- prediction (predict.py)

#: small windows for the tiny demo's 160 x 192 px scenes: 3 x 3 windows per scene
PRED = ["window.size=96", "window.overlap=32", "window.batch_size=4", "cog.blocksize=128", "block_rows=64"]
SAMAWAH = ("38RNV_20150426t145831_ASC", "38RNV_20150428t030958_DES")


def predict_cfg(out: Path, *overrides: str, log_dir: Path | None = None):
    """The composed predict config writing to ``out``, with :data:`PRED` windows."""
    from unosat.config import compose_config

    extra = [f"paths.log_dir={log_dir}"] if log_dir else []
    return compose_config(
        "predict", [f"output={out}", f"paths.output_dir={out.parent / 'hydra'}", *PRED, *extra, *overrides]
    )


#: the demo run (:func:`demo_run`) also scores against the labels and draws quicklooks
DEMO_RUN_OVERRIDES = ["evaluate=true", "quicklooks=true", "quicklook.max_px=96"]


def read_band(path: Path) -> np.ndarray:
    """Band 1 of a raster."""
    with rasterio.open(path) as src:
        return src.read(1)


def toy_checkpoint(path: Path, raw_input: dict | None) -> Path:
    """An untrained LW-RefineNet checkpoint on the dB recipe recording ``raw_input`` (None: an older
    checkpoint that records none)."""
    import torch

    from unosat.models import LWRefineNet

    torch.manual_seed(0)
    net = LWRefineNet(3, 2)
    data = {
        "recipe": {"name": "db", "bands": ["vh", "vv", "mean"], "units": "db", "db_floor": 1e-8},
        "normalization": {"mean": [-17.0, -10.0, -12.0], "std": [6.0, 6.0, 6.0], "fill": 0.0},
        "classes": ["background", "building"],
    }
    if raw_input is not None:
        data["raw_input"] = raw_input
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "unosat": {
                "model": {"name": "lwrefinenet", "args": {"in_channels": 3, "num_classes": 2}},
                "data": data,
                "task": "segmentation",
            },
        },
        path,
    )
    return path


@pytest.fixture(scope="session")
def trained_log_dir(tiny_prepared_db, tmp_path_factory) -> Path:
    """The log dir (``paths.log_dir``) of the one segmentation run the tests share: a tiny LW-RefineNet
    (output stride 4) trained by train.py on the dB demo for one limited epoch, its best checkpoint
    sharpened (:func:`sharpen`). Read-only for tests; tests of training itself train their own."""
    from unosat.training.run import run as train

    root = tmp_path_factory.mktemp("trained")
    # LW-RefineNet at output_stride 4: the layout sharpen() rescales (its classifier is decoder.classifier)
    train(
        train_cfg(
            tiny_prepared_db,
            root,
            "model=lwrefinenet",
            "model.output_stride=4",
            "baseline=false",
            "debug=limit",
            "trainer.max_epochs=1",
            "logger=none",
            "callbacks.prediction_grid=null",
            "callbacks.learning_rate_monitor=null",
        )
    )
    sharpen(
        next((root / "logs" / "train" / "runs" / "run" / "checkpoints").glob("best-*.ckpt")), tiny_prepared_db
    )
    return root / "logs"


@pytest.fixture(scope="session")
def best_ckpt(trained_log_dir) -> Path:
    """The shared segmentation run's best checkpoint (see :func:`trained_log_dir`). Read-only for tests."""
    return next((trained_log_dir / "train" / "runs" / "run" / "checkpoints").glob("best-*.ckpt"))


@pytest.fixture(scope="session")
def demo_run(trained_log_dir, tiny_raw_session, tmp_path_factory) -> Path:
    """The output directory of :func:`predict_demo`, once per session. Read-only for tests (those that run
    predict.py on a finished prediction again make their own)."""
    return predict_demo(tmp_path_factory.mktemp("demo_run"), trained_log_dir, tiny_raw_session)


def predict_demo(root: Path, log_dir: Path, raw_dir: Path) -> Path:
    """python predict.py with no input and no ckpt, in ``root``: the demo's test cities (``raw_dir`` as the
    demo's raw scenes), the latest run's best checkpoint under ``log_dir``. Returns its output directory."""
    from unosat.predict.run import run

    (root / "demo").mkdir()
    (root / "demo" / "raw").symlink_to(raw_dir, target_is_directory=True)
    run(predict_cfg(root / "out", f"paths.demo_dir={root / 'demo'}", *DEMO_RUN_OVERRIDES, log_dir=log_dir))
    return root / "out"


def sharpen(path: Path, dataset: Path) -> None:
    """Give a checkpoint written by train.py a network whose map follows the input.

    The tiny demo trains too briefly here: that network's map is a constant plus a pattern fixed to the window
    (its encoder's last features no longer depend on the input). Its weights are replaced by PyTorch's
    default initialisation (features that follow the input), with the classifier scaled so the building
    logit varies with a std of 2 around 0 on a demo scene. Format and metadata stay train.py's."""
    import torch

    from unosat.bands import Normalization
    from unosat.checkpoint import NET_PREFIX, build_model
    from unosat.prepared import PreparedDataset

    ckpt = torch.load(path, weights_only=True)
    torch.manual_seed(0)
    net = build_model(ckpt, path)
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    net.eval()
    with rasterio.open(PreparedDataset(dataset).bands_path(SAMAWAH[0])) as src:
        stack = src.read()
    x = torch.from_numpy(
        Normalization.from_dict(ckpt["unosat"]["data"]["normalization"]).apply(stack, channel_axis=0)
    )
    classifier = net.decoder.classifier
    with torch.inference_mode():
        logits = net(x[None])[0]
        from_weights = (logits[1] - logits[0] - (classifier.bias[1] - classifier.bias[0]))[
            torch.from_numpy(np.isfinite(stack).all(0))
        ]
        k = 2.0 / float(from_weights.std())
        classifier.weight.mul_(k)
        classifier.bias.copy_(torch.tensor([0.0, -k * float(from_weights.mean())]))
    ckpt["state_dict"].update({NET_PREFIX + key: value for key, value in net.state_dict().items()})
    torch.save(ckpt, path)


# ------------------------------------------------------------------------------ rasters written by tests

#: the grid of the evaluation tests' masks
MASK_CRS = "EPSG:32638"
MASK_TRANSFORM = from_origin(500000.0, 3700300.0, 10.0, 10.0)


def write_mask(path, mask, transform=MASK_TRANSFORM):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=mask.shape[1],
        height=mask.shape[0],
        count=1,
        dtype="uint8",
        crs=MASK_CRS,
        transform=transform,
        nodata=255,
    ) as dst:
        dst.write(mask.astype(np.uint8), 1)
    return path


def numpy_confusion(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    valid = pred != 255
    t, p = truth[valid].astype(bool), pred[valid] == 1
    return np.array([[np.sum(~t & ~p), np.sum(~t & p)], [np.sum(t & ~p), np.sum(t & p)]])


#: the size and grids of the real-product fixtures (test_real_products, test_discovery_metadata)
ROWS, COLS = 64, 80
UTM = CRS.from_epsg(32638)
UTM_TRANSFORM = Affine(10, 0, 421000, 0, -10, 3693000)
WGS84 = CRS.from_epsg(4326)
HYP3 = "S1A_IW_20190917T030900_DVP_RTC10_G_gpuned_7370"


def backscatter(seed: int, units: str = "linear") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pols = {
        pol: rng.gamma(4.4, level / 4.4, (ROWS, COLS)).astype("float32")
        for pol, level in (("vv", 0.15), ("vh", 0.014))
    }
    if units == "db":
        pols = {pol: (10 * np.log10(v)).astype("float32") for pol, v in pols.items()}
    return pols


def write_product(
    path: Path, bands: list[np.ndarray], crs, transform, nodata=None, driver="GTiff", dtype="float32"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver=driver,
        width=COLS,
        height=ROWS,
        count=len(bands),
        dtype=dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        for i, band in enumerate(bands, start=1):
            dst.write(band, i)
    return path
