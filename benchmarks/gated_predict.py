"""What a tile-classifier gate buys on the demo's held-out city: share of windows skipped, whole-scene
speed-up, and building recall / F1 lost against ungated prediction, for a few thresholds.

Trains (once, cached in the work directory) LW-RefineNet and a tile classifier on the demo with the default
settings (``python train.py`` and ``python train.py model=tile_classifier``), unless checkpoints are given,
then predicts the held-out city with and without the gate. Speed is the scene-prediction time of each run
(``predict.json``), against the ungated run measured in the same process after a warm-up; every time is the
best of three runs.

    python benchmarks/gated_predict.py [--thresholds 0.05 0.1 0.2 0.3 0.5] [--window 256]
                                       [--seg-ckpt PATH --gate-ckpt PATH] [--workdir /tmp/unosat-bench-gate]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

from unosat.config import compose_config  # noqa: E402
from unosat.predict.run import run as predict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def train(workdir: Path, name: str, *overrides: str) -> Path:
    """Best checkpoint of a demo training run (trained once, then reused)."""
    run_dir = workdir / "runs" / name
    found = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "train.py",
                f"paths.demo_dir={workdir / 'demo'}",
                f"hydra.run.dir={run_dir}",
                "logger=csv",
                "trainer.enable_progress_bar=false",
                *overrides,
            ],
            cwd=REPO,
            check=True,
            env={**os.environ, "WANDB_MODE": "offline"},
        )
        found = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    return found[-1]


def predict_city(workdir: Path, seg: Path, window: int, out: str, *overrides: str, repeats: int = 3) -> dict:
    """The manifest of predicting the held-out city; its scene time is the best of ``repeats`` runs."""
    cfg = compose_config(
        "predict",
        [
            f"ckpt={seg}",
            f"input={workdir / 'demo' / 'raw'}",
            f"paths.demo_dir={workdir / 'demo'}",
            f"output={workdir / 'predictions' / out}",
            f"paths.output_dir={workdir / 'hydra'}",
            "cities=${split.test_cities}",
            f"window.size={window}",
            "window.overlap=32",
            "evaluate=true",
            "overwrite=true",
            *overrides,
        ],
    )
    return min((predict(cfg) for _ in range(repeats)), key=lambda m: m["timings"]["scenes_s"])


def forward_cost(seg: Path, gate: Path, window: int, batch: int = 2, repeats: int = 5) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of one forward pass of each network on the same random batch of windows
    (channels-last, inference mode): the gate's cost against the segmentation it may save."""
    import torch

    from unosat.checkpoint import build_model, load_checkpoint

    seconds = []
    for path in (seg, gate):
        checkpoint = load_checkpoint(path)
        bands = len(checkpoint["unosat"]["data"]["recipe"]["bands"])
        x = torch.randn(batch, bands, window, window).contiguous(memory_format=torch.channels_last)
        net = build_model(checkpoint, path).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            net(x)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                net(x)
                best = min(best, time.perf_counter() - start)
        seconds.append(best)
    return seconds[0], seconds[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5])
    parser.add_argument(
        "--window",
        type=int,
        default=256,
        help="prediction window, and the window the tile classifier is trained to judge",
    )
    parser.add_argument("--seg-ckpt", type=Path)
    parser.add_argument("--gate-ckpt", type=Path)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unosat-bench-gate"))
    args = parser.parse_args()

    seg = args.seg_ckpt or train(args.workdir, "lwrefinenet")
    gate = args.gate_ckpt or train(
        args.workdir, "tile_classifier", "model=tile_classifier", f"model.window_px={args.window}"
    )
    predict_city(args.workdir, seg, args.window, "warmup", repeats=1)
    base = predict_city(args.workdir, seg, args.window, "ungated")

    def figures(m: dict) -> tuple:
        windows = sum(s["windows"] for s in m["scenes"])
        gated = sum(s["windows_skipped"].get("TileGate", 0) for s in m["scenes"])
        px = m["evaluation"]["overall"]["pixel"]
        return (
            windows,
            gated,
            m["timings"]["scenes_s"],
            px["recall_building"],
            px["f1_building"],
            m["evaluation"]["overall"]["object"]["f1"],
        )

    w0, _, t0, r0, f0, o0 = figures(base)
    rows = [
        (
            "none (ungated)",
            f"{w0}",
            "0 %",
            f"{t0:.1f}",
            "1.00x",
            f"{r0:.4f}",
            "-",
            f"{f0:.4f}",
            "-",
            f"{o0:.4f}",
        )
    ]
    for thr in args.thresholds:
        w, g, t, r, f, o = figures(
            predict_city(
                args.workdir, seg, args.window, f"gate_{thr}", f"gate.ckpt={gate}", f"gate.threshold={thr}"
            )
        )
        rows.append(
            (
                f"{thr}",
                f"{w}",
                f"{100 * g / w:.0f} %",
                f"{t:.1f}",
                f"{t0 / t:.2f}x",
                f"{r:.4f}",
                f"{100 * (r0 - r):+.2f}",
                f"{f:.4f}",
                f"{100 * (f0 - f):+.2f}",
                f"{o:.4f}",
            )
        )
    cities = ", ".join(sorted({s["city"] for s in base["scenes"]}))
    print(f"machine: {machine()}")
    print(
        f"held-out city: {cities} ({len(base['scenes'])} acquisitions); window {args.window} px, overlap 32; "
        f"segmentation {seg}; gate {gate}"
    )
    run_dir = gate.parent.parent
    if (run_dir / "summary.json").is_file():
        metric = OmegaConf.load(run_dir / "config_resolved.yaml").optimized_metric
        print(
            f"tile classifier: best {metric} {json.loads((run_dir / 'summary.json').read_text())['best_score']:.3f} "
            f"(windows of {args.window} px from the validation city)"
        )
    seg_s, gate_s = forward_cost(seg, gate, args.window)
    print(
        f"one forward pass on 2 windows of {args.window} px: segmentation {seg_s:.3f} s, "
        f"tile classifier {gate_s:.3f} s ({100 * gate_s / seg_s:.0f} % of it): "
        f"a skip share s saves at most a fraction s - {gate_s / seg_s:.2f} of the "
        "network time; reading, band computation, blending and writing are not saved"
    )
    print()
    print(
        table(
            rows,
            (
                "gate threshold",
                "windows",
                "skipped",
                "predict s",
                "speed-up",
                "pixel recall",
                "recall lost (points)",
                "pixel F1",
                "F1 lost (points)",
                "object F1",
            ),
        )
    )


if __name__ == "__main__":
    main()
