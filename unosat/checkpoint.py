"""unosat checkpoints: Lightning checkpoints that also carry what prediction needs.

``checkpoint["unosat"]`` holds ``model`` (the network spec: a registry name and plain-data arguments, see
:mod:`unosat.models.registry`), ``data`` (band recipe, normalisation, tile size, classes), and
``wandb_run_id``. Checkpoints are read with ``torch.load(weights_only=True)``
(:func:`unosat.io.weights_only.load_weights_only`): no pickled code runs, and a
network is only built from the registry of the project's classes; nothing read from a checkpoint is given to
``hydra.utils.instantiate``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from unosat.errors import UnosatError, first_line
from unosat.io.atomic import is_temporary
from unosat.io.weights_only import load_weights_only
from unosat.models.registry import build_network, effective_args, spec_from_checkpoint

log = logging.getLogger(__name__)

NET_PREFIX = "net."

#: the folders where training runs keep their checkpoints, under ``paths.log_dir``
TRAINING_RUN_CHECKPOINTS = "train/runs/*/checkpoints"

#: what a checkpoint's network was trained for when it records nothing (checkpoints older than the tile classifier)
DEFAULT_TASK = "segmentation"


def load_checkpoint(path: Path | str) -> dict:
    """The checkpoint dict at ``path``; :class:`UnosatError` if missing, unreadable or not unosat's."""
    path = Path(path)
    checkpoint = load_weights_only(path)
    if not isinstance(checkpoint, dict) or "unosat" not in checkpoint or "state_dict" not in checkpoint:
        raise UnosatError(
            f"{path}: not a unosat checkpoint (no 'unosat' metadata); train one with python train.py"
        )
    meta = checkpoint["unosat"]
    if not isinstance(meta, dict) or not isinstance(checkpoint["state_dict"], dict):
        raise UnosatError(f"{path}: malformed unosat checkpoint (metadata or state_dict is not a dict)")
    if "model" not in meta or "data" not in meta:
        raise UnosatError(f"{path}: unosat checkpoint without model or data recipe metadata")
    return checkpoint


def recorded_task(checkpoint: dict) -> str:
    """What a loaded checkpoint's network was trained for, as its training module recorded it
    (``checkpoint["unosat"]["task"]``): ``segmentation`` or ``tile_classification``."""
    return str(checkpoint["unosat"].get("task", DEFAULT_TASK))


def model_config(checkpoint: dict, path: Path | str = "checkpoint") -> dict:
    """The checkpoint's validated network spec ``{"name", "args"}``; :class:`UnosatError` naming ``path``
    when it is not one."""
    try:
        return spec_from_checkpoint(checkpoint["unosat"]["model"])
    except UnosatError as err:
        raise UnosatError(f"{path}: {err}") from None


def build_model(checkpoint: dict, path: Path | str = "checkpoint") -> nn.Module:
    """The trained network of a checkpoint, in eval mode, on CPU, built from the registry."""
    spec = model_config(checkpoint, path)
    try:
        net = build_network(spec)
    except UnosatError as err:
        raise UnosatError(f"{path}: {err}") from None
    state = {
        k[len(NET_PREFIX) :]: v
        for k, v in checkpoint["state_dict"].items()
        if isinstance(k, str) and k.startswith(NET_PREFIX)
    }
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError, ValueError) as err:
        raise UnosatError(f"{path}: weights do not fit model {spec['name']} ({first_line(err)})") from None
    return net.eval()


def check_weights(checkpoint: dict, expected: dict, path: Path | str) -> None:
    """Raise :class:`UnosatError` naming ``path`` unless the checkpoint's ``state_dict`` has exactly the keys
    of ``expected`` (a module's ``state_dict()``), each a tensor of the same shape (what resuming needs)."""
    state = checkpoint["state_dict"]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        k
        for k in expected
        if k in state and (not torch.is_tensor(state[k]) or state[k].shape != expected[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{len(keys)} {what} (such as {', '.join(map(str, keys[:3]))})"
            for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (wrong, "of another shape"))
            if keys
        ]
        raise UnosatError(
            f"{path}: its weights do not fit the model of this run: {'; '.join(parts)} "
            f"of {len(expected)} entries"
        )


def describe_model(spec: dict) -> str:
    """``name(in_channels=.., num_classes=.., backbone=..)`` of a network spec."""
    args = spec.get("args") or {}
    keys = ("in_channels", "num_classes", "backbone", "output_stride")
    return f"{spec.get('name')}({', '.join(f'{k}={args[k]}' for k in keys if k in args)})"


