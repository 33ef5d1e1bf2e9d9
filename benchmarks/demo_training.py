"""The main job on the demo, timed as a user on a fresh machine would run it, per model: ``python train.py``
(the demo generated and prepared on first use, in a fresh root directory) then ``python predict.py
evaluate=true`` (the held-out city). For each model: wall seconds of both commands, the best validation
building IoU against the trivial baseline the same run reports (one global VV threshold in dB chosen on the
training tiles), and the held-out city's pixel and object scores. Also the parameter count of every model
variant.

    python benchmarks/demo_training.py [--models lwrefinenet gscnn] [--workdir /tmp/unosat-bench-demo]

Goals (issues 3 and 4): ``python train.py`` under 10 minutes on 2 CPU cores with a validation building IoU
clearly above the baseline; ``model=gscnn loss=gscnn`` within the same budget.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: the models of the demo comparison: name -> train.py overrides
MODELS = {"lwrefinenet": [], "gscnn": ["model=gscnn", "loss=gscnn"], "unet": ["model=unet"]}

#: every model variant whose size the README states: name -> train.py overrides
VARIANTS = {
    "LW-RefineNet (model=lwrefinenet, output stride 1)": ["model=lwrefinenet"],
    "LW-RefineNet, the original layout (model.output_stride=4)": [
        "model=lwrefinenet",
        "model.output_stride=4",
    ],
    "U-Net (model=unet)": ["model=unet"],
    "FPN, ResNet-50 (model=fpn)": ["model=fpn"],
    "GSCNN, MobileNetV2 (model=gscnn, default)": ["model=gscnn"],
    "GSCNN, MobileNetV2, the paper's head widths": [
        "model=gscnn",
        "model.aspp_channels=256",
        "model.decoder_channels=256",
        "model.shape_channels=[64,32,16,8]",
    ],
    "GSCNN, ResNet-50 OS8 (model=gscnn_resnet50)": ["model=gscnn_resnet50"],
    "tile classifier (model=tile_classifier)": ["model=tile_classifier"],
}


def parameter_counts() -> list[tuple]:
    from hydra.utils import instantiate

    from unosat.config import compose_config

    rows = []
    for name, overrides in VARIANTS.items():
        net = instantiate(compose_config("train", [*overrides, "model.in_channels=3"]).model)
        rows.append((name, f"{sum(p.numel() for p in net.parameters()):,}"))
    return rows


def timed(args: list[str], root: Path, log: Path) -> float:
    env = {**os.environ, "UNOSAT_ROOT": str(root), "WANDB_MODE": "offline"}
    start = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run(
            [sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=True
        )
    return time.perf_counter() - start


def newest(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no {pattern} under {root}")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unosat-bench-demo"))
    args = parser.parse_args()

    rows = []
    for name in args.models:
        root = args.workdir / name
        shutil.rmtree(root, ignore_errors=True)  # a fresh machine: no demo, no runs
        root.mkdir(parents=True)
        train_s = timed(["train.py", *MODELS[name]], root, root / "train.out")
        summary = json.loads(newest(root, "logs/train/runs/*/summary.json").read_text())
        predict_s = timed(["predict.py", "evaluate=true"], root, root / "predict.out")
        overall = json.loads(newest(root, "logs/predict/**/evaluation.json").read_text())["overall"]
        pixel, obj = overall["pixel"], overall["object"]
        rows.append(
            (
                name,
                f"{train_s:.0f}",
                f"{predict_s:.0f}",
                Path(summary["best_checkpoint"]).stem,
                f"{summary['best_score']:.3f}",
                f"{summary['baseline']['val_iou_building']:.3f}",
                f"{pixel['iou_building']:.3f}",
                f"{pixel['f1_building']:.3f}",
                f"{obj['f1']:.3f}",
            )
        )
        print(f"{name}: done ({root})", flush=True)

    print(f"\nmachine: {machine()}\n")
    print(
        table(
            rows,
            (
                "model",
                "train.py s",
                "predict.py s",
                "best checkpoint",
                "val IoU building",
                "baseline val IoU (VV threshold)",
                "held-out pixel IoU",
                "held-out pixel F1",
                "held-out object F1",
            ),
        )
    )
    print()
    print(table(parameter_counts(), ("model", "parameters")))


if __name__ == "__main__":
    main()
