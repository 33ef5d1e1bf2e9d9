"""CPU training precision: the default model's training step through SegmentationModule + Lightning Trainer in
bf16-mixed against fp32 (the baseline), measured in alternating rounds in one run, and the precision
``trainer=default`` picks on this CPU (``${unosat:cpu_precision}``, unosat/cpu_precision.py).

bf16 is only fast where oneDNN has AMX tiles. ``--isa-caps`` repeats the comparison in child processes with
oneDNN capped at lower instruction sets (``ONEDNN_MAX_CPU_ISA``), to see what a CPU without AMX would get.
Batches are random (speed does not depend on pixel values), at the training config's crop and batch size.

    python benchmarks/cpu_precision.py [--batches 12] [--rounds 3] [--isa-caps AVX512_CORE_BF16 AVX512_CORE AVX2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402
from train_step import lightning_loop  # noqa: E402

from unosat.config import compose_config  # noqa: E402
from unosat.cpu_precision import cpu_has_amx, cpu_training_precision  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed")


def measure(batches: int, rounds: int, overrides: list[str]) -> dict[str, list[float]]:
    """Samples/s of each precision in each round (alternating), for the train config with ``overrides``."""
    cfg = compose_config("train", overrides)
    batch, crop = int(cfg.data.batch_size), int(cfg.data.crop_px)
    torch.manual_seed(0)
    template = instantiate({**cfg.model, "in_channels": 3}).to(memory_format=torch.channels_last)
    data = [
        {"image": torch.randn(batch, 3, crop, crop), "mask": torch.randint(0, 2, (batch, crop, crop))}
        for _ in range(batches)
    ]
    lr = float(cfg.optimizer.lr)
    rates: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(rounds):
        for precision in PRECISIONS:
            seconds = lightning_loop(copy.deepcopy(template), data, lr, "cpu", precision, True)
            rates[precision].append(1 / seconds)
    return {"shape": [batch, 3, crop, crop], "model": cfg.model._target_, **rates}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--isa-caps", nargs="*", default=[], help="also measure with oneDNN capped at these")
    parser.add_argument("--overrides", nargs="*", default=[], help="train.py overrides (model, crop, batch)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.batches, args.rounds, args.overrides)))
        return

    runs = {"this CPU": measure(args.batches, args.rounds, args.overrides)}
    for cap in args.isa_caps:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--batches",
            str(args.batches),
            "--rounds",
            str(args.rounds),
        ]
        cmd += ["--overrides", *args.overrides] if args.overrides else []
        out = subprocess.run(
            cmd, env={**os.environ, "ONEDNN_MAX_CPU_ISA": cap}, capture_output=True, text=True, check=True
        )
        runs[f"oneDNN capped at {cap}"] = json.loads(out.stdout.strip().splitlines()[-1])

    first = next(iter(runs.values()))
    print(f"machine: {machine()}")
    print(
        f"AMX: {cpu_has_amx()}, AVX512-BF16: {torch.cpu._is_avx512_bf16_supported()}; "
        f"trainer=default picks {cpu_training_precision()}"
    )
    print(
        f"model {first['model']}, batches of {' x '.join(map(str, first['shape']))}, channels-last, "
        f"{args.batches} batches (first 2 excluded), {args.rounds} alternating rounds, medians\n"
    )
    rows = []
    for name, run in runs.items():
        fp32, bf16 = statistics.median(run["32-true"]), statistics.median(run["bf16-mixed"])
        rows.append((name, f"{fp32:.1f}", f"{bf16:.1f}", f"{bf16 / fp32:.2f}x"))
    print(table(rows, ("CPU", "fp32 samples/s (baseline)", "bf16-mixed samples/s", "bf16 / fp32")))


if __name__ == "__main__":
    main()
