"""What decides a prediction's outputs: the checkpoints, the input and the settings, built and checked
before any work (:class:`Settings`; ``conf/predict.yaml``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from unosat.checkpoint import best_of_latest_run
from unosat.classes import CLASS_NAMES, TARGET, class_names
from unosat.errors import UnosatError
from unosat.io.cog import CogOptions
from unosat.io.labels import LabelsConfig
from unosat.io.provenance import canonical
from unosat.predict.aggregate import AggregateConfig
from unosat.predict.ensemble import LoadedModel
from unosat.predict.inputs import InputScene, Selection
from unosat.predict.probability import check_dtype
from unosat.predict.sliding_window import WindowConfig
from unosat.predict.tracking import TrackingConfig
from unosat.predict.vectorize import VectorizeConfig

log = logging.getLogger(__name__)


def resolve_checkpoints(value, log_dir: Path) -> list[Path]:
    """``ckpt``: a path, a list of paths, or null (the best checkpoint of the latest segmentation training
    run)."""
    if value is None or value == "":
        found = best_of_latest_run(log_dir)
        log.info("checkpoint: %s (best of the latest training run)", found)
        return [found]
    values = list(value) if isinstance(value, list | tuple | ListConfig) else [value]
    if not values:
        raise UnosatError("ckpt=[] names no checkpoint")
    return [Path(str(v)).expanduser() for v in values]


def resolve_input(cfg: DictConfig) -> tuple[Path, Selection]:
    """The input directory and which of its scenes to predict."""
    cities = list(cfg.cities) if cfg.get("cities") is not None else None
    if cfg.get("input") in (None, ""):
        path = Path(cfg.paths.demo_dir).expanduser() / "raw"
        if cities is None:
            cities = list(cfg.demo_cities)
    else:
        path = Path(str(cfg.input)).expanduser()
    fold = cfg.get("fold")
    return path, Selection(
        tuple(cities) if cities is not None else None,
        cfg.get("dataset_split"),
        int(fold) if fold is not None else None,
    )


class Settings:
    """Everything that decides the outputs, built and checked before any work."""

    def __init__(self, cfg: DictConfig):
        self.window: WindowConfig = instantiate(cfg.window)
        self.tta: str = str(cfg.tta)
        self.threshold = float(cfg.threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise UnosatError(f"threshold must be in [0, 1], got {self.threshold}")
        self.dtype = check_dtype(str(cfg.probability_dtype))
        self.block_rows = int(cfg.block_rows)
        if self.block_rows <= 0:
            raise UnosatError(f"block_rows must be positive, got {self.block_rows}")
        self.cog: CogOptions = instantiate(cfg.cog)
        self.aggregate: AggregateConfig = instantiate(cfg.aggregate)
        self.vectorize = bool(cfg.vectorize)
        self.vectorization = cfg.vectorization
        self.evaluate = bool(cfg.evaluate)
        self.evaluation = OmegaConf.to_container(cfg.evaluation, resolve=True)
        self.quicklooks = bool(cfg.quicklooks)
        self.quicklook = OmegaConf.to_container(cfg.quicklook, resolve=True)
        self.labels: LabelsConfig = instantiate(cfg.labels)
        self.labels_template = self.labels.template
        self.labels_dirs = [Path(str(d)).expanduser() for d in self.labels.dirs]
        self.precision = str(cfg.trainer.get("precision", "32-true"))
        gate = cfg.get("gate") or {}
        self.gate_ckpt = Path(str(gate.ckpt)).expanduser() if gate.get("ckpt") else None
        if self.gate_ckpt is not None and gate.get("threshold") is None:
            raise UnosatError(
                "gate.ckpt is set but gate.threshold is not: set the probability below which windows are skipped"
            )
        self.gate_threshold = float(gate.threshold) if self.gate_ckpt is not None else None
        self.gate_sha256 = ""
        self.overwrite = bool(cfg.overwrite)
        if self.evaluate and not self.vectorize:
            raise UnosatError("evaluate=true scores polygons too: it needs vectorize=true")
        self.tracking: TrackingConfig = instantiate(cfg.tracking)
        requested = (cfg.get("classes") or {}).get("names")
        self.requested_classes = class_names(requested) if requested is not None else None
        self.classes: tuple[str, ...] = CLASS_NAMES  # the checkpoints', set by resolve_classes

    @property
    def target(self) -> str:
        """The target class's name (``building`` by default): names bands, polygon products and scores."""
        return self.classes[TARGET]

    def resolve_classes(self, models: Sequence[LoadedModel]) -> None:
        """Take the class names of the segmentation checkpoints (which must agree); ``classes.names``, when
        set, must be theirs. Raises :class:`UnosatError` naming the checkpoints otherwise."""
        recorded = {m.classes: m for m in models}
        if len(recorded) > 1:
            listing = "; ".join(f"{m.path or m.name}: {list(c)}" for c, m in recorded.items())
            raise UnosatError(
                f"the checkpoints were trained on different classes ({listing}); an ensemble averages "
                "the probability of one class"
            )
        self.classes = next(iter(recorded)) if recorded else CLASS_NAMES
        if self.requested_classes is not None and self.requested_classes != self.classes:
            model = next(iter(recorded.values()))
            raise UnosatError(
                f"classes.names={list(self.requested_classes)} but checkpoint {model.path or model.name} "
                f"was trained on {list(self.classes)}; leave classes.names=null to use the checkpoint's"
            )
        if (self.tracking.wandb or self.tracking.mlflow) and not self.evaluate:
            raise UnosatError("tracking.wandb / tracking.mlflow log the evaluation: they need evaluate=true")

    def vector_config(self) -> VectorizeConfig:
        return instantiate(self.vectorization)

    def scene_params(self, scene: InputScene, models: Sequence[LoadedModel]) -> dict:
        """Parameters of a scene's probability raster."""
        params = {
            "product": "scene_probability",
            "scene_id": scene.scene_id,
            "input": scene.identity(),
            "models": [m.sha256 for m in models],
            "window": self.window.to_dict(),
            "tta": self.tta,
            "precision": self.precision,
            "dtype": self.dtype,
            "threshold": self.threshold,
        }
        if self.gate_ckpt is not None:
            params["gate"] = {"sha256": self.gate_sha256, "threshold": self.gate_threshold}
        return params

    def to_dict(self, input_dir: Path, kind: str, models: Sequence[LoadedModel]) -> dict:
        """The settings recorded in ``predict.json`` and compared on re-runs (which scenes of the input are
        predicted is not one: more cities can be predicted into the same directory later)."""
        out = {
            "input": str(input_dir.resolve()),
            "kind": kind,
            "checkpoints": [m.sha256 for m in models],
            "window": self.window.to_dict(),
            "tta": self.tta,
            "precision": self.precision,
            "threshold": self.threshold,
            "probability_dtype": self.dtype,
            "aggregate": self.aggregate.to_dict(),
            "vectorize": self.vectorize,
            "evaluate": self.evaluate,
        }
        if self.gate_ckpt is not None:
            out["gate"] = {"sha256": self.gate_sha256, "threshold": self.gate_threshold}
        if self.vectorize:
            out["vectorization"] = {
                k: v for k, v in asdict(self.vector_config()).items() if k != "block_rows"
            }
        if self.evaluate:
            out["evaluation"] = self.evaluation
        if self.classes != CLASS_NAMES:  # recorded when not the default (earlier predictions stay resumable)
            out["classes"] = list(self.classes)
        return json.loads(canonical(out))
