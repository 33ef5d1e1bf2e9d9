"""``AtomicCheckpointIO``: Lightning's checkpoint reading and writing, made safe against kills and crashes.

Every checkpoint the trainer writes (``last.ckpt``, ``best-*.ckpt``, SLURM's ``hpc_ckpt_*.ckpt``) is
serialised to a temporary file *in the checkpoint's own folder* (``.<name>.tmp-<pid>-<random>.ckpt``, see
:mod:`unosat.io.atomic`), flushed and fsynced, then renamed over the final name, and the folder is fsynced.
A kill at any moment leaves either the previous complete file or the new complete file under the final
name, never a partial one; the temporary is never staged in ``$TMPDIR`` (Lightning's default goes through
an fsspec transaction that writes to ``tempfile.mkstemp()`` and *copies* across filesystems, so a kill
during the copy truncated the final file and leaked a temporary of the checkpoint's size in ``$TMPDIR``).

Checkpoints are read with ``torch.load(weights_only=True)`` whatever the caller asks
(:func:`unosat.io.weights_only.load_weights_only`): no pickled code runs when a run resumes from, or tests,
a checkpoint someone else made.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from unosat.io.atomic import temporary_sibling
from unosat.io.weights_only import load_weights_only

log = logging.getLogger(__name__)


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomically(obj: Any, path: Path | str, save: Callable[[Any, Any], None] | None = None) -> None:
    """``save(obj, file)`` (default :func:`torch.save`) into a temporary sibling of ``path``, fsync, rename to
    ``path``, fsync the folder.

    On any failure (including a ``KeyboardInterrupt`` during serialisation) the temporary is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as f:
            (save or torch.save)(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` plugin: atomic local writes, ``weights_only`` reads.

    Used by every trainer config (``conf/trainer/default.yaml``: ``plugins``). Remote paths (``s3://`` ...)
    fall back to Lightning's own writer, which stages the object in memory and uploads it whole.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        if is_remote(path):
            super().save_checkpoint(checkpoint, path)
            return
        save_atomically(checkpoint, str(path).removeprefix("file://"))

    def load_checkpoint(
        self, path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            log.debug("AtomicCheckpointIO reads %s with weights_only=True (asked: False)", path)
        if is_remote(path):
            return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)
        return load_weights_only(str(path).removeprefix("file://"), map_location=map_location or "cpu")


def is_remote(path) -> bool:
    """Whether ``path`` is a URL other than ``file://`` (``s3://``, ``gs://`` ...), read and written by fsspec."""
    return "://" in str(path) and not str(path).startswith("file://")