def check_same_model(checkpoint: dict, spec: dict, path: Path | str) -> None:
    """Raise :class:`UnosatError` when the checkpoint's network differs from the configured one (``spec``, as
    made by :func:`unosat.models.registry.network_spec`)."""
    saved = model_config(checkpoint, path)
    keys = ("in_channels", "num_classes", "backbone", "output_stride")
    differ = ["model"] if saved["name"] != spec["name"] else []
    if not differ:  # same class: arguments a spec leaves out take the constructor's default
        mine, theirs = effective_args(saved), effective_args(spec)
        differ = [k for k in keys if (k in mine or k in theirs) and mine.get(k) != theirs.get(k)]
    if differ:
        raise UnosatError(
            f"checkpoint {path} was trained with {describe_model(saved)}, but this run builds "
            f"{describe_model(spec)} (differs in {', '.join(differ)}); choose the matching model=... "
            "or another checkpoint"
        )


def checkpoint_files(directories: list[Path], pattern: str) -> tuple[list[Path], list[Path]]:
    """Files matching ``pattern`` in ``directories``: (checkpoints newest first, leftover temporaries).

    Newest means the latest modification time; at equal times ``last.ckpt`` comes first (it is written after
    the ``best-*`` checkpoint of the same epoch). Temporaries are what a killed atomic write left behind
    (``.<name>.tmp-*``, see :mod:`unosat.io.atomic`); they are never candidates.
    """
    found: list[Path] = []
    temporaries: list[Path] = []
    for directory in directories:
        for p in Path(directory).glob(pattern):
            if p.is_file():
                (temporaries if is_temporary(p) else found).append(p)
    found.sort(key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True)
    return found, sorted(temporaries)


def newest_loadable(
    candidates: list[Path],
    what: str,
    temporaries: list[Path] = (),
    fresh_start: bool = False,
    task: str | None = None,
) -> tuple[Path | None, dict | None]:
    """The first of ``candidates`` (newest first) that :func:`load_checkpoint` reads (and, when ``task`` is
    given, whose :func:`recorded_task` is ``task``), and its content.

    Each candidate skipped on the way (truncated, empty, not unosat's) and each leftover temporary is named in
    a warning with the reason (one of another task, in an info line). When none fits: :class:`UnosatError`,
    or with ``fresh_start`` (what Lightning does for ``ckpt_path="last"`` with nothing there, e.g. after a
    kill during the very first checkpoint write) a warning naming every skipped file and (None, None):
    training starts from scratch. ``what`` describes the request in messages (e.g. ``ckpt_path=last under
    logs/train``).
    """
    for tmp in temporaries:
        log.warning(
            "%s: ignoring %s, a temporary file left by a checkpoint write that was interrupted", what, tmp
        )
    skipped: list[str] = []
    for path in candidates:
        try:
            checkpoint = load_checkpoint(path)
        except UnosatError as err:
            skipped.append(str(err))
            log.warning("%s: skipping %s", what, err)
            continue
        if task is not None and recorded_task(checkpoint) != task:
            skipped.append(f"{path}: a {recorded_task(checkpoint).replace('_', ' ')} checkpoint")
            log.info("%s: skipping %s", what, skipped[-1])
            continue
        if skipped:
            log.warning(
                "%s: using %s, the newest checkpoint that loads (%d newer one(s) skipped)",
                what,
                path,
                len(skipped),
            )
        else:
            log.info("%s: using %s, the newest checkpoint", what, path)
        return path, checkpoint
    if fresh_start:
        files = [str(p) for p in (*candidates, *temporaries)]
        log.warning(
            "%s: no checkpoint that loads%s; starting from scratch",
            what,
            f" (skipped: {', '.join(files)})" if files else "",
        )
        return None, None
    if not candidates:
        raise UnosatError(f"{what}: no checkpoint found")
    fits = "loads" if task is None else f"loads as a {task.replace('_', ' ')} checkpoint"
    raise UnosatError(f"{what}: none of the {len(candidates)} checkpoint(s) {fits} ({'; '.join(skipped)})")


def best_of_latest_run(log_dir: Path | str, task: str = DEFAULT_TASK) -> Path:
    """The best checkpoint (``best-*.ckpt``) of the latest training run under ``<log_dir>/train/runs`` whose
    network was trained for ``task``: what ``ckpt=null`` means to predict.py and export. Newer runs of
    another task (a tile classifier) and files that do not load are skipped; :class:`UnosatError` when
    nothing is left."""
    runs = Path(log_dir) / "train" / "runs"
    candidates, temporaries = checkpoint_files(
        sorted(Path(log_dir).glob(TRAINING_RUN_CHECKPOINTS)), "best-*.ckpt"
    )
    if not candidates:
        raise UnosatError(
            f"ckpt=null: no best-*.ckpt of a training run under {runs}; train one with python train.py, "
            "or pass ckpt=PATH"
        )
    path, _ = newest_loadable(
        candidates,
        f"ckpt=null (the best checkpoint of the latest training run under {runs})",
        temporaries,
        task=task,
    )
    return path


def epochs_completed(checkpoint: dict) -> int:
    """How many training epochs a Lightning checkpoint has finished (its fit loop's processed epochs: a
    checkpoint written at an epoch's end counts that epoch; one written during an epoch does not)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return int(checkpoint.get("epoch", -1)) + 1
