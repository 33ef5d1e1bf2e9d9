"""A checkpoint is data from strangers: crafted metadata must never build anything but a registered network,
and must never touch the file system. Each crafted checkpoint is refused with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from unosat.checkpoint import build_model, load_checkpoint
from unosat.config import compose_config
from unosat.errors import UnosatError
from unosat.models import LWRefineNet
from unosat.models.registry import NETWORKS, build_network, network_spec, spec_from_checkpoint
from unosat.predict.ensemble import load_model
from unosat.predict.run import run as predict

DATA = {
    "recipe": {"name": "db", "bands": ["vh", "vv", "mean"], "units": "db"},
    "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3, "fill": 0.0},
    "classes": ["background", "building"],
}


def crafted_entries(victim: Path) -> dict[str, object]:
    """Model entries an attacker might write; each would create ``victim`` if it were instantiated."""
    return {
        "unosat_function": {
            "_target_": "unosat.io.atomic.write_text_atomic",
            "_args_": [str(victim), "pwned"],
        },
        "module_attribute_path": {"_target_": "unosat.io.atomic.os.system", "_args_": [f"touch {victim}"]},
        "nested_target": {
            "_target_": "unosat.models.LWRefineNet",
            "in_channels": {"_target_": "builtins.open", "file": str(victim), "mode": "w"},
        },
        "builtins_open": {"_target_": "builtins.open", "file": str(victim), "mode": "w"},
        "not_a_dict": f"unosat.io.atomic.write_text_atomic('{victim}', 'pwned')",
        "a_list": ["unosat.io.atomic.write_text_atomic", str(victim)],
        "registry_name_with_nested_target": {
            "name": "lwrefinenet",
            "args": {"upsample_mode": {"_target_": "builtins.open", "file": str(victim), "mode": "w"}},
        },
        "registry_name_with_partial": {"name": "lwrefinenet", "args": {"_partial_": True}},
        "unregistered_name": {"name": "unosat.io.atomic.write_text_atomic", "args": {}},
        "unknown_argument": {"name": "lwrefinenet", "args": {"path": str(victim)}},
    }


def write_checkpoint(path: Path, model_entry: object) -> Path:
    torch.save(
        {"state_dict": {}, "unosat": {"model": model_entry, "data": DATA, "task": "segmentation"}}, path
    )
    return path


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("case", list(crafted_entries(Path("x"))))
def test_crafted_model_entries_are_refused_and_write_nothing(case, tmp_path):
    victim = tmp_path / "victim.txt"
    ckpt = write_checkpoint(tmp_path / f"{case}.ckpt", crafted_entries(victim)[case])
    before = files_under(tmp_path)
    with pytest.raises(UnosatError) as err:
        build_model(load_checkpoint(ckpt), ckpt)
    assert "\n" not in str(err.value) and str(ckpt) in str(err.value)
    with pytest.raises(UnosatError):
        load_model(ckpt)
    assert not victim.exists()
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("option", ["ckpt", "gate.ckpt"])
def test_predict_refuses_a_crafted_checkpoint_before_writing_anything(option, tiny_raw_session, tmp_path):
    victim = tmp_path / "victim.txt"
    entries = crafted_entries(victim)
    good = tmp_path / "good.ckpt"
    net = LWRefineNet(3, 2)
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "unosat": {
                "model": {"name": "lwrefinenet", "args": {"in_channels": 3, "num_classes": 2}},
                "data": DATA,
                "task": "segmentation",
            },
        },
        good,
    )
    for case in ("unosat_function", "module_attribute_path", "nested_target", "builtins_open", "not_a_dict"):
        evil = write_checkpoint(tmp_path / f"{case}.ckpt", entries[case])
        ckpts = (
            [f"ckpt={evil}"]
            if option == "ckpt"
            else [f"ckpt={good}", f"gate.ckpt={evil}", "gate.threshold=0.5"]
        )
        out = tmp_path / f"out_{case}"
        cfg = compose_config(
            "predict",
            [*ckpts, f"input={tiny_raw_session}", f"output={out}", f"paths.log_dir={tmp_path / 'logs'}"],
        )
        with pytest.raises(UnosatError):
            predict(cfg)
        assert not victim.exists(), case
        assert not (out / "scenes").exists()


@pytest.mark.slow
def test_the_entry_point_prints_one_line_for_a_crafted_checkpoint(tmp_path):
    victim = tmp_path / "victim.txt"
    evil = write_checkpoint(tmp_path / "evil.ckpt", crafted_entries(victim)["module_attribute_path"])
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "predict.py"),
            f"ckpt={evil}",
            f"input={tmp_path}",
            f"output={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and str(evil) in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not victim.exists()


def test_every_registered_network_round_trips_through_its_spec():
    for name, cls in NETWORKS.items():
        spec = network_spec({"_target_": f"{cls.__module__}.{cls.__qualname__}", "in_channels": 2})
        assert spec == {"name": name, "args": {"in_channels": 2}}
        assert type(build_network(spec)) is cls


def test_the_older_checkpoint_layout_with_a_registered_target_still_loads():
    assert spec_from_checkpoint({"_target_": "unosat.models.LWRefineNet", "in_channels": 3}) == {
        "name": "lwrefinenet",
        "args": {"in_channels": 3},
    }
    assert spec_from_checkpoint({"_target_": "unosat.models.gscnn.GSCNN"})["name"] == "gscnn"


def test_training_refuses_an_unregistered_model_target():
    with pytest.raises(UnosatError, match="not a registered unosat network"):
        network_spec({"_target_": "torch.nn.Identity"})
    with pytest.raises(UnosatError, match="keys starting with '_'"):
        network_spec({"_target_": "unosat.models.LWRefineNet", "upsample_mode": {"_target_": "builtins.str"}})


def test_wrongly_typed_arguments_are_one_line_errors():
    with pytest.raises(UnosatError, match="invalid arguments|must be"):
        build_network({"name": "gscnn", "args": {"aspp_rates": "abc", "in_channels": 3}})


def test_empty_and_malformed_checkpoint_files_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(UnosatError, match="not a readable PyTorch checkpoint") as err:
        load_checkpoint(empty)
    assert str(empty) in str(err.value) and "\n" not in str(err.value)
    odd = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "unosat": ["model", "data"]}, odd)
    with pytest.raises(UnosatError, match="malformed"):
        load_checkpoint(odd)
