"""Composing the project's Hydra configs from code (e.g. preparing the demo from inside ``train.py``), the
``${unosat:NAME}`` resolver through which configs read values the code defines or detects, and the
``${unosat_by_precision:PRECISION,{KEY: VALUE, ...}}`` resolver through which a config picks a value by the
trainer's precision (e.g. how many crops an epoch the Quickstart's time buys: bf16 on a CPU with AMX makes
about twice the fp32 steps).

Importing this module registers the resolvers; the entry points (``train.py``, ``prepare.py``, ``predict.py``)
import it before Hydra composes, and :func:`compose_config` is defined here, so every composed config can resolve
it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from unosat.classes import CLASS_NAMES, IGNORE_INDEX
from unosat.errors import UnosatError

#: The project's config directory (``conf/`` next to the package).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

#: Name of the resolver: ``${unosat:ignore_index}`` in a config is :data:`unosat.classes.IGNORE_INDEX`.
RESOLVER = "unosat"

#: What ``${unosat:NAME}`` gives: values the code defines once (:mod:`unosat.classes`) and configs pass on
#: (``conf/classes/default.yaml``), so that no YAML file restates them.
CODE_VALUES: dict[str, int] = {
    "ignore_index": IGNORE_INDEX,  # mask value of ignored pixels (nodata, padding)
    "num_classes": len(CLASS_NAMES),  # masks hold 0 (background) and 1 (the target)
}


def _cpu_training_precision() -> str:
    from unosat.cpu_precision import cpu_training_precision  # imports torch: only when a config asks

    return cpu_training_precision()


#: What ``${unosat:NAME}`` gives for values detected on this machine when a config is resolved.
DETECTED_VALUES: dict[str, Callable[[], str]] = {
    "cpu_precision": _cpu_training_precision,  # bf16-mixed on CPUs with AMX, else 32-true (conf/trainer/)
}


def code_value(name: str) -> int | str:
    """The value of ``${unosat:NAME}``; raises :class:`UnosatError` naming the known names for any other."""
    if name in DETECTED_VALUES:
        return DETECTED_VALUES[name]()
    if name not in CODE_VALUES:
        known = ", ".join([*CODE_VALUES, *DETECTED_VALUES])
        raise UnosatError(f"${{{RESOLVER}:{name}}}: unknown name; known: {known}")
    return CODE_VALUES[name]


#: Name of the resolver that picks a value by precision, and the key its table falls back to.
BY_PRECISION_RESOLVER, BY_PRECISION_DEFAULT = "unosat_by_precision", "default"
#: Lightning's short precision names and the names they stand for.
PRECISION_ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}


def by_precision(precision: str | int, table: dict[str, Any]) -> Any:
    """``table[precision]`` (Lightning's precision name, e.g. ``bf16-mixed``, ``32-true``), else
    ``table["default"]``; short names (``32``, ``bf16``) are looked up as the names they stand for. Raises
    :class:`UnosatError` naming the keys when neither exists."""
    key = PRECISION_ALIASES.get(str(precision), str(precision))
    if key in table:
        return table[key]
    if BY_PRECISION_DEFAULT in table:
        return table[BY_PRECISION_DEFAULT]
    raise UnosatError(
        f"${{{BY_PRECISION_RESOLVER}:{key},...}}: no value for precision {key!r} and no "
        f"{BY_PRECISION_DEFAULT!r} key; the table has {', '.join(map(str, table)) or 'no keys'}"
    )


def register_resolver() -> None:
    """Register ``${unosat:NAME}`` and ``${unosat_by_precision:...}`` with OmegaConf (once per process;
    later calls do nothing)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, code_value)
    if not OmegaConf.has_resolver(BY_PRECISION_RESOLVER):
        OmegaConf.register_new_resolver(BY_PRECISION_RESOLVER, by_precision)


register_resolver()


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<name>.yaml`` with ``overrides``, inside a running Hydra app or outside one."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))
