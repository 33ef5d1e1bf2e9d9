"""The Lightning precision that trains fastest on this CPU: ``bf16-mixed`` where the CPU has AMX tile units,
``32-true`` everywhere else.

PyTorch runs bf16 convolutions on the CPU through oneDNN. Only AMX (Intel Sapphire Rapids and later) makes them
faster than fp32; without it they are emulated. ``benchmarks/cpu_precision.py`` measures the default U-Net's
training step (8 x 3 x 128 x 128, channels-last) both ways. On the 2-core VM where the default recipe was
chosen (AMX), bf16-mixed is about 1.9x as fast. Capping oneDNN at lower instruction sets on the same VM gave,
for bf16-mixed against fp32: 0.85x with AVX512-BF16 but no AMX, 0.40x with plain AVX-512, 0.11x with AVX2.
So bf16 is chosen only where it pays, and ``trainer.precision=32-true`` (or any Lightning precision) overrides
the choice.

The weights stay fp32 (mixed precision keeps fp32 master weights): checkpoints are the same either way.
"""

from __future__ import annotations

import os

import torch

#: oneDNN's instruction-set cap (``ONEDNN_MAX_CPU_ISA``, formerly ``DNNL_MAX_CPU_ISA``): below AMX, no AMX.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cpu_has_amx() -> bool:
    """True when the CPU has AMX tile units and oneDNN is not capped below them."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: absent -> no
    if probe is None or not probe():
        return False
    for name in ISA_CAP_VARIABLES:
        cap = os.environ.get(name, "").upper()
        if cap and cap != "ALL" and "AMX" not in cap:
            return False
    return True


def cpu_training_precision() -> str:
    """``"bf16-mixed"`` on a CPU with AMX, ``"32-true"`` otherwise (a Lightning ``Trainer(precision=...)``)."""
    return "bf16-mixed" if cpu_has_amx() else "32-true"
