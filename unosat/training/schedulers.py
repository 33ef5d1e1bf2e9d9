"""Learning-rate schedules stepped every optimisation step (``conf/scheduler/``). Each takes ``total_steps``
(the trainer's estimated optimisation steps), which the module passes in.

``total_steps`` and the other shape parameters come from the run's config and are left out of the state
dict: a resumed run continues at the saved step, on the schedule of its own (possibly longer) run.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, PolynomialLR


class _ConfiguredSchedule(LRScheduler):
    #: attributes set from config, not restored from checkpoints
    config_keys: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        return {k: v for k, v in super().state_dict().items() if k not in self.config_keys}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the step, then set the optimizer's learning rates for that step on this run's schedule
        (the optimizer state restored before carries the rates of the saved run's schedule)."""
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in self.config_keys})
        lrs = self._get_closed_form_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)


class PolyLR(_ConfiguredSchedule, PolynomialLR):
    """torch's :class:`~torch.optim.lr_scheduler.PolynomialLR`, ``lr = lr0 * (1 - step / total_steps) ** power``
    (the UNOSAT team's schedule, power 0.9), over the run's ``total_steps``; a resumed run follows its own."""

    config_keys = ("total_iters", "power")

    def __init__(self, optimizer: Optimizer, total_steps: int, power: float = 0.9, last_epoch: int = -1):
        super().__init__(
            optimizer, total_iters=max(1, int(total_steps)), power=float(power), last_epoch=last_epoch
        )


class WarmupCosineLR(_ConfiguredSchedule):
    """Linear warm-up from ``warmup_start_factor * lr0`` over ``warmup_steps`` (or ``warmup_fraction`` of
    the run), then cosine decay to ``min_lr_factor * lr0`` at ``total_steps``, where it stays.

    Not torch's ``SequentialLR(LinearLR, CosineAnnealingLR)``: that gives the same rates up to ``total_steps``
    (tests/test_schedulers.py), but its cosine rises again after ``total_steps``, its state dict restores the
    saved run's lengths over a resumed run's, and its floor is one absolute rate, not a factor of each lr0.
    """

    config_keys = ("total_steps", "warmup_steps", "warmup_start_factor", "min_lr_factor")

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int | None = None,
        warmup_fraction: float = 0.05,
        warmup_start_factor: float = 0.01,
        min_lr_factor: float = 0.0,
        last_epoch: int = -1,
    ):
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = (
            int(warmup_steps) if warmup_steps is not None else int(round(warmup_fraction * self.total_steps))
        )
        self.warmup_start_factor = float(warmup_start_factor)
        self.min_lr_factor = float(min_lr_factor)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1 - self.warmup_start_factor) * step / max(
                1, self.warmup_steps
            )
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_factor + (1 - self.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    _get_closed_form_lr = get_lr  # the rates depend on the step alone
