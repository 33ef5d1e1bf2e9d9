"""The configs' single sources: the label values (``classes.ignore_index``, ``classes.num_classes``, from the
code through ``${unosat:NAME}``), the dataset group (``data.dir`` with its ``prepare_overrides``), the tile
classifier's crop, and the one check of settings against recorded settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from unosat.classes import CLASS_NAMES, IGNORE_INDEX
from unosat.config import CONF_DIR, code_value, compose_config
from unosat.errors import UnosatError
from unosat.io.provenance import differing_keys, refuse_other_settings
from unosat.models.registry import network_spec, spec_from_checkpoint

FIXED = ["paths.output_dir=/out", "paths.root_dir=/root"]
LABEL_KEYS = ("ignore_index", "fill_mask", "num_classes")


def options(group: str) -> list[str]:
    """The options of a config group (file names under ``conf/<group>/``)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def resolved(*overrides: str, name: str = "train") -> dict:
    """The composed config, every interpolation resolved."""
    return OmegaConf.to_container(compose_config(name, [*FIXED, *overrides]), resolve=True)


def label_values(node: Any, where: str = "") -> Iterator[tuple[str, str, Any]]:
    """``(path, key, value)`` of every :data:`LABEL_KEYS` key anywhere in ``node`` (outside ``classes``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key in LABEL_KEYS and where != "classes":
                yield path, key, value
            yield from label_values(value, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from label_values(value, f"{where}.{i}")


def check_label_values(cfg: dict, ignore_index: int, num_classes: int) -> set[str]:
    """Assert every label value in ``cfg`` is the expected one; the keys found."""
    found = set()
    for path, key, value in label_values(cfg):
        expected = num_classes if key == "num_classes" else ignore_index
        assert value == expected and type(value) is int, f"{path} = {value!r}, expected {expected}"
        found.add(path)
    return found


def test_the_code_is_the_source_of_the_label_values():
    assert code_value("ignore_index") == IGNORE_INDEX == 255
    assert code_value("num_classes") == len(CLASS_NAMES) == 2
    with pytest.raises(
        UnosatError,
        match=r"\$\{unosat:classes\}: unknown name; known: ignore_index, num_classes, cpu_precision",
    ):
        code_value("classes")
    for classes in options("classes"):
        cfg = resolved(f"classes={classes}")
        assert cfg["classes"]["ignore_index"] == IGNORE_INDEX and cfg["classes"]["num_classes"] == len(
            CLASS_NAMES
        )
    assert resolved("classes=water")["classes"]["names"] == ["land", "water"]
    prepare = resolved(name="prepare")["classes"]
    assert (prepare["ignore_index"], prepare["num_classes"]) == (IGNORE_INDEX, len(CLASS_NAMES))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", [None, *options("experiment")])
def test_every_experiment_model_and_loss_passes_the_label_values_on(experiment):
    """Every experiment composes with every model and every loss (paired, the loss list turned by one per
    experiment, half of them with classes=water), and every loss's ignore_index, augmentation's fill_mask and
    model's num_classes is the code's value."""
    base = [f"experiment={experiment}"] if experiment else []
    models, losses = options("model"), options("loss")
    assert len(models) == len(losses)
    shift = ([None, *options("experiment")]).index(experiment)
    for i, model in enumerate(models):
        loss = losses[(i + shift) % len(losses)]
        classes = ["classes=water"] if i % 2 else []
        found = check_label_values(
            resolved(*base, f"model={model}", f"loss={loss}", *classes), IGNORE_INDEX, len(CLASS_NAMES)
        )
        assert "model.num_classes" in found
        assert any(p.startswith("loss.") and p.endswith("ignore_index") for p in found), loss


@pytest.mark.slow
def test_every_augmentation_and_debug_option_fills_masks_with_the_ignore_value():
    for group in ("augment", "debug"):
        for option in options(group):
            found = check_label_values(resolved(f"{group}={option}"), IGNORE_INDEX, len(CLASS_NAMES))
            assert (group, option) == ("debug", "fdr") or any(p.endswith("fill_mask") for p in found), option


@pytest.mark.slow
def test_a_changed_label_value_reaches_every_loss_augmentation_and_model():
    for loss in options("loss"):
        cfg = resolved(
            f"loss={loss}", "model=tile_classifier", "classes.ignore_index=254", "classes.num_classes=3"
        )
        found = check_label_values(cfg, 254, 3)
        assert {"model.num_classes", "data.augment.0.fill_mask", "data.val_augment.0.fill_mask"} <= found
        assert any(p.startswith("loss.") for p in found)
    assert check_label_values(resolved("debug=overfit", "classes.ignore_index=7"), 7, 2) >= {
        "data.augment.0.fill_mask"
    }


@pytest.mark.slow
def test_the_checkpoint_records_resolved_model_arguments():
    """train.py records ``network_spec`` of the resolved model config: plain numbers that predict.py and the
    export rebuild the network from (spec_from_checkpoint accepts it)."""
    for model in options("model"):
        cfg = compose_config("train", [*FIXED, f"model={model}"])
        spec = network_spec(OmegaConf.to_container(cfg.model, resolve=True))
        assert spec["args"]["num_classes"] == len(CLASS_NAMES)
        assert spec_from_checkpoint(spec) == spec


@pytest.mark.slow
def test_the_dataset_group_sets_the_directory_and_its_preparation_together():
    demo = Path("/root/data/demo")
    expected = {  # option -> (prepared directory, prepare.py overrides): what the experiments restated before
        "db": ("prepared_db", ["bands=db"]),
        "original": ("prepared_original", ["labels.all_touched=true"]),
        "original_db": ("prepared_original_db", ["bands=db", "labels.all_touched=true"]),
        "5b": ("prepared_5b", ["bands=5b", "labels.all_touched=true"]),
    }
    assert sorted(expected) == options("dataset")
    for option, (folder, overrides) in expected.items():
        data = resolved(f"dataset={option}")["data"]
        assert (Path(data["dir"]), data["prepare_overrides"]) == (demo / folder, overrides)
    by_experiment = {
        None: "db",
        "demo": "db",
        "unosat_ce": "original",
        "unosat_ce_jaccard": "original",
        "unosat_label_smoothing": "original",
        "unosat_no_sampling": "original",
        "gscnn": "original",
        "unosat_db": "original_db",
        "unosat_5b": "5b",
    }
    assert sorted(e for e in by_experiment if e) == options("experiment")
    for experiment, option in by_experiment.items():
        data = resolved(*([f"experiment={experiment}"] if experiment else []))["data"]
        assert (Path(data["dir"]), data["prepare_overrides"]) == (
            demo / expected[option][0],
            expected[option][1],
        )
    # a dataset of one's own: data.dir on the command line wins over the experiment's
    assert resolved("experiment=unosat_5b", "data.dir=/mine")["data"]["dir"] == "/mine"


@pytest.mark.slow
def test_experiments_keep_the_original_settings_they_no_longer_restate():
    cfg = resolved("experiment=unosat_ce")
    assert cfg["scheduler"]["schedule"]["power"] == 0.9 and cfg["scheduler"]["interval"] == "step"
    assert (
        cfg["optimizer"].items()
        >= {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5.0e-4}.items()
    )
    assert cfg["data"]["sampling"] == {
        "without_buildings": 0.7,
        "with_buildings": 0.3,
        "bins": None,
        "bin_weights": None,
    }
    assert cfg["trainer"]["accumulate_grad_batches"] == 1 and cfg["loss"]["label_smoothing"] == 0.0
    assert cfg["loss"]["class_weights"] == [0.1, 2.0]
    for experiment in ("gscnn", "unosat_ce_jaccard"):
        assert resolved(f"experiment={experiment}")["loss"]["class_weights"] == [0.1, 2.0]
    jaccard = resolved("experiment=unosat_ce_jaccard")["loss"]
    assert (jaccard["jaccard_weight"], jaccard["jaccard_reduction"], jaccard["jaccard_classes"]) == (
        2.0,
        "pooled",
        None,
    )
    assert resolved("experiment=demo") == resolved()


def test_the_unet_trains_on_more_smaller_crops_and_the_other_models_keep_theirs():
    """model=unet (the default) draws 32 crops of 64 px a batch, 4 x the crops an epoch: the pixels a step and the
    steps an epoch of the 128 px recipe the other models keep (GSCNN's ASPP needs its crops: rates < crop / 32)."""
    pixels = {}
    for model in ("unet", "lwrefinenet", "gscnn", "fpn"):
        data = resolved(f"model={model}", "trainer.precision=32-true")["data"]
        side = data["augment"][0]["height"]
        assert data["augment"][0]["_target_"] == "albumentations.RandomCrop" and side == data["crop_px"]
        pixels[model] = (data["batch_size"] * side**2, data["epoch_length"] // data["batch_size"])
        assert (side, data["batch_size"]) == ((64, 32) if model == "unet" else (128, 8))
    assert len(set(pixels.values())) == 1  # (131072 px a step, 256 steps an epoch) for every model
    gscnn = resolved("model=gscnn")
    assert max(gscnn["model"]["aspp_rates"]) < gscnn["data"]["crop_px"] // 32
    # command-line values win over the model's; experiment=demo (train.yaml's defaults by name) is the U-Net
    data = resolved("data.crop_px=128", "data.batch_size=8", "data.epoch_length=2048")["data"]
    assert (data["crop_px"], data["batch_size"], data["epoch_length"], data["augment"][0]["height"]) == (
        128,
        8,
        2048,
        128,
    )
    assert resolved("experiment=demo")["model"]["_target_"] == "unosat.models.UNet"


def test_the_tile_classifier_crops_its_window_with_data_crop_px():
    cfg = resolved("model=tile_classifier", "model.window_px=96")
    assert cfg["data"]["crop_px"] == 96
    assert [t["_target_"].split(".")[-1] for t in cfg["data"]["augment"]] == [
        "RandomCrop",
        "HorizontalFlip",
        "VerticalFlip",
        "RandomRotate90",
    ]
    assert (cfg["data"]["augment"][0]["height"], cfg["data"]["augment"][0]["width"]) == (96, 96)
    assert (cfg["data"]["val_augment"][0]["height"], cfg["data"]["val_augment"][0]["width"]) == (96, 96)
    assert cfg["loss"]["_target_"] == "unosat.losses.tile_bce.TileBCELoss"
    assert (
        resolved("model=tile_classifier")["data"]["augment"]
        == resolved("augment=flips_rot90", "data.crop_px=256")["data"]["augment"]
    )


def test_other_settings_are_refused_naming_the_file_and_each_key_with_both_values(tmp_path):
    recorded, current = (
        {"tta": "none", "threshold": 0.5, "old": 1},
        {"tta": "flips", "threshold": 0.5, "new": [1]},
    )
    assert differing_keys(recorded, current) == ["new", "old", "tta"]
    assert differing_keys(recorded, current, keys=current) == ["new", "tta"]
    path = tmp_path / "predict.json"
    with pytest.raises(UnosatError) as err:
        refuse_other_settings(path, "a prediction", recorded, current, "overwrite=true to redo it")
    assert str(err.value) == (
        f"{path} holds a prediction made with other settings (new: None -> [1]; old: 1 -> None; "
        "tta: 'none' -> 'flips'); overwrite=true to redo it"
    )
    refuse_other_settings(path, "a prediction", recorded, {**recorded}, "unused")  # the same settings pass
