"""Training throughput: LW-RefineNet through SegmentationModule + Lightning Trainer against a bare PyTorch
loop over the same model, batches and optimizer, measured alternately in one run (goal: Lightning
overhead <= 5 %); and the data module's throughput (tiles/s with augmentation, one worker) against the
model's consumption, i.e. how many DataLoader workers keep the model fed. With a GPU: samples/s through the
Trainer at 512 px for fp32, bf16-mixed and bf16-mixed + channels_last (``--precisions-on-cpu`` runs that table
on the CPU, to check it).

    python benchmarks/train_step.py [--batches 12] [--rounds 3] [--batch-size 8] [--crop 192]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import demo_dataset, machine, table  # noqa: E402

from unosat.config import compose_config  # noqa: E402
from unosat.losses import CrossEntropyJaccardLoss  # noqa: E402
from unosat.models import LWRefineNet  # noqa: E402
from unosat.training.module import SegmentationModule  # noqa: E402

WARMUP = 2


def bare_loop(net: torch.nn.Module, batches: list[dict], lr: float) -> float:
    """Seconds per sample of a plain loop (forward, loss, backward, step), warm-up batches excluded."""
    net.train()
    loss_fn = CrossEntropyJaccardLoss()
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    times = []
    for b in batches:
        t = time.perf_counter()
        x = b["image"].contiguous(memory_format=torch.channels_last)
        loss = loss_fn(net(x), b["mask"])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sum(times[WARMUP:]) / sum(len(b["image"]) for b in batches[WARMUP:])


class _StepTimer(pl.Callback):
    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module):
        self.starts.append(time.perf_counter())


def lightning_loop(
    net: torch.nn.Module,
    batches: list[dict],
    lr: float,
    accelerator: str = "cpu",
    precision: str = "32-true",
    channels_last: bool = True,
) -> float:
    """Seconds per sample through SegmentationModule + Trainer (metrics and logging on), same batches."""
    module = SegmentationModule(
        net,
        CrossEntropyJaccardLoss(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr),
        channels_last=channels_last,
    )
    timer = _StepTimer()
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    starts = timer.starts
    return (starts[-1] - starts[WARMUP]) / sum(len(b["image"]) for b in batches[WARMUP:])


def data_module(root: Path, batch_size: int, crop: int):
    """The training data module of the demo config on ``root`` (crops of ``crop`` px), and the config's lr."""
    cfg = compose_config(
        "train",
        [
            f"data.dir={root}",
            f"data.batch_size={batch_size}",
            f"data.augment.0.height={crop}",
            f"data.augment.0.width={crop}",
            "data.num_workers=0",
            "data.val_folds=[0]",
            "data.train_folds=[0,1]",
        ],
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule, float(cfg.optimizer.lr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unosat-bench"))
    parser.add_argument("--precision-crop", type=int, default=512, help="crop of the GPU precision table")
    parser.add_argument("--precision-batch-size", type=int, default=16)
    parser.add_argument(
        "--precisions-on-cpu",
        action="store_true",
        help="run the precision table on the CPU (a check of the code path; bf16 is slow there)",
    )
    args = parser.parse_args()

    root = demo_dataset(args.workdir, 1024, cities=2, acquisitions=2, recipe="db")
    datamodule, lr = data_module(root, args.batch_size, args.crop)
    dataset = datamodule.train_dataset

    # data module throughput, one worker (this process), with augmentation
    n_tiles = 200
    t = time.perf_counter()
    for i in range(n_tiles):
        dataset[i % len(dataset)]
    tiles_per_s = n_tiles / (time.perf_counter() - t)

    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(args.batches)]

    torch.manual_seed(0)
    template = LWRefineNet(datamodule.recipe.count, 2).to(memory_format=torch.channels_last)
    bare, light = [], []
    for _ in range(args.rounds):  # alternate, so both see the same machine load
        bare.append(bare_loop(copy.deepcopy(template), batches, lr))
        light.append(lightning_loop(copy.deepcopy(template), batches, lr))
    b, lt = statistics.median(bare), statistics.median(light)
    overhead = lt / b - 1

    print(f"machine: {machine()}")
    print(
        f"batches: {args.batches} x {args.batch_size} x {datamodule.recipe.count} x {args.crop} x {args.crop} "
        f"(first {WARMUP} excluded), {args.rounds} alternating rounds, medians\n"
    )
    rows = [
        ("bare PyTorch loop (baseline)", f"{1 / b:.2f}", "1.00", ", ".join(f"{1 / x:.2f}" for x in bare)),
        (
            "SegmentationModule + Trainer",
            f"{1 / lt:.2f}",
            f"{b / lt:.3f}",
            ", ".join(f"{1 / x:.2f}" for x in light),
        ),
    ]
    print(table(rows, ("LW-RefineNet training, CPU", "samples/s", "vs bare", "each round")))
    print(
        f"\nLightning overhead: {100 * overhead:+.1f} % (goal <= 5 %: {'met' if overhead <= 0.05 else 'NOT met'})"
    )
    print(
        f"\ndata module: {tiles_per_s:.1f} tiles/s per worker (a {args.crop} px crop of a 512 px tile read, "
        f"normalise, flips, rot90); the model consumes {1 / b:.1f} samples/s on this CPU -> "
        f"{max(1, math.ceil((1 / b) / tiles_per_s))} worker(s) keep it fed; a GPU consuming N samples/s needs "
        f"about N / {tiles_per_s:.0f} workers"
    )
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu" or args.precisions_on_cpu:
        precision_table(
            data_module(root, args.precision_batch_size, args.precision_crop)[0],
            template,
            lr,
            accelerator,
            args,
        )
    else:
        print(
            "\nno GPU on this machine: samples/s at 512 px for fp32, bf16-mixed and bf16 + channels_last not measured "
            "(--precisions-on-cpu runs that table on the CPU)"
        )


def precision_table(datamodule, template: torch.nn.Module, lr: float, accelerator: str, args) -> None:
    """Samples/s through the Trainer at ``--precision-crop`` px for fp32, bf16-mixed, bf16 + channels_last."""
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(args.batches)]
    settings = (
        ("fp32", "32-true", False),
        ("bf16-mixed", "bf16-mixed", False),
        ("bf16-mixed + channels_last", "bf16-mixed", True),
    )
    rows, base = [], None
    for name, precision, channels_last in settings:
        net = copy.deepcopy(template).to(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        rate = 1 / min(
            lightning_loop(copy.deepcopy(net), batches, lr, accelerator, precision, channels_last)
            for _ in range(args.rounds)
        )
        base = base or rate
        rows.append((name, f"{rate:.1f}", f"{rate / base:.2f}x"))
    shape = tuple(batches[0]["image"].shape)
    print(
        f"\n{torch.cuda.get_device_name() if accelerator == 'gpu' else 'CPU'}, batches {shape}, "
        f"best of {args.rounds} rounds, first {WARMUP} batches excluded\n"
    )
    print(table(rows, ("LW-RefineNet training through the Trainer", "samples/s", "vs fp32")))


if __name__ == "__main__":
    main()
