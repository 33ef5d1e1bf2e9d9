"""Shared fixtures: tiny synthetic scenes made by the project's own generator, prepared once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# wandb must never prompt or reach the network in tests
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

REPO = Path(__file__).resolve().parents[1]

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
