"""unosat.predict.settings: the checkpoints predict.py is given or finds, and their band recipe against a
prepared input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import predict_cfg

from unosat.errors import UnosatError
from unosat.predict.run import run


def test_checkpoint_missing_or_not_unosat(tiny_raw_session, tmp_path):
    with pytest.raises(UnosatError, match=r"checkpoint .*nope.ckpt not found"):
        run(predict_cfg(tmp_path / "o", f"ckpt={tmp_path / 'nope.ckpt'}", f"input={tiny_raw_session}"))
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(UnosatError, match=r"plain.ckpt: not a unosat checkpoint"):
        run(predict_cfg(tmp_path / "o", f"ckpt={plain}", f"input={tiny_raw_session}"))
    text = tmp_path / "text.ckpt"
    text.write_text("hello")
    with pytest.raises(UnosatError, match=r"text.ckpt: not a readable PyTorch checkpoint"):
        run(predict_cfg(tmp_path / "o", f"ckpt={text}", f"input={tiny_raw_session}"))
    with pytest.raises(UnosatError, match=r"ckpt=null: no best-\*.ckpt .* python train.py"):
        run(predict_cfg(tmp_path / "o", f"input={tiny_raw_session}", log_dir=tmp_path / "no_logs"))
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["predict.json"]  # the failure, and nothing else
    manifest = json.loads((tmp_path / "o" / "predict.json").read_text())
    assert manifest["status"] == "failed" and manifest["reason"].startswith("ckpt=null: no best-*.ckpt")


@pytest.mark.slow
def test_checkpoint_recipe_must_match_a_prepared_dataset(best_ckpt, tiny_prepared, tmp_path):
    with pytest.raises(
        UnosatError,
        match=r"best-.*ckpt was trained on band recipe 'db' but the prepared dataset .* holds "
        r"recipe '3b' \(units db vs linear\).*input=<raw dir>",
    ):
        run(predict_cfg(tmp_path / "o", f"ckpt={best_ckpt}", f"input={tiny_prepared}"))
