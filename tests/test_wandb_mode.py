"""The W&B mode rule shared by training's logger and predict.py's tracking (:mod:`unosat.wandb_mode`)."""

from __future__ import annotations

import os

import pytest

from unosat.errors import UnosatError
from unosat.wandb_mode import resolve_wandb_mode


def test_wandb_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode() == "disabled" and resolve_wandb_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "offlne")
    with pytest.raises(UnosatError, match=r"WANDB_MODE='offlne' is not a W&B mode \(online, offline"):
        resolve_wandb_mode()
    monkeypatch.setenv("WANDB_MODE", "")  # set but empty: unset, and removed so that wandb does not reject it
    monkeypatch.setattr("unosat.wandb_mode.wandb_logged_in", lambda: False)
    assert resolve_wandb_mode() == "offline" and "WANDB_MODE" not in os.environ
