"""What the training crops hold: buildings per batch for crop recipes, side by side.

For each configuration (a label, then train.py overrides), the training data module that ``train.py`` would
build (the demo's prepared dataset unless ``data.dir=...`` is given; prepared first if missing) serves
``--batches`` batches with its sampler, crops and augmentations, and the table gives: the share of crops without
a building pixel, the building pixels' share of the valid (non-ignored) pixels, crops holding a building per
batch, and valid pixels per batch. The same seed draws the same tiles for every configuration.

    python benchmarks/training_crops.py                       # 8 of 128 px (uniform, a third around buildings)
                                                              # against the default 32 of 64 px
    python benchmarks/training_crops.py --config c48 data.crop_px=48 data.batch_size=56 --batches 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

from unosat.classes import IGNORE_INDEX  # noqa: E402
from unosat.config import compose_config  # noqa: E402

DEFAULT_CONFIGS = [
    ["128px_uniform", "data.crop_px=128", "data.batch_size=8", "data.crop_foreground=0"],
    ["128px", "data.crop_px=128", "data.batch_size=8"],
    ["64px (default)"],
]


def crop_statistics(overrides: list[str], batches: int, seed: int) -> tuple:
    """(crop px, batch size, share of crops without a building, building share of valid pixels, crops with a
    building per batch, valid pixels per batch) over ``batches`` training batches of the composed config."""
    cfg = compose_config("train", [*overrides, "data.num_workers=0", f"seed={seed}"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    empty, building, valid, crops = 0, 0, 0, 0
    for i, batch in enumerate(datamodule.train_dataloader()):
        if i == batches:
            break
        mask = batch["mask"].numpy().reshape(len(batch["mask"]), -1)
        per_crop = (mask == 1).sum(axis=1)
        empty += int((per_crop == 0).sum())
        building += int(per_crop.sum())
        valid += int((mask != IGNORE_INDEX).sum())
        crops += len(mask)
    n = min(batches, i + 1)
    return (
        int(cfg.data.crop_px),
        int(cfg.data.batch_size),
        f"{empty / crops:.2f}",
        f"{building / valid:.4f}",
        f"{(crops - empty) / n:.1f}",
        f"{valid / n:,.0f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", nargs="+", action="append", metavar=("LABEL", "OVERRIDE"))
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="train.py overrides for every configuration"
    )
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configs = args.config or DEFAULT_CONFIGS
    rows = [
        (label, *crop_statistics([*args.overrides, *overrides], args.batches, args.seed))
        for label, *overrides in configs
    ]
    header = (
        "config",
        "crop px",
        "batch",
        "crops without building",
        "building share",
        "crops with building / batch",
    )
    print(table(rows, (*header, "valid px / batch")))
    print(f"{args.batches} training batches each, seed {args.seed}; {machine()}")


if __name__ == "__main__":
    main()
