"""Learning-rate schedules (conf/scheduler/): the values of each step, and resuming on a run of another length."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from unosat.config import compose_config
from unosat.training.schedulers import PolyLR, WarmupCosineLR

LR0 = 0.05


def optimizer(lr: float = LR0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def rates(schedule, steps: int) -> list[float]:
    """The learning rate used at each of ``steps`` optimisation steps."""
    out = []
    for _ in range(steps):
        out.append(schedule.optimizer.param_groups[0]["lr"])
        schedule.optimizer.step()
        schedule.step()
    return out


@pytest.mark.parametrize("total", [1, 7, 1000])
def test_poly_is_lr0_times_one_minus_the_run_fraction_to_the_power(total):
    expected = [LR0 * (1 - min(t, total) / total) ** 0.9 for t in range(total + 3)]  # then 0 after the run
    assert rates(PolyLR(optimizer(), total_steps=total, power=0.9), total + 3) == pytest.approx(
        expected, rel=1e-12, abs=1e-18
    )


def test_poly_resumes_at_the_saved_step_on_the_resumed_runs_schedule():
    first = PolyLR(optimizer(), total_steps=4)
    rates(first, 2)
    saved = first.state_dict()
    assert "total_iters" not in saved and "power" not in saved
    # what the schedule of earlier releases (before torch's PolynomialLR) saved at the same step
    older = {
        "base_lrs": [LR0],
        "last_epoch": 2,
        "_step_count": 3,
        "_is_initial": False,
        "_get_lr_called_within_step": False,
        "_last_lr": [LR0 * 0.5**0.9],
    }
    for state in (saved, older):
        longer = PolyLR(optimizer(), total_steps=8)  # trainer.max_epochs doubled
        longer.load_state_dict(state)
        assert rates(longer, 3) == pytest.approx([LR0 * (1 - t / 8) ** 0.9 for t in (2, 3, 4)], rel=1e-12)


def test_warmup_cosine_values_and_its_torch_equivalent_up_to_the_end_of_the_run():
    total, warmup, start, floor = 100, 10, 0.01, 0.1
    ours = rates(
        WarmupCosineLR(
            optimizer(),
            total_steps=total,
            warmup_steps=warmup,
            warmup_start_factor=start,
            min_lr_factor=floor,
        ),
        total + 5,
    )
    assert ours[0] == pytest.approx(start * LR0) and ours[5] == pytest.approx(
        (start + (1 - start) * 0.5) * LR0
    )
    assert ours[warmup] == pytest.approx(LR0)
    assert ours[55] == pytest.approx(LR0 * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert ours[total:] == pytest.approx([floor * LR0] * 5)  # it stays at the floor after the run
    opt = optimizer()
    torch_schedule = SequentialLR(
        opt,
        [
            LinearLR(opt, start, 1.0, total_iters=warmup),
            CosineAnnealingLR(opt, T_max=total - warmup, eta_min=floor * LR0),
        ],
        milestones=[warmup],
    )
    theirs = rates(torch_schedule, total + 5)
    assert theirs[: total + 1] == pytest.approx(ours[: total + 1], rel=1e-9)
    assert theirs[-1] > ours[-1] * 1.01  # torch's cosine rises again after T_max: why ours is kept


def test_warmup_cosine_warmup_fraction_and_resume():
    schedule = WarmupCosineLR(optimizer(), total_steps=200)  # conf/scheduler/cosine.yaml: 5 % warm-up
    assert schedule.warmup_steps == 10
    rates(schedule, 30)
    resumed = WarmupCosineLR(optimizer(), total_steps=400)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.last_epoch == 30 and resumed.warmup_steps == 20  # its own run's shape, the saved step
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(LR0 * resumed.factor(30))


@pytest.mark.parametrize(
    "name, target, settings",
    [
        ("poly", "unosat.training.schedulers.PolyLR", {"power": 0.9}),
        (
            "cosine",
            "unosat.training.schedulers.WarmupCosineLR",
            {"warmup_fraction": 0.05, "warmup_start_factor": 0.01, "min_lr_factor": 0.0},
        ),
    ],
)
def test_the_scheduler_configs_step_every_iteration(name, target, settings):
    cfg = compose_config("train", [f"scheduler={name}"]).scheduler
    assert cfg.interval == "step" and cfg.schedule._target_ == target and cfg.schedule._partial_
    assert {k: cfg.schedule[k] for k in settings} == settings
