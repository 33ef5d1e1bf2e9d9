"""Training speed of every segmentation model, side by side: parameters and forward + backward + optimizer step
samples/s on random batches, as ``train.py`` runs them on a CPU (channels-last, ``torch.set_num_threads``),
against the original LW-RefineNet (output stride 4) measured in the same rounds.

Models are built from their Hydra configs (``conf/model/*.yaml``, 3 input bands), so the figures are those of
what ``python train.py model=<name>`` trains. The loss is cross-entropy on the segmentation logits (plus the mean
edge logit for GSCNN, so that its shape stream is trained too); data loading is not included (see
``train_step.py``). Rounds alternate the models so that the shared machine's load hits them alike; the median
of the rounds is printed.

    python benchmarks/model_speed.py [--sizes 128 192] [--batch-size 8] [--steps 3] [--rounds 3] [--threads 2]
        [--models unet lwrefinenet lwrefinenet_s4 gscnn fpn]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

from unosat.config import compose_config  # noqa: E402

#: label -> train.py overrides
MODELS = {
    "unet": ["model=unet"],
    "lwrefinenet": ["model=lwrefinenet"],
    "lwrefinenet_s4": ["model=lwrefinenet", "model.output_stride=4"],
    "gscnn": ["model=gscnn", "loss=gscnn"],
    "fpn": ["model=fpn"],
}
BASELINE = "lwrefinenet_s4"
WARMUP = 1


def build(overrides: list[str], in_channels: int = 3) -> torch.nn.Module:
    cfg = compose_config("train", overrides)
    return instantiate({**cfg.model, "in_channels": in_channels})


def step_seconds(
    net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (this process, all threads) of one training step (forward,
    loss, backward, optimizer step) over ``steps``. On a machine shared with other work the CPU seconds are the
    steadier figure."""
    times, cpu = [], []
    for i in range(WARMUP + steps):
        t, c = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        out = net(x)
        loss = (
            F.cross_entropy(out[0], y) + out[1].mean() if isinstance(out, tuple) else F.cross_entropy(out, y)
        )
        loss.backward()
        opt.step()
        if i >= WARMUP:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return statistics.median(times), statistics.median(cpu)


def report(nets: dict, seconds: dict, cpu_seconds: dict, sizes: list[int], batch_size: int) -> None:
    """Print the wall-clock and CPU-time tables of the rounds measured so far."""
    for title, measured in (
        ("wall clock: samples/s", seconds),
        ("CPU time: samples per CPU-second", cpu_seconds),
    ):
        rows = []
        for name, (net, _) in nets.items():
            row = [name, f"{sum(p.numel() for p in net.parameters()):,}"]
            for s in sizes:
                sps = batch_size / statistics.median(measured[(name, s)])
                row.append(f"{sps:.2f}")
                if BASELINE in nets:
                    base = batch_size / statistics.median(measured[(BASELINE, s)])
                    row.append(f"{sps / base:.2f}x")
            rows.append(tuple(row))
        header = ["model", "parameters"]
        for s in sizes:
            header += [f"{s} px"] + ([f"vs {BASELINE}"] if BASELINE in nets else [])
        print(f"\n{title}")
        print(table(rows, tuple(header)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 192])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model, size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(machine())
    print(
        f"batch {args.batch_size}, sizes {args.sizes}, {args.steps} steps x {args.rounds} rounds (median), "
        f"channels_last, AdamW\n"
    )

    nets = {}
    for name in args.models:
        net = build(MODELS[name]).train().to(memory_format=torch.channels_last)
        nets[name] = (net, torch.optim.AdamW(net.parameters(), lr=1e-4))
    data = {
        s: (
            torch.randn(args.batch_size, 3, s, s).contiguous(memory_format=torch.channels_last),
            torch.randint(0, 2, (args.batch_size, s, s)),
        )
        for s in args.sizes
    }
    seconds: dict[tuple[str, int], list[float]] = {(n, s): [] for n in nets for s in args.sizes}
    cpu_seconds: dict[tuple[str, int], list[float]] = {(n, s): [] for n in nets for s in args.sizes}
    for r in range(args.rounds):
        for s in args.sizes:
            for name, (net, opt) in nets.items():
                wall, cpu = step_seconds(net, opt, *data[s], args.steps)
                seconds[(name, s)].append(wall)
                cpu_seconds[(name, s)].append(cpu)
        print(f"\nafter round {r + 1}/{args.rounds} (medians over the rounds so far):", flush=True)
        report(nets, seconds, cpu_seconds, args.sizes, args.batch_size)


if __name__ == "__main__":
    main()
