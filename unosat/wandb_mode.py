"""The W&B mode of a run: online when the user is logged in and the server answers, offline otherwise.

Never a login prompt, never a hang without network: the mode is decided before wandb starts, from the
environment (``WANDB_MODE`` wins), an API key (``WANDB_API_KEY`` or a ``~/.netrc`` entry for the W&B host)
and a short TCP check of that host. Training's logger and predict.py's evaluation tracking both use it.
"""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from unosat.errors import UnosatError

DEFAULT_WANDB_URL = "https://api.wandb.ai"


def wandb_host() -> str:
    """The W&B server's host name (``WANDB_BASE_URL``'s, ``api.wandb.ai`` by default)."""
    return urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL)).hostname or "api.wandb.ai"


def wandb_logged_in() -> bool:
    """Whether an API key is available without asking: ``WANDB_API_KEY`` or a netrc entry for the host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(wandb_host()) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def host_reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


#: the values wandb accepts for WANDB_MODE
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")


def resolve_wandb_mode(mode: str = "auto") -> str:
    """``online``, ``offline`` or ``disabled``.

    ``auto`` (default): ``WANDB_MODE`` if set; else online when logged in and the W&B host answers within
    2 s; else offline (runs are kept in the run directory; ``wandb sync`` uploads them later).
    """
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env is not None and not env.strip():
        os.environ.pop("WANDB_MODE")  # set but empty means unset (wandb itself would reject it)
        env = None
    if env:
        if env not in WANDB_MODES:
            raise UnosatError(
                f"environment variable WANDB_MODE={env!r} is not a W&B mode ({', '.join(WANDB_MODES)})"
            )
        return "offline" if env == "dryrun" else env
    if wandb_logged_in() and host_reachable(wandb_host()):
        return "online"
    return "offline"
