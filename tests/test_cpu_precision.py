"""The CPU training precision: bf16-mixed only where oneDNN has AMX tiles (elsewhere bf16 is emulated and slower
than fp32), resolved into ``trainer.precision`` by the default trainer config, overridable like any key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from unosat.config import by_precision, compose_config
from unosat.cpu_precision import ISA_CAP_VARIABLES, cpu_has_amx, cpu_training_precision
from unosat.errors import UnosatError


@pytest.fixture
def amx(monkeypatch):
    """Set whether torch reports AMX tiles; no oneDNN cap in the environment."""
    for name in ISA_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def set_amx(present: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: present, raising=False)

    return set_amx


def trainer_precision(*overrides: str, name: str = "train") -> str:
    cfg = compose_config(name, ["paths.output_dir=/out", "paths.root_dir=/root", *overrides])
    return OmegaConf.to_container(cfg.trainer, resolve=True)["precision"]


@pytest.mark.parametrize(("present", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_bf16_only_where_the_cpu_has_amx(amx, present, expected):
    amx(present)
    assert cpu_has_amx() is present
    assert cpu_training_precision() == expected
    assert trainer_precision() == expected
    assert trainer_precision("trainer=cpu") == expected


@pytest.mark.parametrize(
    ("cap", "expected"),
    [
        ("AVX512_CORE_BF16", "32-true"),
        ("avx2", "32-true"),
        ("AVX512_CORE_AMX", "bf16-mixed"),
        ("ALL", "bf16-mixed"),
    ],
)
def test_a_onednn_cap_below_amx_means_no_amx(amx, monkeypatch, cap, expected):
    amx(True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert cpu_training_precision() == expected


def test_a_torch_without_the_probe_means_no_amx(amx, monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_training_precision() == "32-true"


def test_an_explicit_precision_and_the_gpu_trainers_are_not_changed(amx):
    amx(True)
    assert trainer_precision("trainer.precision=32-true") == "32-true"
    amx(False)
    assert trainer_precision("trainer=gpu") == "bf16-mixed"
    assert trainer_precision("trainer=ddp") == "bf16-mixed"


@pytest.mark.parametrize("entry_point", ["train.py", "predict.py", "prepare.py"])
def test_every_entry_point_resolves_its_config_from_the_command_line(entry_point, tmp_path):
    """``${unosat:...}`` is registered before Hydra composes: ``--cfg job --resolve`` prints every value."""
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, entry_point, "--cfg", "job", "--resolve", f"paths.output_dir={tmp_path}"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "${" not in out.stdout
    expected = {"train.py": cpu_training_precision(), "predict.py": "32-true"}.get(entry_point)
    if expected:
        assert f"precision: {expected}" in out.stdout


@pytest.mark.parametrize("present", [True, False])
def test_predict_is_fp32_on_any_cpu_unless_asked(amx, present):
    """Probabilities that do not depend on the CPU: predict.py's default trainer is cpu_fp32."""
    amx(present)
    assert trainer_precision(name="predict") == "32-true"
    assert trainer_precision("trainer.precision=bf16-mixed", name="predict") == "bf16-mixed"
    assert trainer_precision("trainer=default", name="predict") == cpu_training_precision()
    assert trainer_precision("trainer=gpu", name="predict") == "bf16-mixed"


def resolved(*overrides: str) -> dict:
    cfg = compose_config("train", ["paths.output_dir=/out", "paths.root_dir=/root", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize(("present", "crops", "lr"), [(True, 18432, 4.0e-3), (False, 8192, 2.0e-3)])
def test_the_default_recipe_trains_the_steps_its_precision_buys(amx, present, crops, lr):
    """bf16 on an AMX CPU makes about twice the fp32 steps in the Quickstart's time: twice the crops an epoch
    at twice the learning rate; fp32 CPUs keep the recipe that fits their time."""
    amx(present)
    cfg = resolved()
    assert (cfg["data"]["epoch_length"], cfg["optimizer"]["lr"]) == (crops, lr)
    assert isinstance(cfg["data"]["epoch_length"], int) and isinstance(cfg["optimizer"]["lr"], float)
    # an explicit precision picks its own row on any CPU; explicit values win over the table
    cfg = resolved("trainer.precision=bf16-mixed")
    assert (cfg["data"]["epoch_length"], cfg["optimizer"]["lr"]) == (18432, 4.0e-3)
    cfg = resolved("trainer.precision=32-true", "data.epoch_length=99", "optimizer.lr=1e-4")
    assert (cfg["data"]["epoch_length"], cfg["optimizer"]["lr"]) == (99, 1e-4)
    assert resolved("trainer=gpu")["data"]["epoch_length"] == 18432
    # the other models' 128 px crops: a quarter of the crops, the same pixels
    assert resolved("trainer=gpu", "model=lwrefinenet")["data"]["epoch_length"] == 4608
    assert resolved("trainer.precision=32-true", "model=fpn")["data"]["epoch_length"] == 2048


def test_a_precision_table_without_the_key_or_a_default_names_both():
    cfg = OmegaConf.create({"p": "16-mixed", "v": "${unosat_by_precision:${p},{bf16-mixed: 1, 32-true: 2}}"})
    with pytest.raises(
        InterpolationResolutionError, match=r"UnosatError.*no value for precision '16-mixed'.*"
    ):
        _ = cfg.v
    with pytest.raises(UnosatError, match=r"the table has bf16-mixed, 32-true"):
        by_precision("16-mixed", {"bf16-mixed": 1, "32-true": 2})
    cfg.p = 32  # Lightning's short forms are looked up as the names they stand for
    assert cfg.v == 2
    cfg.p = "bf16"
    assert cfg.v == 1
