"""Where the networks run: one device or several processes, through ``lightning_fabric.Fabric``.

The settings come from the ``trainer`` config group that training uses (``accelerator``, ``devices``,
``strategy``, ``num_nodes``, ``precision``), so ``trainer=gpu`` predicts in bf16 mixed precision on a GPU
and ``trainer=ddp`` on every GPU of the node (on CPU, for tests: ``trainer=ddp trainer.accelerator=cpu
trainer.devices=2``). With several processes each takes whole scenes (:meth:`Runtime.shard`): a scene is
computed by exactly the code a single process runs, so the outputs do not depend on the number of devices.
Networks are not wrapped in ``DistributedDataParallel`` (inference needs no gradient synchronisation, and
DDP's buffer broadcasts would tie the ranks' forward passes together).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from unosat.errors import UnosatError

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Runtime:
    """A launched ``Fabric`` (or none: plain CPU, one process) and how tensors are laid out for it."""

    fabric: Any = None
    channels_last: bool = True

    # --------------------------------------------------------------- identity
    @property
    def device(self) -> torch.device:
        return self.fabric.device if self.fabric is not None else torch.device("cpu")

    @property
    def rank(self) -> int:
        return self.fabric.global_rank if self.fabric is not None else 0

    @property
    def world_size(self) -> int:
        return self.fabric.world_size if self.fabric is not None else 1

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        precision = type(self.fabric.strategy.precision).__name__ if self.fabric is not None else "Precision"
        return {
            "device": str(self.device),
            "world_size": self.world_size,
            "precision_plugin": precision,
            "channels_last": self.channels_last,
            "torch_threads": torch.get_num_threads(),
        }

    # ----------------------------------------------------------------- tensors
    def prepare_module(self, net: nn.Module) -> nn.Module:
        """``net`` in eval mode on this device, in the precision's dtype and memory format."""
        if self.fabric is not None:
            net = self.fabric.strategy.precision.convert_module(net)
        net = net.to(self.device).eval()
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    def to_input(self, array: np.ndarray) -> torch.Tensor:
        """A ``(N, C, H, W)`` float32 array as an input tensor on this device."""
        x = torch.from_numpy(array).to(self.device, non_blocking=True)
        if self.fabric is not None:
            x = self.fabric.strategy.precision.convert_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Inference mode, plus autocast for mixed precision."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.fabric is not None:
            stack.enter_context(self.fabric.strategy.precision.forward_context())
        return stack

    # ------------------------------------------------------------ processes
    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (round robin, so every rank gets a similar amount)."""
        return list(items)[self.rank :: self.world_size]

    def barrier(self) -> None:
        if self.world_size > 1:
            self.fabric.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (picklable objects)."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def run_shards(self, items: Sequence[T], func: Callable[[T], R]) -> list[R]:
        """``func`` over this rank's items, results of every rank gathered (in no particular order).

        A failure on any rank is raised on every rank (a :class:`UnosatError` keeps its message), so no rank
        waits forever at a barrier for one that died.
        """
        results: list[R] = []
        error: BaseException | None = None
        try:
            for item in self.shard(items):
                results.append(func(item))
        except Exception as err:  # re-raised below, on every rank
            error = err
        if self.world_size == 1:
            if error is not None:
                raise error
            return results
        gathered = self.gather((results, _describe_error(error)))
        failures = [(rank, e) for rank, (_, e) in enumerate(gathered) if e is not None]
        if failures:
            rank, (kind, message) = failures[0]
            if error is not None:
                raise error
            if kind == "UnosatError":
                raise UnosatError(message)
            raise RuntimeError(f"rank {rank} failed: {kind}: {message}")
        return [r for part, _ in gathered for r in part]


def _describe_error(error: BaseException | None) -> tuple[str, str] | None:
    return None if error is None else (type(error).__name__, str(error))


def make_runtime(trainer_cfg: Any, channels_last: bool) -> Runtime:
    """Build and launch a ``Fabric`` from the ``trainer`` config (reads accelerator, devices, strategy,
    num_nodes and precision; other Trainer keys are ignored)."""
    from lightning_fabric import Fabric

    get = trainer_cfg.get if hasattr(trainer_cfg, "get") else lambda k, d=None: getattr(trainer_cfg, k, d)
    try:
        fabric = Fabric(
            accelerator=get("accelerator", "auto"),
            devices=get("devices", "auto"),
            strategy=get("strategy", "auto") or "auto",
            num_nodes=int(get("num_nodes", 1) or 1),
            precision=get("precision", "32-true"),
        )
    except (ValueError, RuntimeError, TypeError) as err:
        raise UnosatError(f"trainer settings do not describe a usable device set-up: {err}") from None
    fabric.launch()
    return Runtime(fabric=fabric, channels_last=bool(channels_last))
